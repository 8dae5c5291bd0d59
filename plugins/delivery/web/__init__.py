"""The delivery plugin's HTTP side, served by Airflow's api-server (see :mod:`delivery.web.app`).

* :mod:`delivery.web.github`: signed Git events start delivery runs (``/delivery/webhooks/github``);
  :mod:`delivery.web.github_events` reads their payloads (dates, changed files, untrusted pull requests).
* :mod:`delivery.web.alertmanager`: firing alerts start rollbacks (``/delivery/alertmanager/webhook``).
* :mod:`delivery.web.dora`: the DORA page (``/delivery/dora/``).
* Shared by them: :mod:`delivery.web.inbound` (request checks: authentication first, size cap,
  JSON), :mod:`delivery.web.runs` (creating a run exactly once), :mod:`delivery.web.cache`
  (the one TTL cache: secrets, tokens, the catalog, reports).
* :mod:`delivery.web.inbox`: GitHub deliveries recorded before they are answered, their runs
  created right after (and by a sweeper if a worker dies in between).
"""

from __future__ import annotations
