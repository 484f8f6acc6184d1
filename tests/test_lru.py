"""Unit tests of the L1 cache; every test runs against the compiled module and the twin."""

from __future__ import annotations

import copy
import gc
import math
import pickle
import time
from collections.abc import Hashable
from typing import Any

import pytest

import cal_redis._fast
from cal_redis._fast import NO_EXTENSIONS, _lru_py
from lru_support import FakeClock, counters

pytestmark = pytest.mark.l1

T0 = 1000.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_extension_active_when_not_disabled() -> None:
    if NO_EXTENSIONS:
        assert cal_redis._fast.EXTENSION_ACTIVE is False
        assert cal_redis._fast.LRUCache is _lru_py.LRUCache
    else:
        assert cal_redis._fast.EXTENSION_ACTIVE is True
        from cal_redis._fast import _lru_c

        assert cal_redis._fast.LRUCache is _lru_c.LRUCache


def test_both_implementations_are_distinct(lru_cls: Any) -> None:
    if lru_cls is not _lru_py.LRUCache:
        assert lru_cls.__module__ == "cal_redis._fast._lru_c"
        assert type(lru_cls.get).__name__ in ("method_descriptor", "cython_function_or_method")


# --------------------------------------------------------------------------- construction


def test_constructor_defaults(lru_cls: Any) -> None:
    c = lru_cls(10)
    assert c.max_weight == 10
    assert c.default_ttl is None
    assert c.weight == 0
    assert len(c) == 0
    assert not c
    assert c.keys() == []


def test_constructor_validation(lru_cls: Any) -> None:
    with pytest.raises(ValueError, match="max_weight"):
        lru_cls(-1)
    with pytest.raises(TypeError, match="max_weight"):
        lru_cls(1.5)
    with pytest.raises(TypeError, match="max_weight"):
        lru_cls("10")
    with pytest.raises(ValueError, match="max_weight"):
        lru_cls(2**63)
    for bad in (0, -1, -0.5, math.nan, 0.0, -math.inf):
        with pytest.raises(ValueError, match="default_ttl"):
            lru_cls(10, bad)
    with pytest.raises(TypeError, match="default_ttl"):
        lru_cls(10, "5")
    with pytest.raises(TypeError, match="clock"):
        lru_cls(10, clock=5)
    with pytest.raises(ValueError, match="max_fence"):
        lru_cls(10, max_fence=-1)
    with pytest.raises(TypeError):
        lru_cls(10, 1.0, None)  # clock is keyword-only
    assert lru_cls(10, math.inf).default_ttl is None
    assert lru_cls(10, 2).default_ttl == 2.0
    assert lru_cls(0).max_weight == 0


def test_final_and_not_picklable(lru_cls: Any) -> None:
    with pytest.raises(TypeError):

        class Sub(lru_cls):  # type: ignore[misc]
            pass

    c = lru_cls(10)
    c.set("a", 1, 1)
    with pytest.raises(TypeError):
        pickle.dumps(c)
    with pytest.raises(TypeError):
        copy.copy(c)
    with pytest.raises(AttributeError):
        c.hits = 5
    with pytest.raises(AttributeError):
        c.weight = 5


# --------------------------------------------------------------------------- reads


def test_get_set_basic(lru_cls: Any) -> None:
    c = lru_cls(100)
    assert c.get("a") is None
    assert c.get("a", "dflt") == "dflt"
    assert c.set("a", "A", 3) is True
    assert c.get("a") == "A"
    assert c.get("a", "dflt") == "A"
    assert len(c) == 1
    assert c.weight == 3
    assert (c.hits, c.misses, c.inserts) == (2, 2, 1)


def test_value_identity_and_none_values(lru_cls: Any) -> None:
    c = lru_cls(100)
    v = object()
    c.set("v", v, 1)
    assert c.get("v") is v
    assert c.peek("v") is v
    c.set("n", None, 1)
    sentinel = object()
    assert c.get("n", sentinel) is None  # a stored None is a hit, not a miss
    assert "n" in c
    assert c.hits == 2
    assert c.misses == 0


def test_peek_does_not_bump_or_count(lru_cls: Any) -> None:
    c = lru_cls(100)
    for k in "abc":
        c.set(k, k.upper(), 1)
    assert c.keys() == ["c", "b", "a"]
    assert c.peek("a") == "A"
    assert c.peek("zz") is None
    assert c.peek("zz", 7) == 7
    assert c.keys() == ["c", "b", "a"]
    assert (c.hits, c.misses) == (0, 0)


def test_contains(lru_cls: Any) -> None:
    c = lru_cls(100)
    c.set("a", None, 1)
    assert "a" in c
    assert "b" not in c
    assert c.keys() == ["a"]
    assert (c.hits, c.misses) == (0, 0)


def test_lru_order_after_gets_and_peeks(lru_cls: Any) -> None:
    c = lru_cls(100)
    for k in "abcde":
        c.set(k, k, 1)
    assert c.keys() == ["e", "d", "c", "b", "a"]
    c.get("b")
    assert c.keys() == ["b", "e", "d", "c", "a"]
    c.get("a")
    c.peek("d")
    assert "c" in c
    assert c.keys() == ["a", "b", "e", "d", "c"]
    c.get("a")  # already most recent
    assert c.keys() == ["a", "b", "e", "d", "c"]
    c.get("c")  # least recent -> most recent
    assert c.keys() == ["c", "a", "b", "e", "d"]
    c.set("e", "E", 1)  # overwrite -> most recent
    assert c.keys() == ["e", "c", "a", "b", "d"]


def test_keys_is_a_snapshot(lru_cls: Any) -> None:
    c = lru_cls(100)
    c.set("a", 1, 1)
    ks = c.keys()
    ks.append("zzz")
    assert c.keys() == ["a"]


# --------------------------------------------------------------------------- weights


def test_overwrite_with_different_weight(lru_cls: Any) -> None:
    c = lru_cls(10)
    c.set("a", 1, 4)
    c.set("b", 2, 3)
    assert c.weight == 7
    c.set("a", 10, 1)
    assert c.weight == 4
    assert c.get("a") == 10
    c.set("a", 11, 7)
    assert c.weight == 10
    assert c.keys() == ["a", "b"]
    assert c.evictions == 0
    c.set("b", 3, 0)
    assert c.weight == 7
    assert c.inserts == 5
    assert len(c) == 2


def test_overwrite_that_needs_evictions(lru_cls: Any) -> None:
    c = lru_cls(10)
    c.set("a", 1, 4)
    c.set("b", 2, 3)
    c.set("c", 3, 3)
    c.get("a")  # order: a, c, b
    assert c.set("b", 22, 3) is True  # same weight, no eviction; order: b, a, c
    assert c.evictions == 0
    # a grows 4 -> 8 and becomes most recent (a, b, c); the others weigh 6 and
    # 6 + 8 > 10: evict the LRU c (3 + 8 > 10 still), then b (0 + 8 fits)
    assert c.set("a", 11, 8) is True
    assert c.keys() == ["a"]
    assert c.weight == 8
    assert c.evictions == 2
    assert c.get("a") == 11


def test_weight_validation(lru_cls: Any) -> None:
    c = lru_cls(10)
    with pytest.raises(ValueError, match="weight"):
        c.set("a", 1, -1)
    with pytest.raises(TypeError, match="weight"):
        c.set("a", 1, 1.0)
    with pytest.raises(TypeError, match="weight"):
        c.set("a", 1, "1")
    with pytest.raises(TypeError, match="weight"):
        c.set("a", 1, None)
    with pytest.raises(ValueError, match="weight"):
        c.set("a", 1, -(2**80))
    assert len(c) == 0
    assert counters(c) == dict.fromkeys(counters(c), 0)


def test_weight_zero(lru_cls: Any) -> None:
    c = lru_cls(0)
    for i in range(100):
        assert c.set(i, i, 0) is True
    assert len(c) == 100
    assert c.weight == 0
    assert c.set("x", 1, 1) is False
    assert c.rejections == 1
    assert len(c) == 100
    c2 = lru_cls(2)
    c2.set("z", 0, 0)
    c2.set("a", 1, 1)
    c2.set("b", 2, 1)
    c2.set("c", 3, 1)  # evicts the LRU entries in order: z (weight 0) then a
    assert c2.keys() == ["c", "b"]
    assert c2.evictions == 2


def test_heavier_than_budget_is_rejected(lru_cls: Any) -> None:
    c = lru_cls(10)
    c.set("a", "old", 5)
    c.set("b", "B", 5)
    assert c.set("a", "huge", 11) is False
    assert "a" not in c  # the old value is superseded: removed
    assert c.get("a") is None
    assert c.keys() == ["b"]
    assert c.weight == 5
    assert c.rejections == 1
    assert c.evictions == 0
    assert c.invalidations == 0
    assert c.inserts == 2
    assert c.set("c", "C", 11) is False  # absent key: nothing removed
    assert c.rejections == 2
    assert c.set("d", "D", 2**70) is False  # beyond any C integer
    assert c.rejections == 3
    assert c.keys() == ["b"]
    assert c.set("e", "E", 10) is True  # exactly the budget fits, evicting b
    assert c.keys() == ["e"]
    assert c.evictions == 1


def test_eviction_order(lru_cls: Any) -> None:
    c = lru_cls(3)
    c.set("a", 1, 1)
    c.set("b", 2, 1)
    c.set("c", 3, 1)
    c.get("a")  # a is most recent: a, c, b
    c.set("d", 4, 1)  # evicts b
    assert c.keys() == ["d", "a", "c"]
    c.peek("c")  # no bump
    c.set("e", 5, 2)  # evicts c then a
    assert c.keys() == ["e", "d"]
    assert c.evictions == 3
    assert c.weight == 3


def test_weight_accounting_is_exact(lru_cls: Any) -> None:
    c = lru_cls(50)
    for i in range(2000):
        w = (i * 7919) % 23
        c.set(i % 97, w, w)  # the value records its own weight
        assert c.weight <= 50
        if i % 100 == 0:
            snapshot = c.keys()
            assert c.weight == sum(c.peek(k) for k in snapshot)
    snapshot = c.keys()
    assert c.weight == sum(c.peek(k) for k in snapshot)
    assert len(snapshot) == len(c)
    assert c.evictions > 0


# --------------------------------------------------------------------------- TTL


def test_ttl_expiry_to_the_tick(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, clock=clock)
    c.set("a", 1, 1, ttl=10)
    clock.t = T0 + 10 - 1e-9
    assert c.get("a") == 1
    assert "a" in c
    clock.t = T0 + 10  # expires exactly at set time + ttl
    assert c.get("a") is None
    assert c.expirations == 1
    assert c.misses == 1
    assert c.hits == 1
    assert len(c) == 0
    assert c.weight == 0


def test_expired_entry_via_peek_and_contains(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, 5.0, clock=clock)
    c.set("a", 1, 2)
    c.set("b", 2, 3)
    clock.advance(5)
    assert len(c) == 2  # expired but not yet purged: still counted
    assert c.weight == 5
    assert c.keys() == ["b", "a"]
    assert c.peek("a", "gone") == "gone"
    assert "b" not in c
    assert c.expirations == 2
    assert (c.hits, c.misses) == (0, 0)
    assert len(c) == 0
    assert c.weight == 0


def test_per_entry_ttl_overrides_default(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, 10.0, clock=clock)
    c.set("short", 1, 1, ttl=1)
    c.set("default", 2, 1)
    c.set("long", 3, 1, ttl=100)
    c.set("never", 4, 1, ttl=math.inf)
    clock.advance(1)
    assert c.keys() == ["never", "long", "default", "short"]
    assert c.get("short") is None
    clock.advance(9)
    assert c.get("default") is None
    assert c.get("long") == 3
    clock.advance(10**9)
    assert c.get("long") is None
    assert c.get("never") == 4
    assert c.expirations == 3


@pytest.mark.parametrize("default_ttl", [None, math.inf])
def test_default_ttl_never_expires(lru_cls: Any, clock: FakeClock, default_ttl: Any) -> None:
    c = lru_cls(100, default_ttl, clock=clock)
    c.set("a", 1, 1)
    clock.advance(1e12)
    assert c.get("a") == 1
    assert c.purge_expired() == 0
    c.set("b", 2, 1, ttl=1)  # explicit TTL still applies
    clock.advance(1)
    assert c.get("b") is None


@pytest.mark.parametrize("bad", [0, 0.0, -1, -0.001, math.nan, -math.inf])
def test_bad_ttl_is_value_error(lru_cls: Any, clock: FakeClock, bad: float) -> None:
    c = lru_cls(100, clock=clock)
    with pytest.raises(ValueError, match="ttl"):
        c.set("a", 1, 1, ttl=bad)
    with pytest.raises(ValueError, match="ttl"):
        c.set_if_fresh("a", 1, 1, c.begin_fill(), ttl=bad)
    assert len(c) == 0
    assert c.inserts == 0


def test_ttl_type_error(lru_cls: Any) -> None:
    c = lru_cls(100)
    with pytest.raises(TypeError, match="ttl"):
        c.set("a", 1, 1, ttl="5")
    assert len(c) == 0


def test_expired_purged_before_live_evicted(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(4, clock=clock)
    c.set("old1", 1, 1, ttl=1)
    c.set("live1", 2, 1)
    c.set("old2", 3, 1, ttl=2)
    c.set("live2", 4, 1)
    clock.advance(2)
    assert c.set("new", 5, 2) is True
    assert c.keys() == ["new", "live2", "live1"]
    assert c.expirations == 2
    assert c.evictions == 0
    assert c.weight == 4
    assert c.set("newer", 6, 1) is True  # now a live entry must go
    assert c.keys() == ["newer", "new", "live2"]
    assert c.evictions == 1


def test_set_purges_every_expired_entry_even_with_room(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, clock=clock)
    for i in range(10):
        c.set(i, i, 1, ttl=1 + i)
    clock.advance(5)  # entries 0..4 expired (deadline <= now)
    c.set("x", 0, 1)
    keys = c.keys()
    assert keys[0] == "x"
    assert sorted(keys[1:]) == [5, 6, 7, 8, 9]
    assert c.expirations == 5
    assert c.weight == 6


def test_expiry_order_with_mixed_ttls(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(1000, clock=clock)
    ttls = [7, 3, 9, 1, 5, 5, 2, 8, 6, 4]
    for i, ttl in enumerate(ttls):
        c.set(i, i, 1, ttl=ttl)
    for step in range(1, 11):
        clock.t = T0 + step
        removed = c.purge_expired()
        assert removed == ttls.count(step)
        assert sorted(c.keys()) == sorted(i for i, t in enumerate(ttls) if t > step)


def test_overwrite_resets_ttl(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, 10.0, clock=clock)
    c.set("a", 1, 1)
    clock.advance(8)
    c.set("a", 2, 1)
    clock.advance(8)  # 16 s after the first store, 8 after the second
    assert c.get("a") == 2
    c.set("a", 3, 1, ttl=math.inf)
    clock.advance(100)
    assert c.get("a") == 3
    c.set("a", 4, 1, ttl=1)
    clock.advance(1)
    assert c.get("a") is None
    assert c.expirations == 1


def test_purge_expired(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, 1.0, clock=clock)
    for i in range(5):
        c.set(i, i, 2)
    c.set("keep", 0, 1, ttl=math.inf)
    assert c.purge_expired() == 0
    clock.advance(1)
    assert c.purge_expired() == 5
    assert c.keys() == ["keep"]
    assert c.weight == 1
    assert c.expirations == 5
    assert c.purge_expired() == 0


def test_injected_clock_is_used(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, 1.0, clock=clock)
    c.set("a", 1, 1)
    assert clock.calls >= 1
    calls = clock.calls
    c.get("a")
    assert clock.calls == calls + 1  # finite deadline: the clock is read


def test_builtin_clock(lru_cls: Any) -> None:
    c = lru_cls(100, 0.05)
    c.set("a", 1, 1)
    c.set("b", 2, 1, ttl=math.inf)
    assert c.get("a") == 1
    time.sleep(0.2)  # far beyond the TTL plus a coarse tick (<= 16 ms)
    assert c.get("a") is None
    assert c.get("b") == 2
    assert c.expirations == 1


def test_builtin_clock_function() -> None:
    fns = [_lru_py.monotonic_coarse]
    try:
        from cal_redis._fast import _lru_c
    except ImportError:
        if not NO_EXTENSIONS:
            raise
    else:
        fns.append(_lru_c.monotonic_coarse)
    for fn in fns:
        a = fn()
        time.sleep(0.05)
        b = fn()
        assert isinstance(a, float)
        assert 0.03 < b - a < 5.0


# --------------------------------------------------------------------------- invalidation


def test_invalidate(lru_cls: Any) -> None:
    c = lru_cls(100)
    c.set("a", 1, 3)
    c.set("b", 2, 4)
    assert c.invalidate("a") is True
    assert c.invalidate("a") is False
    assert c.invalidate("zzz") is False
    assert c.keys() == ["b"]
    assert c.weight == 4
    assert c.invalidations == 1


def test_invalidate_all(lru_cls: Any) -> None:
    c = lru_cls(100)
    for i in range(10):
        c.set(i, i, 1)
    assert c.invalidate_all() == 10
    assert len(c) == 0
    assert c.weight == 0
    assert c.keys() == []
    assert c.invalidations == 10
    assert c.invalidate_all() == 0
    c.set("again", 1, 1)  # the cache is usable afterwards
    assert c.keys() == ["again"]
    assert c.get("again") == 1


def test_invalidate_where(lru_cls: Any) -> None:
    c = lru_cls(100)
    for i in range(10):
        c.set(i, i, 1)
    c.set("s", "s", 1)
    seen: list[Hashable] = []

    def pred(k: Hashable) -> bool:
        seen.append(k)
        return isinstance(k, int) and k % 2 == 0

    assert c.invalidate_where(pred) == 5
    assert seen == ["s", 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]  # most recent first
    assert c.keys() == ["s", 9, 7, 5, 3, 1]
    assert c.invalidations == 5
    assert c.weight == 6
    with pytest.raises(TypeError):
        c.invalidate_where(5)


def test_invalidate_where_predicate_mutates_cache(lru_cls: Any) -> None:
    c = lru_cls(100)
    for k in "abcdef":
        c.set(k, k, 1)

    def pred(k: Hashable) -> bool:
        if k == "e":
            c.invalidate("d")  # removes a key still ahead in the snapshot
            c.invalidate("b")
            c.set("new", 1, 1)  # adds a key not in the snapshot
            c.set("c", "C2", 2)  # replaces a key still ahead in the snapshot
        return k in ("d", "c", "a")

    assert c.invalidate_where(pred) == 2  # c (replaced value) and a; d already gone
    assert c.keys() == ["new", "f", "e"]
    assert c.weight == 3
    assert c.invalidations == 4  # d and b by invalidate, then c and a


def test_invalidate_where_raising_predicate(lru_cls: Any) -> None:
    c = lru_cls(100)
    for k in "abc":
        c.set(k, k, 1)
    token = c.begin_fill()

    def pred(k: Hashable) -> bool:
        if k == "b":
            raise RuntimeError("boom")
        return True

    with pytest.raises(RuntimeError, match="boom"):
        c.invalidate_where(pred)
    assert c.keys() == ["b", "a"]
    assert c.set_if_fresh("z", 1, 1, token) is False  # the floor was raised anyway


def test_invalidate_while_iterating_keys(lru_cls: Any) -> None:
    c = lru_cls(100)
    for i in range(50):
        c.set(i, i, 1)
    n = 0
    snapshot = c.keys()
    assert snapshot == list(range(49, -1, -1))
    for k in snapshot:
        if k % 2 == 0:
            c.invalidate(k - 1)  # removes the next key of the snapshot
        if c.invalidate(k):
            n += 1
    assert n == 26  # 49 and the 25 even keys; the other odd keys were gone already
    assert c.invalidations == 50
    assert len(c) == 0
    assert c.weight == 0


def test_invalidate_prefix(lru_cls: Any) -> None:
    c = lru_cls(100)
    keys: list[Hashable] = [
        "user:1",
        "user:2",
        "users",
        "org:1",
        ("user:3", "profile"),
        ("org:1", "user:9"),
        (),
        ("user:4",),
        (7, "user:5"),
        7,
        b"user:6",
    ]
    for k in keys:
        c.set(k, 1, 1)
    assert c.invalidate_prefix("user:") == 4
    assert set(c.keys()) == {"users", "org:1", ("org:1", "user:9"), (), (7, "user:5"), 7, b"user:6"}
    assert c.invalidations == 4
    assert c.invalidate_prefix("") == 3  # every str key and tuple with a leading str
    assert set(c.keys()) == {(), (7, "user:5"), 7, b"user:6"}
    with pytest.raises(TypeError):
        c.invalidate_prefix(b"user")


def test_invalidate_prefix_str_subclass(lru_cls: Any) -> None:
    class Key(str):
        __slots__ = ()

        def startswith(self, *args: Any) -> bool:  # type: ignore[override]
            return True

    c = lru_cls(100)
    c.set(Key("abc"), 1, 1)
    c.set(Key("xyz"), 1, 1)
    assert c.invalidate_prefix("ab") == 1  # str's own startswith is used
    assert c.keys() == ["xyz"]


def test_tuple_keys(lru_cls: Any) -> None:
    c = lru_cls(100)
    c.set(("ns", "a", 1), "x", 1)
    c.set(("ns", "a", 2), "y", 1)
    c.set(("ns", ("nested", 3)), "z", 1)
    assert c.get(("ns", "a", 1)) == "x"
    assert ("ns", "a", 2) in c
    assert c.get(("ns", ("nested", 3))) == "z"
    assert c.get(("ns", "a")) is None
    assert c.invalidate(("ns", "a", 2)) is True
    assert c.keys() == [("ns", ("nested", 3)), ("ns", "a", 1)]


def test_mixed_key_types_are_distinct(lru_cls: Any) -> None:
    c = lru_cls(100)
    c.set("1", "str", 1)
    c.set(1, "int", 1)
    c.set(("1",), "tuple", 1)
    c.set(b"1", "bytes", 1)
    assert [c.get(k) for k in ("1", 1, ("1",), b"1")] == ["str", "int", "tuple", "bytes"]
    assert c.get(1.0) == "int"  # same as dict: 1 == 1.0 and equal hashes


def test_unhashable_key(lru_cls: Any) -> None:
    c = lru_cls(100)
    c.set("a", 1, 1)
    for op in (
        lambda: c.get([1]),
        lambda: c.peek({}),
        lambda: [1] in c,
        lambda: c.set([1], 1, 1),
        lambda: c.set(("a", [1]), 1, 1),
        lambda: c.invalidate([1]),
        lambda: c.set_if_fresh([1], 1, 1, c.begin_fill()),
    ):
        with pytest.raises(TypeError, match="unhashable"):
            op()
    assert c.keys() == ["a"]
    assert counters(c) == {**dict.fromkeys(counters(c), 0), "inserts": 1}


def test_many_keys(lru_cls: Any) -> None:
    n = 200_000
    c = lru_cls(n)
    for i in range(n):
        c.set(f"k{i}", i, 1)
    assert len(c) == n
    assert c.weight == n
    assert c.evictions == 0
    assert all(c.get(f"k{i}") == i for i in range(0, n, 7))
    for i in range(n, n + 1000):  # each store evicts exactly one LRU entry
        c.set(f"k{i}", i, 1)
    assert len(c) == n
    assert c.evictions == 1000
    assert c.get("k1") is None  # never read: evicted
    assert c.get("k0") == 0  # read above: survived
    keys = c.keys()
    assert len(keys) == n
    assert keys[:2] == ["k0", f"k{n + 999}"]
    assert keys[-1] == "k1167"  # the first 1000 keys never read (k1..k1166) were evicted
    removed = c.invalidate_prefix("k1")
    assert removed > 0
    assert len(c) == n - removed
    assert c.invalidate_all() == n - removed
    assert c.weight == 0


# --------------------------------------------------------------------------- counters


def test_counters_and_stats(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(10, clock=clock)
    c.set("a", 1, 4)  # insert
    c.set("b", 2, 4)  # insert
    c.get("a")  # hit
    c.get("x")  # miss
    c.set("c", 3, 4)  # insert + evict b
    c.set("d", 4, 20)  # rejection
    c.set("e", 5, 1, ttl=1)  # insert
    clock.advance(1)
    c.get("e")  # expiration + miss
    c.invalidate("a")  # invalidation
    token = c.begin_fill()
    c.invalidate("c")  # invalidation
    c.set_if_fresh("c", 3, 1, token)  # stale fill
    c.end_fill()
    expected = {
        "hits": 1,
        "misses": 2,
        "inserts": 4,
        "evictions": 1,
        "expirations": 1,
        "invalidations": 2,
        "rejections": 1,
        "stale_fills": 1,
    }
    assert counters(c) == expected
    stats = c.stats()
    assert stats == {**expected, "entries": 0, "weight": 0, "max_weight": 10}
    assert all(type(v) is int for v in stats.values())
    stats["hits"] = 99  # a copy
    assert c.hits == 1
    c.set("z", 1, 3)
    c.reset_stats()
    assert c.stats() == {
        **dict.fromkeys(expected, 0),
        "entries": 1,
        "weight": 3,
        "max_weight": 10,
    }


def test_repr(lru_cls: Any) -> None:
    c = lru_cls(100)
    c.set("a", 1, 3)
    c.set("b", 1, 4)
    assert repr(c) == "LRUCache(entries=2, weight=7, max_weight=100)"


# --------------------------------------------------------------------------- fenced fills


def test_fill_without_interference_lands(lru_cls: Any) -> None:
    c = lru_cls(100)
    token = c.begin_fill()
    assert isinstance(token, int)
    assert c.inflight == 1
    assert c.set_if_fresh("k", "v", 1, token) is True
    c.end_fill()
    assert c.inflight == 0
    assert c.get("k") == "v"
    assert c.stale_fills == 0
    assert c.inserts == 1


def test_invalidate_after_begin_fill_rejects(lru_cls: Any) -> None:
    c = lru_cls(100)
    c.set("k", "v1", 1)
    token = c.begin_fill()
    c.invalidate("k")
    assert c.set_if_fresh("k", "stale", 1, token) is False
    c.end_fill()
    assert "k" not in c
    assert c.stale_fills == 1


def test_invalidate_of_absent_key_fences(lru_cls: Any) -> None:
    c = lru_cls(100)
    token = c.begin_fill()
    assert c.invalidate("k") is False
    assert c.fence_size == 1
    assert c.set_if_fresh("k", "stale", 1, token) is False
    assert c.set_if_fresh("other", "ok", 1, token) is True  # other keys are unaffected
    c.end_fill()
    assert c.keys() == ["other"]


def test_set_after_begin_fill_rejects(lru_cls: Any) -> None:
    c = lru_cls(100)
    token = c.begin_fill()
    c.set("k", "newer", 1)  # a writer stored a newer value meanwhile
    assert c.set_if_fresh("k", "older", 1, token) is False
    c.end_fill()
    assert c.get("k") == "newer"


def test_landed_fill_fences_concurrent_fill(lru_cls: Any) -> None:
    c = lru_cls(100)
    t1 = c.begin_fill()
    t2 = c.begin_fill()
    assert t1 == t2
    assert c.set_if_fresh("k", "first", 1, t1) is True
    assert c.set_if_fresh("k", "second", 1, t2) is False  # conservative
    c.end_fill()
    c.end_fill()
    assert c.get("k") == "first"


@pytest.mark.parametrize("bulk", ["all", "where", "prefix"])
def test_bulk_invalidation_fences_everything(lru_cls: Any, bulk: str) -> None:
    c = lru_cls(100)
    c.set("k", 1, 1)
    token = c.begin_fill()
    if bulk == "all":
        c.invalidate_all()
    elif bulk == "where":
        c.invalidate_where(lambda k: False)  # even when nothing matches
    else:
        c.invalidate_prefix("nothing-matches")
    assert c.set_if_fresh("unrelated", 1, 1, token) is False
    assert c.set_if_fresh("k", 1, 1, token) is False
    fresh = c.begin_fill()
    assert c.set_if_fresh("unrelated", 1, 1, fresh) is True
    c.end_fill()
    c.end_fill()
    assert c.stale_fills == 2


def test_token_taken_after_invalidation_is_accepted(lru_cls: Any) -> None:
    c = lru_cls(100)
    c.set("k", "v1", 1)
    early = c.begin_fill()
    c.invalidate("k")
    late = c.begin_fill()
    assert late > early
    assert c.set_if_fresh("k", "v2", 1, late) is True
    c.end_fill()
    c.end_fill()
    assert c.get("k") == "v2"


def test_stale_fill_leaves_cache_unchanged(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(10, clock=clock)
    c.set("expired", 1, 1, ttl=1)
    c.set("k", "current", 3)
    c.set("x", "X", 6)
    token = c.begin_fill()
    c.invalidate("k")
    clock.advance(5)
    before = (c.keys(), c.weight, counters(c))
    assert c.set_if_fresh("k", "stale", 9, token) is False
    after = (c.keys(), c.weight, counters(c))
    assert after[0] == before[0]  # not even the expired entry was purged
    assert after[1] == before[1]
    assert after[2] == {**before[2], "stale_fills": before[2]["stale_fills"] + 1}
    # a fill begun after the invalidation lands (and purges the expired entry)
    other = c.begin_fill()
    assert c.set_if_fresh("k", "fresh", 1, other) is True


def test_fresh_fill_behaves_like_set(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(10, 5.0, clock=clock)
    c.set("a", 1, 5)
    c.set("b", 2, 5)
    token = c.begin_fill()
    assert c.set_if_fresh("c", 3, 4, token) is True  # evicts a
    assert c.keys() == ["c", "b"]
    assert c.evictions == 1
    assert c.set_if_fresh("b", 9, 11, token) is False  # too heavy: rejection, old removed
    assert c.rejections == 1
    assert c.stale_fills == 0
    assert c.keys() == ["c"]
    assert c.set_if_fresh("d", 4, 1, c.begin_fill(), ttl=1) is True
    clock.advance(1)
    assert "d" not in c
    clock.advance(4)
    assert "c" not in c  # default TTL applied


def test_fence_cleared_when_no_fill_in_flight(lru_cls: Any) -> None:
    c = lru_cls(100)
    c.invalidate("a")
    assert c.fence_size == 0  # nothing recorded without fills in flight
    t1 = c.begin_fill()
    t2 = c.begin_fill()
    c.invalidate("a")
    c.set("b", 1, 1)
    assert c.fence_size == 2
    c.end_fill()
    assert c.inflight == 1
    assert c.fence_size == 2
    assert c.set_if_fresh("a", 1, 1, t2) is False  # still fenced
    c.end_fill()
    assert c.inflight == 0
    assert c.fence_size == 0
    c.end_fill()  # extra calls are ignored
    assert c.inflight == 0
    assert t1 == t2


def test_fence_overflow_is_conservative(lru_cls: Any) -> None:
    c = lru_cls(100, max_fence=2)
    token = c.begin_fill()
    c.invalidate("a")
    c.invalidate("b")
    assert c.fence_size == 2
    assert c.set_if_fresh("z", 1, 1, token) is True  # unrelated key still fine
    assert c.fence_size == 0  # z's own write overflowed the fence: cleared, floor raised
    assert c.set_if_fresh("y", 1, 1, token) is False  # now every older fill is rejected
    late = c.begin_fill()
    assert c.set_if_fresh("y", 1, 1, late) is True
    c.end_fill()
    c.end_fill()
    assert c.stale_fills == 1


def test_fence_overflow_with_zero_max_fence(lru_cls: Any) -> None:
    c = lru_cls(100, max_fence=0)
    token = c.begin_fill()
    c.invalidate("a")
    assert c.fence_size == 0
    assert c.set_if_fresh("b", 1, 1, token) is False


def test_eviction_and_expiry_do_not_fence(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(2, clock=clock)
    c.set("a", 1, 1)
    c.set("e", 1, 1, ttl=1)
    token = c.begin_fill()
    clock.advance(1)
    c.set("b", 2, 1)  # purges e (expired)
    c.set("c", 3, 1)  # evicts a
    assert c.keys() == ["c", "b"]
    assert c.set_if_fresh("a", 1, 1, token) is True
    assert c.set_if_fresh("e", 1, 1, token) is True


def test_token_validation(lru_cls: Any) -> None:
    c = lru_cls(100)
    with pytest.raises(TypeError, match="token"):
        c.set_if_fresh("a", 1, 1, 1.0)
    with pytest.raises(TypeError, match="token"):
        c.set_if_fresh("a", 1, 1, None)
    with pytest.raises(OverflowError):
        c.set_if_fresh("a", 1, 1, 2**64)
    assert c.set_if_fresh("a", 1, 1, -1) is False  # below the floor
    assert len(c) == 0


# --------------------------------------------------------------------------- re-entrancy


class Finalized:
    """A value whose finalizer calls back into the cache."""

    def __init__(self, cache: Any, tag: int) -> None:
        self.cache = cache
        self.tag = tag

    def __del__(self) -> None:
        c = self.cache
        c.get(self.tag + 1000)
        c.keys()
        c.invalidate(self.tag + 1)
        if self.tag % 3 == 0:
            c.set(("from-del", self.tag), None, 1)


def test_reentrant_finalizers_keep_cache_consistent(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(20, clock=clock)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(300):
            c.set(i % 37, Finalized(c, i), 1 + i % 4, ttl=None if i % 2 else 1 + i % 3)
            if i % 10 == 0:
                clock.advance(1)
            if i % 50 == 0:
                c.invalidate_prefix("x")
            assert c.weight <= 20
        c.invalidate_where(lambda k: isinstance(k, int) and k % 2 == 0)
        assert c.weight <= 20
        keys = c.keys()
        assert len(keys) == len(c) == len(set(keys))
        assert sum(1 for k in keys if c.peek(k, c) is not c) <= len(keys)
        c.invalidate_all()
        c.invalidate_all()
        assert len(c) == 0
    finally:
        if was_enabled:
            gc.enable()


# --------------------------------------------------------------------------- bulk operations


def test_get_many_is_get_in_order(lru_cls: Any, clock: FakeClock) -> None:
    c = lru_cls(100, clock=clock)
    c.set("a", 1, 1)
    c.set("b", 2, 1, ttl=1.0)
    c.set("c", 3, 1)
    clock.advance(1.0)  # "b" is expired to the tick
    assert c.get_many(["c", "x", "b", "a", "c"]) == [3, None, None, 1, 3]
    assert c.keys() == ["c", "a"]  # bumped in order: the last read is the most recent
    assert counters(c)["hits"] == 3
    assert counters(c)["misses"] == 2
    assert counters(c)["expirations"] == 1
    assert c.get_many(iter(("a", "zz")), "dflt") == [1, "dflt"]  # any iterable
    assert c.get_many([]) == []


def test_get_many_unhashable_key(lru_cls: Any) -> None:
    c = lru_cls(100)
    c.set("a", 1, 1)
    with pytest.raises(TypeError):
        c.get_many(["a", ["unhashable"]])


def test_get_many_survives_a_clock_that_mutates_the_cache(lru_cls: Any) -> None:
    calls = 0

    def clock() -> float:  # a user clock that empties the cache being read
        nonlocal calls
        calls += 1
        if calls % 7 == 0:
            c.invalidate_all()
        return 0.0

    c = lru_cls(100, 10.0, clock=clock)
    ks = [f"k{i}" for i in range(50)]
    for k in ks:
        c.set(k, k.upper(), 1)
    got = c.get_many(ks)
    assert len(got) == len(ks)
    assert all(v is None or v == k.upper() for k, v in zip(ks, got, strict=True))


def test_set_many_if_fresh_is_set_if_fresh_in_order(lru_cls: Any) -> None:
    c = lru_cls(100)
    c.set("old", 0, 1)
    token = c.begin_fill()
    c.invalidate("fenced")
    stored = c.set_many_if_fresh(["a", "fenced", "b", "a"], [1, 2, 3, 4], [1, 1, 1, 1], token)
    # "fenced" was invalidated after the token; the second "a" is fenced by the first.
    assert stored == 2
    assert counters(c)["stale_fills"] == 2
    c.end_fill()
    assert c.keys() == ["b", "a", "old"]
    assert c.get_many(["a", "b", "fenced"]) == [1, 3, None]
    assert c.weight == 3


def test_set_many_if_fresh_after_bulk_invalidation_stores_nothing(lru_cls: Any) -> None:
    c = lru_cls(100)
    token = c.begin_fill()
    c.invalidate_all()
    assert c.set_many_if_fresh(["a", "b"], [1, 2], [1, 1], token) == 0
    assert counters(c)["stale_fills"] == 2
    c.end_fill()
    assert len(c) == 0


def test_set_many_if_fresh_evicts_and_rejects_like_set(lru_cls: Any) -> None:
    c = lru_cls(3, 5.0)
    token = c.begin_fill()
    stored = c.set_many_if_fresh(("a", "b", "huge", "c", "d"), (1, 2, 3, 4, 5), (1, 1, 9, 1, 1), token)
    c.end_fill()
    assert stored == 4
    assert c.keys() == ["d", "c", "b"]
    assert counters(c)["evictions"] == 1
    assert counters(c)["rejections"] == 1


def test_set_many_if_fresh_extra_weight(lru_cls: Any) -> None:
    c = lru_cls(10)
    token = c.begin_fill()
    assert c.set_many_if_fresh(["a", "b", "c"], [1, 2, 3], [0, 2, 8], token, extra_weight=3) == 2
    c.end_fill()
    assert c.keys() == ["b", "a"]  # "c" weighs 8 + 3 > budget: rejected
    assert c.weight == 3 + 5
    assert counters(c)["rejections"] == 1
    token = c.begin_fill()
    assert c.set_many_if_fresh(["d"], [4], [1], token, extra_weight=2**63) == 0  # no overflow
    with pytest.raises(ValueError, match="weight"):
        c.set_many_if_fresh(["d"], [4], [1], token, extra_weight=-1)
    with pytest.raises(TypeError, match="weight"):
        c.set_many_if_fresh(["d"], [4], [1], token, extra_weight=1.0)


@pytest.mark.parametrize(
    ("ks", "vs", "ws", "token", "ttl", "error"),
    [
        (["a", "b"], [1], [1, 1], 0, None, ValueError),  # lengths differ
        (["a", "b"], [1, 2], [1], 0, None, ValueError),
        (["a", "b"], [1, 2], [1, -1], 0, None, ValueError),  # a bad weight, last
        (["a", "b"], [1, 2], [1, "1"], 0, None, TypeError),
        (["a", ["x"]], [1, 2], [1, 1], 0, None, TypeError),  # an unhashable key, last
        (["a", "b"], [1, 2], [1, 1], 1.5, None, TypeError),  # token
        (["a", "b"], [1, 2], [1, 1], 0, 0.0, ValueError),  # ttl
        (["a", "b"], [1, 2], [1, 1], 0, "1", TypeError),
    ],
)
def test_set_many_if_fresh_checks_everything_before_storing(
    lru_cls: Any, ks: Any, vs: Any, ws: Any, token: Any, ttl: Any, error: type[Exception]
) -> None:
    c = lru_cls(100)
    c.set("keep", 1, 1)
    c.begin_fill()
    before = (c.keys(), c.stats(), c.fence_size)
    with pytest.raises(error):
        c.set_many_if_fresh(ks, vs, ws, token, ttl)
    assert (c.keys(), c.stats(), c.fence_size) == before  # nothing stored, nothing fenced


def test_set_many_if_fresh_with_reentrant_finalizers(lru_cls: Any) -> None:
    c = lru_cls(20)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(20):
            ks = [i % 13 for i in range(round_, round_ + 15)]
            token = c.begin_fill()
            c.set_many_if_fresh(ks, [Finalized(c, k) for k in ks], [1 + k % 3 for k in ks], token)
            c.end_fill()
            assert c.weight <= 20
            keys = c.keys()
            assert len(keys) == len(c) == len(set(keys))
        c.invalidate_all()
    finally:
        if was_enabled:
            gc.enable()


def test_entries_cost_the_cyclic_gc_nothing(lru_cls: Any) -> None:
    """A full L1 adds no work to every collection: no GC-tracked object per entry."""
    c = lru_cls(1 << 30)
    gc.collect()
    before = len(gc.get_objects())
    token = c.begin_fill()
    c.set_many_if_fresh([f"k{i}" for i in range(5000)], list(range(5000)), [1] * 5000, token)
    c.end_fill()
    for i in range(5000):
        c.set(("t", i), str(i), 1)
    gc.collect()
    assert len(c) == 10_000
    assert len(gc.get_objects()) - before < 100


def test_suspend_hides_entries_until_resume(lru_cls: Any, clock: FakeClock) -> None:
    """A suspended cache serves nothing (every read a miss), keeps its entries, and still
    invalidates, expires and fences them; resume serves what is left."""
    c = lru_cls(100, 10.0, clock=clock)
    c.set("a", 1, 1)
    c.set("b", 2, 1)
    c.set("x", 3, 1, ttl=1.0)
    assert c.suspended is False
    c.suspend()
    assert c.suspended is True
    before = c.misses
    assert c.get("a") is None
    assert c.get_many(["a", "b"], 0) == [0, 0]
    assert c.peek("a") is None and "a" not in c
    assert c.misses == before + 3 and c.hits == 0
    assert len(c) == 3
    token = c.begin_fill()
    assert c.invalidate("b") is True  # invalidations reach held entries, and fence
    assert c.set_if_fresh("b", 20, 1, token) is False
    c.end_fill()
    clock.advance(2.0)
    c.resume()
    assert c.suspended is False
    assert c.get("a") == 1
    assert c.get("b") is None
    assert c.get("x") is None  # expired while held
