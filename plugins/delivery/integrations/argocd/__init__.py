"""Argo CD: the hook (REST client and connection), the sync operator and its trigger."""
