"""The web layer's one TTL cache: webhook secrets, the catalog, DORA reports.

Every value the receivers and pages keep between requests goes through
:class:`TtlCache` (values by key) or :class:`TtlValue` (one value), built on
``cachetools.TLRUCache``, which Airflow itself depends on:

* a value is kept ``ttl`` seconds, a ``None`` (not configured, cannot load)
  only ``miss_ttl`` seconds, so fixing a missing secret takes effect quickly;
* at most ``maxsize`` keys, the least recently used evicted first (the DORA page
  takes a free-form window in its query: its cache must stay bounded);
* thread-safe for the api-server's worker threads; concurrent misses wait for
  one load instead of each querying the database.

Each api-server worker process holds its own copy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from cachetools import TLRUCache

from delivery.catalog import load_catalog

if TYPE_CHECKING:
    from delivery.catalog import Catalog

log = logging.getLogger(__name__)

V = TypeVar("V")

_MISSING = object()

CATALOG_TTL = 30.0
CATALOG_MISS_TTL = 5.0


class TtlCache(Generic[V]):
    """Values by key, each kept ``ttl`` seconds (``miss_ttl`` when it is ``None``)."""

    def __init__(
        self,
        *,
        ttl: float,
        miss_ttl: float | None = None,
        maxsize: int = 64,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or maxsize < 1:
            raise ValueError(f"TtlCache needs ttl > 0 and maxsize >= 1, got ttl={ttl}, maxsize={maxsize}")
        miss = ttl if miss_ttl is None else miss_ttl

        def expiry(_key: Hashable, value: Any, now: float) -> float:
            return now + (ttl if value is not None else miss)

        self._data: Any = TLRUCache(maxsize=maxsize, ttu=expiry, timer=timer)
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    def _lookup(self, key: Hashable) -> Any:
        with self._lock:
            return self._data.get(key, _MISSING)

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        """The cached value of ``key``, else ``load()`` (called once by concurrent misses)."""
        value = self._lookup(key)
        if value is not _MISSING:
            return value
        with self._load_lock:
            value = self._lookup(key)
            if value is not _MISSING:
                return value
            loaded = load()
            with self._lock:
                self._data[key] = loaded
            return loaded

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class TtlValue(Generic[V]):
    """One value from ``loader``, cached like one key of a :class:`TtlCache`."""

    def __init__(self, *, loader: Callable[[], V], ttl: float, miss_ttl: float | None = None) -> None:
        self._loader = loader
        self._cache: TtlCache[V] = TtlCache(ttl=ttl, miss_ttl=miss_ttl, maxsize=1)

    def get(self) -> V:
        return self._cache.get(None, self._loader)

    def clear(self) -> None:
        self._cache.clear()


def _load_catalog() -> Catalog | None:
    try:
        catalog, issues = load_catalog(strict=False)
    except Exception:
        log.exception("web: the service catalog cannot be loaded")
        return None
    if issues:
        log.warning("web: %d catalog issue(s); the valid services are still served", len(issues))
    return catalog


CATALOG: TtlValue[Catalog | None] = TtlValue(loader=_load_catalog, ttl=CATALOG_TTL, miss_ttl=CATALOG_MISS_TTL)
"""The service catalog as the receivers see it (``None`` while it cannot be loaded)."""
