"""The web layer's one TTL cache: expiry, short-lived misses, a bounded size, one load for concurrent misses."""

from __future__ import annotations

import threading
import time

import pytest

from delivery.web import alertmanager, dora, github
from delivery.web.cache import CATALOG, TtlCache, TtlValue


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_values_expire_after_their_ttl_and_misses_sooner() -> None:
    clock = Clock()
    cache: TtlCache[str | None] = TtlCache(ttl=60, miss_ttl=5, timer=clock)
    loads: list[str] = []

    def load(key: str, value: str | None) -> str | None:
        loads.append(key)
        return value

    assert cache.get("a", lambda: load("a", "A")) == "A"
    assert cache.get("none", lambda: load("none", None)) is None
    clock.now += 4
    assert (
        cache.get("a", lambda: load("a", "A2")) == "A"
        and cache.get("none", lambda: load("none", "x")) is None
    )
    assert loads == ["a", "none"]
    clock.now += 2  # 6 s: the miss is reloaded, the value is not
    assert cache.get("none", lambda: load("none", "now set")) == "now set"
    assert cache.get("a", lambda: load("a", "A2")) == "A"
    clock.now += 55  # 61 s
    assert cache.get("a", lambda: load("a", "A2")) == "A2"
    assert loads == ["a", "none", "none", "a"]


def test_the_least_recently_used_key_goes_first() -> None:
    cache: TtlCache[int] = TtlCache(ttl=60, maxsize=2)
    cache.get("a", lambda: 1)
    cache.get("b", lambda: 2)
    assert cache.get("a", lambda: 10) == 1  # a is now the most recently used
    cache.get("c", lambda: 3)  # evicts b
    assert cache.get("b", lambda: 20) == 20
    assert cache.get("c", lambda: 30) == 3


def test_concurrent_misses_load_once() -> None:
    cache: TtlCache[str] = TtlCache(ttl=60)
    calls: list[int] = []

    def slow() -> str:
        calls.append(1)
        time.sleep(0.2)
        return "secret"

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("k", slow))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["secret"] * 8 and calls == [1]


def test_a_single_value_and_clear() -> None:
    calls: list[int] = []
    value = TtlValue(loader=lambda: calls.append(1) or len(calls), ttl=60)
    assert value.get() == 1 and value.get() == 1
    value.clear()
    assert value.get() == 2


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="ttl > 0 and maxsize >= 1"):
        TtlCache(ttl=0)


def test_every_cache_of_the_web_layer_is_this_one() -> None:
    assert isinstance(github.SECRET, TtlValue)
    assert isinstance(alertmanager.TOKEN, TtlValue)
    assert isinstance(CATALOG, TtlValue)
    assert isinstance(dora.REPORTS, TtlCache)
