"""Stateful property test: the compiled cache, its twin and a naive model must agree.

One hypothesis state machine drives every available implementation and an obviously
correct O(n) reference model with the same random operations, on a shared fake clock, and
checks after every step that return values, key order (most recent first), counters,
weights and fence state are identical, and that no cache exceeds its weight budget. The
stale window (entries kept past their TTL for ``get_stale``), suspension and the
refresh-ahead handler's calls are part of what must agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cal_redis._fast import NO_EXTENSIONS, _lru_py
from lru_support import COUNTERS, FakeClock

pytestmark = pytest.mark.l1

MAX_EXAMPLES = 500
STEPS = 50

try:
    from cal_redis._fast import _lru_c
except ImportError as err:  # pragma: no cover - depends on the build
    _lru_c = None
    _IMPORT_ERROR: ImportError | None = err
else:
    _IMPORT_ERROR = None


class Model:
    """Reference semantics, written for obviousness rather than speed.

    ``items`` is a list of ``[key, value, weight, expires_at, stored_at, refresh_at,
    purge_at]``, most recent first: an item is served until ``expires_at``, kept until
    ``purge_at`` (the stale window), and due for refresh-ahead from ``refresh_at``
    (``== expires_at``: not due).
    """

    def __init__(
        self,
        max_weight: int,
        default_ttl: float | None,
        *,
        clock: Callable[[], float],
        max_fence: int,
        stale_window: float = 0.0,
    ) -> None:
        self.stale_window = float(stale_window)
        self.suspended = False
        self.fraction = 0.0
        self.handler: Callable[[Hashable], object] | None = None
        self.max_weight = max_weight
        self.default_ttl = math.inf if default_ttl is None else float(default_ttl)
        self.clock = clock
        self.max_fence = max_fence
        self.items: list[list[Any]] = []
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.gen = 0
        self.floor = 0
        self.inflight = 0
        self.fence: dict[Hashable, int] = {}

    # helpers
    def _index(self, key: Hashable) -> int | None:
        for i, item in enumerate(self.items):
            if item[0] == key:
                return i
        return None

    def _fence_key(self, key: Hashable) -> None:
        self.gen += 1
        if self.inflight > 0:
            self.fence[key] = self.gen
            if len(self.fence) > self.max_fence:
                self.fence.clear()
                self.floor = self.gen

    def _fence_everything(self) -> None:
        self.gen += 1
        self.floor = self.gen
        self.fence.clear()

    @property
    def weight(self) -> int:
        return sum(item[2] for item in self.items)

    # reads
    def get(self, key: Hashable, default: Any = None) -> Any:
        i = self._index(key)
        if i is None or self.suspended:
            self.counts["misses"] += 1
            return default
        item = self.items[i]
        if item[3] != math.inf:
            now = self.clock()
            if now >= item[3]:
                self.counts["misses"] += 1
                if now >= item[6]:  # past the stale window too: removed
                    del self.items[i]
                    self.counts["expirations"] += 1
                return default
        else:
            now = -math.inf
        self.items.insert(0, self.items.pop(i))
        self.counts["hits"] += 1
        if now >= item[5]:  # due for refresh-ahead: called once
            item[5] = item[3]
            if self.handler is not None:
                self.handler(key)
        return item[1]

    def peek(self, key: Hashable, default: Any = None) -> Any:
        i = self._index(key)
        if i is None or self.suspended:
            return default
        now = self.clock() if self.items[i][3] != math.inf else -math.inf
        if now >= self.items[i][3]:
            if now >= self.items[i][6]:
                del self.items[i]
                self.counts["expirations"] += 1
            return default
        return self.items[i][1]

    def get_stale(
        self, key: Hashable, max_age: float, default: Any = None, *, expired: bool = True
    ) -> Any:
        i = self._index(key)
        if i is None:
            return default
        item, now = self.items[i], self.clock()
        if now - item[4] < max_age and (expired or now < item[3]):
            return item[1]
        return default

    def suspend(self) -> None:
        self.suspended = True

    def resume(self) -> None:
        self.suspended = False

    def set_refresh_ahead(
        self, fraction: float, handler: Callable[[Hashable], object] | None
    ) -> None:
        self.fraction = float(fraction) if handler is not None else 0.0
        self.handler = handler if self.fraction else None

    def __contains__(self, key: Hashable) -> bool:
        marker = object()
        return self.peek(key, marker) is not marker

    def __len__(self) -> int:
        return len(self.items)

    def keys(self) -> list[Hashable]:
        return [item[0] for item in self.items]

    # writes
    def purge_expired(self) -> int:
        now = self.clock()
        live = [item for item in self.items if now < item[6]]
        n = len(self.items) - len(live)
        self.items = live
        self.counts["expirations"] += n
        return n

    def set(self, key: Hashable, value: Any, weight: int, ttl: float | None = None) -> bool:
        ttl = self.default_ttl if ttl is None else ttl
        now = self.clock()
        self.purge_expired()
        self._fence_key(key)
        i = self._index(key)
        if i is not None:
            del self.items[i]
        if weight > self.max_weight:
            self.counts["rejections"] += 1
            return False
        while self.weight + weight > self.max_weight:
            self.items.pop()
            self.counts["evictions"] += 1
        exp = now + ttl
        keep = self.stale_window
        purge = exp if keep <= ttl else now + keep
        due = now + ttl * (1.0 - self.fraction) if self.fraction and exp != math.inf else exp
        self.items.insert(0, [key, value, weight, exp, now, due, purge])
        self.counts["inserts"] += 1
        return True

    def invalidate(self, key: Hashable) -> bool:
        self._fence_key(key)
        i = self._index(key)
        if i is None:
            return False
        del self.items[i]
        self.counts["invalidations"] += 1
        return True

    def invalidate_all(self) -> int:
        n = len(self.items)
        self.items = []
        self.counts["invalidations"] += n
        self._fence_everything()
        return n

    def invalidate_where(self, predicate: Callable[[Hashable], object]) -> int:
        n = 0
        for key in self.keys():
            if predicate(key):
                i = self._index(key)
                if i is not None:
                    del self.items[i]
                    self.counts["invalidations"] += 1
                    n += 1
        self._fence_everything()
        return n

    def invalidate_prefix(self, prefix: str) -> int:
        def match(key: Hashable) -> bool:
            if isinstance(key, str):
                return key.startswith(prefix)
            return (
                isinstance(key, tuple)
                and len(key) > 0
                and isinstance(key[0], str)
                and key[0].startswith(prefix)
            )

        return self.invalidate_where(match)

    # fills
    def begin_fill(self) -> int:
        self.inflight += 1
        return self.gen

    def end_fill(self) -> None:
        self.inflight = max(0, self.inflight - 1)
        if self.inflight == 0:
            self.fence.clear()

    def set_if_fresh(
        self, key: Hashable, value: Any, weight: int, token: int, ttl: float | None = None
    ) -> bool:
        if token < self.floor or self.fence.get(key, -1) > token:
            self.counts["stale_fills"] += 1
            return False
        return self.set(key, value, weight, ttl)

    def get_many(self, keys: list[Hashable], default: Any = None) -> list[Any]:
        return [self.get(k, default) for k in keys]

    def set_many_if_fresh(
        self,
        keys: list[Hashable],
        values: list[Any],
        weights: list[int],
        token: int,
        ttl: float | None = None,
        *,
        extra_weight: int = 0,
    ) -> int:
        return sum(
            self.set_if_fresh(k, v, w + extra_weight, token, ttl)
            for k, v, w in zip(keys, values, weights, strict=True)
        )

    @property
    def fence_size(self) -> int:
        return len(self.fence)

    def stats(self) -> dict[str, int]:
        return {
            **self.counts,
            "entries": len(self.items),
            "weight": self.weight,
            "max_weight": self.max_weight,
        }

    def reset_stats(self) -> None:
        self.counts = dict.fromkeys(COUNTERS, 0)


KEYS: list[Hashable] = ["a", "ab", "b", "ba", "c", ("a", 1), ("b", 2), ("ab",), 7, ()]
PREFIXES = ["", "a", "ab", "b", "c", "x"]
TTLS = [None, 0.25, 0.5, 1.0, 2.5, 4.0, math.inf]
keys = st.sampled_from(KEYS)
weights = st.one_of(st.integers(0, 5), st.integers(10, 20))
ttls = st.sampled_from(TTLS)
values = st.integers(0, 1000)


def _predicates(name: str, cache: Any) -> Callable[[Hashable], object]:
    if name == "tuples":
        return lambda k: isinstance(k, tuple)
    if name == "ends_with_a":
        return lambda k: str(k).endswith("a")

    def mutating(k: Hashable) -> bool:  # mutates the cache it is invalidating
        if k == "b":
            cache.invalidate("a")
            cache.set("c", "from-predicate", 1)
        return k in ("ab", "c")

    return mutating


class CacheMachine(RuleBasedStateMachine):
    examples = 0
    implementations: tuple[Any, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.caches: list[Any] = []
        self.model: Model | None = None
        self.tokens: list[int] = []
        #: The refresh-ahead handler's calls, per cache (the model's last).
        self.due: list[list[Hashable]] = []

    @initialize(
        max_weight=st.integers(0, 12),
        default_ttl=st.sampled_from([None, 1.0, 3.0, math.inf]),
        max_fence=st.integers(0, 4),
        stale_window=st.sampled_from([0.0, 0.0, 0.5, 2.0, 6.0]),
    )
    def create(
        self, max_weight: int, default_ttl: float | None, max_fence: int, stale_window: float
    ) -> None:
        type(self).examples += 1
        kwargs = {"clock": self.clock, "max_fence": max_fence, "stale_window": stale_window}
        self.caches = [cls(max_weight, default_ttl, **kwargs) for cls in self.implementations]
        self.model = Model(max_weight, default_ttl, **kwargs)
        self.due = [[] for _ in range(len(self.caches) + 1)]

    def apply(self, op: Callable[[Any], Any]) -> Any:
        assert self.model is not None
        expected = op(self.model)
        for cache in self.caches:
            got = op(cache)
            assert got == expected, (type(cache).__module__, got, expected)
            assert type(got) is type(expected)
        return expected

    @rule(key=keys, value=values, weight=weights, ttl=ttls)
    def set(self, key: Hashable, value: int, weight: int, ttl: float | None) -> None:
        self.apply(lambda c: c.set(key, value, weight, ttl))

    @rule(key=keys, value=values, weight=weights)
    def set_default_ttl(self, key: Hashable, value: int, weight: int) -> None:
        self.apply(lambda c: c.set(key, value, weight))

    @rule(key=keys)
    def get(self, key: Hashable) -> None:
        self.apply(lambda c: c.get(key, "missing"))

    @rule(key=keys)
    def peek(self, key: Hashable) -> None:
        self.apply(lambda c: c.peek(key))

    @rule(key=keys)
    def contains(self, key: Hashable) -> None:
        self.apply(lambda c: key in c)

    @rule(key=keys)
    def invalidate(self, key: Hashable) -> None:
        self.apply(lambda c: c.invalidate(key))

    @rule()
    def invalidate_all(self) -> None:
        self.apply(lambda c: c.invalidate_all())

    @rule(prefix=st.sampled_from(PREFIXES))
    def invalidate_prefix(self, prefix: str) -> None:
        self.apply(lambda c: c.invalidate_prefix(prefix))

    @rule(name=st.sampled_from(["tuples", "ends_with_a", "mutating"]))
    def invalidate_where(self, name: str) -> None:
        self.apply(lambda c: c.invalidate_where(_predicates(name, c)))

    @rule(dt=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 4.0]))
    def advance(self, dt: float) -> None:
        self.clock.t += dt

    @rule()
    def purge_expired(self) -> None:
        self.apply(lambda c: c.purge_expired())

    @rule()
    def begin_fill(self) -> None:
        self.tokens.append(self.apply(lambda c: c.begin_fill()))

    @precondition(lambda self: bool(self.tokens))
    @rule(key=keys, value=values, weight=weights, ttl=ttls, pick=st.integers(0, 100))
    def set_if_fresh(
        self, key: Hashable, value: int, weight: int, ttl: float | None, pick: int
    ) -> None:
        token = self.tokens[pick % len(self.tokens)]  # possibly an ended fill's token
        self.apply(lambda c: c.set_if_fresh(key, value, weight, token, ttl))

    @precondition(lambda self: bool(self.tokens))
    @rule(
        items=st.lists(st.tuples(keys, values, weights), max_size=6),
        ttl=ttls,
        pick=st.integers(0, 100),
        extra=st.integers(0, 3),
    )
    def set_many_if_fresh(
        self, items: list[tuple[Hashable, int, int]], ttl: float | None, pick: int, extra: int
    ) -> None:
        token = self.tokens[pick % len(self.tokens)]
        ks, vs, ws = [i[0] for i in items], [i[1] for i in items], [i[2] for i in items]
        self.apply(lambda c: c.set_many_if_fresh(ks, vs, ws, token, ttl, extra_weight=extra))

    @rule(ks=st.lists(keys, max_size=6))
    def get_many(self, ks: list[Hashable]) -> None:
        self.apply(lambda c: c.get_many(ks, "missing"))

    @rule()
    def end_fill(self) -> None:
        self.apply(lambda c: c.end_fill())

    @rule(key=keys, max_age=st.sampled_from([0.0, 0.25, 1.0, 3.0, 10.0]))
    def get_stale(self, key: Hashable, max_age: float) -> None:
        self.apply(lambda c: c.get_stale(key, max_age, "missing"))

    # Reads of a key the cache holds (random keys mostly miss): these reach expired,
    # kept (stale window) and due (refresh-ahead) entries.
    def _held(self, pick: int) -> Hashable:
        assert self.model is not None
        return self.model.keys()[pick % len(self.model)]

    @precondition(lambda self: self.model is not None and len(self.model) > 0)
    @rule(pick=st.integers(0, 100), dt=st.sampled_from([0.0, 0.2, 0.5, 1.0, 3.0]),
          times=st.integers(1, 2))
    def get_held(self, pick: int, dt: float, times: int) -> None:
        key = self._held(pick)
        self.clock.t += dt
        for _ in range(times):
            self.apply(lambda c: c.get(key, "missing"))

    @precondition(lambda self: self.model is not None and len(self.model) > 0)
    @rule(pick=st.integers(0, 100), max_age=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
          dt=st.sampled_from([0.0, 0.5, 1.0, 3.0]), read=st.sampled_from(["stale", "peek"]))
    def read_held(self, pick: int, max_age: float, dt: float, read: str) -> None:
        key = self._held(pick)
        self.clock.t += dt
        if read == "stale":
            self.apply(lambda c: c.get_stale(key, max_age, "missing", expired=dt != 1.0))
        else:
            self.apply(lambda c: c.peek(key, "missing"))

    @rule(on=st.booleans())
    def suspend(self, on: bool) -> None:
        self.apply(lambda c: c.suspend() if on else c.resume())

    @rule(fraction=st.sampled_from([0.0, 0.25, 0.5, 0.9]), handler=st.booleans())
    def set_refresh_ahead(self, fraction: float, handler: bool) -> None:
        assert self.model is not None
        for calls, c in zip(self.due, [*self.caches, self.model], strict=True):
            c.set_refresh_ahead(fraction, calls.append if handler else None)

    @rule()
    def reset_stats(self) -> None:
        self.apply(lambda c: c.reset_stats())

    @rule(key=keys, weight=st.integers(-3, -1))
    def bad_weight(self, key: Hashable, weight: int) -> None:
        for cache in self.caches:
            with pytest.raises(ValueError):
                cache.set(key, 0, weight)

    @invariant()
    def agree(self) -> None:
        if self.model is None:
            return
        model = self.model
        expected = (model.keys(), model.stats(), len(model), model.inflight, model.fence_size)
        for cache in self.caches:
            got = (cache.keys(), cache.stats(), len(cache), cache.inflight, cache.fence_size)
            assert got == expected, type(cache).__module__
            assert cache.weight == model.weight
            assert cache.weight <= cache.max_weight
        assert all(calls == self.due[-1] for calls in self.due), self.due


class StaleMachine(CacheMachine):
    """The same rules on caches where entries fit and live long enough to expire, be
    kept by the stale window and fall due for refresh-ahead (the random budgets above
    reject most entries)."""

    @initialize(
        max_weight=st.integers(10, 40),
        default_ttl=st.sampled_from([0.5, 1.0, 3.0]),
        max_fence=st.integers(0, 4),
        stale_window=st.sampled_from([0.0, 0.5, 2.0, 6.0]),
        fraction=st.sampled_from([0.0, 0.25, 0.5]),
    )
    def create(  # type: ignore[override]
        self, max_weight: int, default_ttl: float, max_fence: int, stale_window: float,
        fraction: float,
    ) -> None:
        super().create(max_weight, default_ttl, max_fence, stale_window)
        self.set_refresh_ahead(fraction, True)

    @rule(key=keys, value=values, weight=st.integers(0, 5), ttl=ttls)
    def set_light(self, key: Hashable, value: int, weight: int, ttl: float | None) -> None:
        self.apply(lambda c: c.set(key, value, weight, ttl))


def implementations() -> tuple[Any, ...]:
    if _lru_c is None:
        if not NO_EXTENSIONS:
            pytest.fail(
                f"compiled module cal_redis._fast._lru_c does not import: {_IMPORT_ERROR!r}"
            )
        return (_lru_py.LRUCache,)
    return (_lru_c.LRUCache, _lru_py.LRUCache)


def test_state_machine() -> None:
    CacheMachine.implementations = implementations()
    CacheMachine.examples = 0
    run_state_machine_as_test(
        CacheMachine,
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    assert CacheMachine.examples >= MAX_EXAMPLES


def test_state_machine_stale_and_refresh() -> None:
    StaleMachine.implementations = implementations()
    StaleMachine.examples = 0
    run_state_machine_as_test(
        StaleMachine,
        settings=settings(
            max_examples=MAX_EXAMPLES // 2,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    assert StaleMachine.examples >= MAX_EXAMPLES // 2


def test_model_replay(lru_cls: Any) -> None:
    """A fixed scenario through each implementation and the model (sanity of the harness)."""
    clock = FakeClock()
    cache = lru_cls(6, 2.0, clock=clock, max_fence=1)
    model = Model(6, 2.0, clock=clock, max_fence=1)

    def both(op: Callable[[Any], Any]) -> None:
        assert op(cache) == op(model)
        assert cache.keys() == model.keys()
        assert cache.stats() == model.stats()

    both(lambda c: c.set("a", 1, 2))
    both(lambda c: c.set(("a", 1), 2, 3, 0.5))
    both(lambda c: c.get("a"))
    both(lambda c: c.begin_fill())
    both(lambda c: c.invalidate("zz"))
    clock.t += 0.5
    both(lambda c: c.set("b", 3, 4))
    both(lambda c: c.set_if_fresh("zz", 4, 1, 0))
    both(lambda c: c.get(("a", 1)))
    both(lambda c: c.invalidate_prefix("a"))
    both(lambda c: c.end_fill())
    clock.t += 2
    both(lambda c: "b" in c)
    both(lambda c: c.set("big", 0, 7))
    assert model.stats()["expirations"] == 2  # ("a", 1) purged by a set, then b by `in`
    assert model.stats()["rejections"] == 1
    assert model.stats()["stale_fills"] == 1  # the fence overflowed: floor raised
