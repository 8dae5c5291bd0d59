"""The ``kubernetes`` profile (see :mod:`delivery.profiles.kubernetes.profile`)."""
