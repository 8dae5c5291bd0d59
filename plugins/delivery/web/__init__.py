"""Inbound webhooks served by the delivery plugin app (see :mod:`delivery.web.app`).

* :mod:`delivery.web.github`: signed Git events start delivery runs (``/delivery/webhooks/github``).
"""

from __future__ import annotations
