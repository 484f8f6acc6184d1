"""Shared by the LRU tests: a settable clock and the counters both implementations keep."""

from __future__ import annotations

from typing import Any

#: Every counter attribute of LRUCache (also keys of ``stats()``).
COUNTERS = (
    "hits",
    "misses",
    "inserts",
    "evictions",
    "expirations",
    "invalidations",
    "rejections",
    "stale_fills",
)


class FakeClock:
    """A settable clock: returns ``t`` until told otherwise."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def counters(cache: Any) -> dict[str, int]:
    """The counters of ``cache`` read as attributes."""
    return {name: getattr(cache, name) for name in COUNTERS}


def clocked_l1(lru_cls: Any, monkeypatch: Any) -> FakeClock:
    """Make the caches created from now on build their L1 namespaces from ``lru_cls``
    on a settable clock (returned): TTLs, stale windows and refresh-ahead windows are
    then crossed exactly, without sleeping."""
    import functools

    from cal_redis import local as local_mod

    clock = FakeClock()
    monkeypatch.setattr(local_mod, "LRUCache", functools.partial(lru_cls, clock=clock))
    return clock
