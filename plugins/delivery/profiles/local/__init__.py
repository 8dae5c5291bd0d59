"""The ``local`` profile (see :mod:`delivery.profiles.local.profile`)."""
