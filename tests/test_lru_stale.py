"""The L1's stale window (entries kept past their TTL for ``get_stale``) and its
refresh-ahead calls; every test runs against the compiled module and the twin."""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import pytest

from lru_support import FakeClock, counters

pytestmark = pytest.mark.l1


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --------------------------------------------------------------------------- stale window


def test_stale_window_validation(lru_cls: Any) -> None:
    assert lru_cls(10).stale_window == 0.0
    assert lru_cls(10, 1.0, stale_window=30).stale_window == 30.0
    for bad in (-1, -0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="stale_window"):
            lru_cls(10, 1.0, stale_window=bad)
    with pytest.raises(TypeError, match="stale_window"):
        lru_cls(10, 1.0, stale_window="5")


def test_expired_entry_is_kept_but_never_served(lru_cls: Any, clock: FakeClock) -> None:
    """Past its TTL an entry reads as a miss from get/peek/in, is not removed while the
    window keeps it, and get_stale still finds it; once the window is over a store
    purges it (counted as an expiration)."""
    c = lru_cls(100, 1.0, clock=clock, stale_window=10.0)
    c.set("a", "A", 3)
    clock.advance(1.0)  # expired (now >= t0 + ttl)
    assert c.get("a") is None
    assert c.peek("a") is None
    assert "a" not in c
    assert c.get_many(["a"]) == [None]
    assert c.misses == 2 and c.hits == 0 and c.expirations == 0
    assert len(c) == 1 and c.weight == 3 and c.keys() == ["a"]  # kept, in the budget
    assert c.get_stale("a", 10.0) == "A"
    assert c.get_stale("a", 1.0) is None  # older than the age asked for
    assert c.get_stale("a", 1.0, "dflt") == "dflt"
    clock.advance(8.9)  # 9.9 s after the store: still kept
    assert c.purge_expired() == 0
    assert c.get_stale("a", 10.0) == "A"
    clock.advance(0.1)  # 10 s: the window is over
    assert c.get_stale("a", 10.0) is None
    c.set("b", "B", 1)  # a store purges what is past its window
    assert c.keys() == ["b"] and c.expirations == 1 and c.weight == 1


def test_without_window_nothing_is_kept(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, 1.0, clock=clock)
    c.set("a", "A", 3)
    assert c.get_stale("a", 60.0) == "A"  # live: found
    clock.advance(1.0)
    assert c.get("a") is None
    assert len(c) == 0 and c.expirations == 1 and c.weight == 0
    assert c.get_stale("a", 60.0) is None


def test_window_shorter_than_ttl_keeps_nothing_extra(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, 5.0, clock=clock, stale_window=2.0)
    c.set("a", "A", 1)
    clock.advance(3.0)
    assert c.get("a") == "A"  # live: the TTL is longer than the window
    assert c.get_stale("a", 2.0) is None  # but not younger than 2 s
    clock.advance(2.0)
    assert c.get("a") is None and len(c) == 0 and c.expirations == 1


def test_kept_entries_are_purged_in_window_order(lru_cls: Any, clock: FakeClock) -> None:
    """The removal time is max(expiry, store + window), whatever the TTLs' order."""
    c = lru_cls(100, None, clock=clock, stale_window=4.0)
    c.set("long", 1, 1, ttl=6.0)  # removed at 6
    c.set("short", 2, 1, ttl=1.0)  # kept until 4
    c.set("forever", 3, 1)  # never expires
    clock.advance(3.9)
    assert c.purge_expired() == 0
    clock.advance(0.1)
    assert c.purge_expired() == 1 and c.keys() == ["forever", "long"]
    assert c.get("long") == 1
    clock.advance(2.0)
    assert c.purge_expired() == 1 and c.keys() == ["forever"]
    clock.advance(1e6)
    assert c.get_stale("forever", 1e7) == 3 and c.get("forever") == 3


def test_kept_entries_are_evicted_by_weight(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(10, 1.0, clock=clock, stale_window=60.0)
    c.set("old", "O", 6)
    clock.advance(2.0)  # expired, kept
    c.set("new", "N", 6)  # does not fit beside it: the least recent entry goes
    assert c.keys() == ["new"] and c.evictions == 1 and c.weight == 6
    assert c.get_stale("old", 60.0) is None


def test_invalidation_drops_kept_entries(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, 1.0, clock=clock, stale_window=60.0)
    for k in ("a", "b", ("t", 1), "x:1"):
        c.set(k, k, 1)
    clock.advance(2.0)
    assert c.invalidate("a") is True
    assert c.invalidate_prefix("x:") == 1
    assert c.invalidate_where(lambda k: isinstance(k, tuple)) == 1
    for k in ("a", ("t", 1), "x:1"):
        assert c.get_stale(k, 60.0) is None
    assert c.get_stale("b", 60.0) == "b"
    c.invalidate_all()
    assert c.get_stale("b", 60.0) is None and len(c) == 0


def test_a_store_restarts_the_age(lru_cls: Any, clock: FakeClock) -> None:
    """get_stale's age counts from the last store (a fill, a write, an event refresh)."""
    c = lru_cls(100, 1.0, clock=clock, stale_window=10.0)
    c.set("a", 1, 1)
    clock.advance(5.0)
    assert c.get_stale("a", 6.0) == 1 and c.get_stale("a", 5.0) is None
    c.set("a", 2, 1)
    assert c.get_stale("a", 0.5) == 2
    clock.advance(5.0)
    assert c.get_stale("a", 6.0) == 2


def test_get_stale_reads_through_suspension(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, 10.0, clock=clock)
    c.set("a", "A", 1)
    c.suspend()
    assert c.get("a") is None and c.peek("a") is None
    assert c.get_stale("a", 1.0) == "A"  # held, live, young: found
    clock.advance(2.0)
    assert c.get_stale("a", 1.0) is None
    c.resume()
    assert c.get("a") == "A"


def test_get_stale_live_only(lru_cls: Any, clock: FakeClock) -> None:
    """``expired=False``: a held (suspended) live entry is found, an expired one not."""
    c = lru_cls(100, 1.0, clock=clock, stale_window=60.0)
    c.set("a", "A", 1)
    c.suspend()
    assert c.get_stale("a", 60.0, expired=False) == "A"
    clock.advance(1.0)
    assert c.get_stale("a", 60.0, expired=False) is None
    assert c.get_stale("a", 60.0, "d", expired=False) == "d"
    assert c.get_stale("a", 60.0) == "A"


def test_get_stale_counts_and_bumps_nothing(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, 1.0, clock=clock, stale_window=10.0)
    c.set("a", 1, 1)
    c.set("b", 2, 1)
    before = (counters(c), c.keys())
    assert c.get_stale("a", 5.0) == 1
    assert c.get_stale("zz", 5.0) is None
    assert (counters(c), c.keys()) == before


def test_get_stale_validation(lru_cls: Any) -> None:
    c = lru_cls(10)
    for bad in (-1, math.nan):
        with pytest.raises(ValueError, match="max_age"):
            c.get_stale("a", bad)
    with pytest.raises(TypeError, match="max_age"):
        c.get_stale("a", "1")
    with pytest.raises(TypeError):
        c.get_stale(["unhashable"], 1.0)
    assert c.get_stale("a", 0) is None


# --------------------------------------------------------------------------- refresh-ahead


def _calls(c: Any, fraction: float = 0.25) -> list[Hashable]:
    calls: list[Hashable] = []
    c.set_refresh_ahead(fraction, calls.append)
    return calls


def test_refresh_ahead_validation(lru_cls: Any) -> None:
    c = lru_cls(10, 1.0)
    assert c.refresh_fraction == 0.0
    for bad in (-0.1, 1.0, 1.5, math.nan):
        with pytest.raises(ValueError, match="fraction"):
            c.set_refresh_ahead(bad, print)
    with pytest.raises(TypeError, match="fraction"):
        c.set_refresh_ahead("0.2", print)
    with pytest.raises(TypeError, match="handler"):
        c.set_refresh_ahead(0.2, 5)
    c.set_refresh_ahead(0.2, print)
    assert c.refresh_fraction == 0.2
    c.set_refresh_ahead(0.2, None)  # no handler: off
    assert c.refresh_fraction == 0.0


def test_hit_in_the_last_part_of_the_ttl_calls_once(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, 10.0, clock=clock)
    calls = _calls(c, 0.25)
    c.set("a", "A", 1)
    clock.advance(7.4)
    assert c.get("a") == "A" and calls == []  # before the window
    clock.advance(0.1)  # 7.5 s = 10 * (1 - 0.25): due
    assert c.get("a") == "A" and calls == ["a"]
    assert c.get("a") == "A" and c.get_many(["a"]) == ["A"] and calls == ["a"]  # once
    assert c.hits == 4 and c.misses == 0
    c.set("a", "A2", 1)  # a new store is due in its turn
    clock.advance(7.5)
    assert c.get("a") == "A2" and calls == ["a", "a"]
    clock.advance(2.5)
    assert c.get("a") is None and calls == ["a", "a"]  # expired: a miss, no call


def test_get_many_calls_per_due_key(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, 4.0, clock=clock)
    calls = _calls(c, 0.5)
    c.set("a", 1, 1)
    clock.advance(1.0)
    c.set("b", 2, 1)
    clock.advance(1.0)  # a due (2 s of 4), b not yet
    assert c.get_many(["a", "b", "zz", "a"]) == [1, 2, None, 1]
    assert calls == ["a"]
    clock.advance(1.0)
    assert c.get_many(["b", "a"]) == [2, 1] and calls == ["a", "b"]


def test_peek_contains_and_stale_reads_never_call(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, 4.0, clock=clock, stale_window=60.0)
    calls = _calls(c, 0.5)
    c.set("a", 1, 1)
    clock.advance(3.0)
    assert c.peek("a") == 1 and "a" in c and c.get_stale("a", 60.0) == 1
    assert calls == []
    c.suspend()
    assert c.get("a") is None and calls == []
    c.resume()
    assert c.get("a") == 1 and calls == ["a"]


def test_entries_without_ttl_or_stored_while_off_are_never_due(
    lru_cls: Any, clock: FakeClock
) -> None:
    c = lru_cls(100, None, clock=clock)
    c.set("before", 1, 1, ttl=4.0)  # stored while off
    calls = _calls(c, 0.5)
    c.set("forever", 2, 1)
    clock.advance(3.0)
    assert c.get("before") == 1 and c.get("forever") == 2
    assert calls == []


def test_turning_off_stops_calls(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, 4.0, clock=clock)
    calls = _calls(c, 0.5)
    c.set("a", 1, 1)
    c.set_refresh_ahead(0.0, calls.append)
    clock.advance(3.0)
    assert c.get("a") == 1 and calls == []


def test_handler_may_change_the_cache(lru_cls: Any, clock: FakeClock) -> None:
    """The handler runs inside get: the value read is returned even if the handler
    removes or replaces the entry."""
    c = lru_cls(100, 4.0, clock=clock)

    def handler(key: Hashable) -> None:
        c.invalidate(key)
        c.set("other", "O", 1)

    c.set_refresh_ahead(0.5, handler)
    c.set("a", "A", 1)
    clock.advance(2.0)
    assert c.get("a") == "A"
    assert c.keys() == ["other"] and c.weight == 1


def test_handler_errors_reach_the_caller(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, 4.0, clock=clock)

    def handler(key: Hashable) -> None:
        raise RuntimeError("boom")

    c.set_refresh_ahead(0.5, handler)
    c.set("a", "A", 1)
    clock.advance(2.0)
    with pytest.raises(RuntimeError, match="boom"):
        c.get("a")
    assert c.get("a") == "A"  # the call was made: the entry is not due again
