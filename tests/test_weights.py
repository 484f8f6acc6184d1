"""L1 entry weights: every cache-first family weighs about the memory it really holds.

The gate is tracemalloc (tests/weight_support.py): the sum of the weights of a fill
must be within 20 % of the bytes the fill left allocated in the compiled L1. The pure
twin keeps about 200 B more per entry (an OrderedDict node, an entry tuple, a heap
item, boxed weight and deadline); it is held to its own documented range
(docs/configuration.md, "Entry weights"), which the old flat formula misses too.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import redis

from cal_redis import CacheConfig, CallableCache, EntryWeight, FlowState, User
from cal_redis.config import DEFAULT_ENTRY_WEIGHTS
from cal_redis.errors import ConfigurationError
from cal_redis.local import LocalTier
from weight_support import FAMILIES, Measured, measure

#: Compiled L1: weight / real memory must be within this range.
COMPILED_RANGE = (0.80, 1.20)
#: Pure twin: weights are 0.54-0.90 of its real memory (measured, docs/configuration.md).
TWIN_RANGE = (0.45, 1.20)


def _check(m: Measured) -> None:
    lo, hi = COMPILED_RANGE if m.implementation == "c" else TWIN_RANGE
    print(
        f"{m.family} [{m.implementation}] {m.entries} entries: real {m.real:.1f} B, "
        f"weight {m.weight:.1f} B per entry (weight/real {m.ratio:.3f})"
    )
    assert lo <= m.ratio <= hi, (
        f"{m.family} [{m.implementation}]: weight {m.weight:.1f} B per entry for "
        f"{m.real:.1f} B really held (ratio {m.ratio:.3f}, allowed {lo}-{hi})"
    )


# ----------------------------------------------------------------------------- measured


@pytest.mark.c_extension
@pytest.mark.parametrize("l1_impl", ["c"], indirect=True)
def test_100k_users_weigh_their_real_memory_in_the_compiled_l1(l1_impl: str) -> None:
    # Through the batch fill the engine uses (LocalTier.fill_many, 1,000 per call).
    m = measure(FAMILIES["user"], 100_000, batch=True)
    assert m.implementation == "c" and m.entries == 100_000
    _check(m)


@pytest.mark.parametrize("l1_impl", ["py"], indirect=True)
def test_users_figure_in_the_pure_twin(l1_impl: str) -> None:
    # The twin's figure for the same formula, in its own range (20k users: it is slower).
    m = measure(FAMILIES["user"], 20_000, batch=True)
    assert m.implementation == "py"
    _check(m)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_weighs_its_real_memory(l1_impl: str, family: str) -> None:
    m = measure(FAMILIES[family], 5_000)
    assert m.implementation == l1_impl
    _check(m)


# ----------------------------------------------------------------------------- formula


def _tier(config: CacheConfig | None = None) -> LocalTier:
    return LocalTier(config or CacheConfig(), list(DEFAULT_ENTRY_WEIGHTS))


def test_weight_formula_per_namespace(l1_impl: str) -> None:
    tier = _tier()
    for ns, w in DEFAULT_ENTRY_WEIGHTS.items():
        for n in (0, 1, 300, 4096):
            assert tier.weight(ns, n) == w.base + int(w.per_byte * n)
            assert tier.ident_weight(ns, n) == w.ident_base + n
        assert tier.weights(ns, [0, 1, 300, 4096]) == [tier.weight(ns, n) for n in (0, 1, 300, 4096)]
    # Flow states grow by more than a byte per JSON byte (their data dict).
    assert tier.weight("flow_states", 1000) - tier.weight("flow_states", 0) > 2000
    assert tier.weight("users", 1000) - tier.weight("users", 0) == 1000


@pytest.mark.parametrize("ns", ["users", "flow_states"])
def test_fill_many_stores_the_weights(l1_impl: str, ns: str) -> None:
    # One JSON byte per byte (users: extra_weight path) and not (flow states: weight list).
    tier = _tier()
    l1 = tier[ns]
    keys = [f"k{i}" for i in range(50)]
    sizes = [100 + 7 * i for i in range(50)]
    token = l1.begin_fill()
    try:
        assert tier.fill_many(ns, keys, keys, sizes, token) == 50
    finally:
        l1.end_fill()
    assert l1.weight == sum(tier.weights(ns, sizes))
    # A fill that went stale stores nothing.
    token = l1.begin_fill()
    try:
        l1.invalidate("k0")
        assert tier.fill_many(ns, ["k0"], ["v"], [10], token) == 0
        assert "k0" not in l1
    finally:
        l1.end_fill()
    # The budget is in the same unit: a 20-entry budget holds 20 entries, not more.
    budget = sum(tier.weights(ns, sizes[:20]))
    small = LocalTier(CacheConfig().with_budget(ns, max_bytes=budget, ttl=60), [ns])
    token = small[ns].begin_fill()
    try:
        small.fill_many(ns, keys, keys, sizes[:20] + [sizes[19]] * 30, token)
    finally:
        small[ns].end_fill()
    assert small[ns].weight <= budget and len(small[ns]) <= 20


def test_entry_weights_override_and_fallback() -> None:
    config = CacheConfig(entry_weights={"users": EntryWeight(100, ident_base=10)})
    assert config.entry_weight("users") == EntryWeight(100, 1.0, 10)
    assert config.entry_weight("devices") == DEFAULT_ENTRY_WEIGHTS["devices"]
    tier = LocalTier(config, ["users", "devices"])
    assert tier.weight("users", 50) == 150 and tier.ident_weight("users", 5) == 15
    assert tier.weight("devices", 50) == DEFAULT_ENTRY_WEIGHTS["devices"].base + 50
    with pytest.raises(ConfigurationError, match="unknown L1 namespace"):
        config.entry_weight("nope")
    for bad in (dict(base=-1), dict(base=1, per_byte=-0.5), dict(base=1, ident_base=-1)):
        with pytest.raises(ConfigurationError):
            EntryWeight(**bad)  # type: ignore[arg-type]


def test_legacy_entry_overhead_keeps_the_flat_formula() -> None:
    with pytest.warns(DeprecationWarning, match="entry_overhead"):
        config = CacheConfig(entry_overhead=160)
    tier = LocalTier(config, ["users", "flow_states"])
    assert tier.weight("users", 300) == 460
    assert tier.weight("flow_states", 300) == 460
    assert tier.ident_weight("users", 20) == 180
    assert tier.weights("users", [1, 2]) == [161, 162]
    with pytest.raises(ConfigurationError), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        CacheConfig(entry_overhead=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CacheConfig().entry_overhead is None  # the default does not warn


# ----------------------------------------------------------------------------- engine


async def _until(cond: Callable[[], object], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


def _user(i: int, **extra: Any) -> User:
    return User(
        id=f"u{i}", account_id="acc-000042", email=f"agent{i}@acme.example", username=f"agent{i}",
        name=f"Agent Number {i}", extension=f"{1000 + i}", created_at=1_764_000_000_000, **extra,
    )  # fmt: skip


async def test_engine_fills_weigh_by_namespace(cache: CallableCache, raw: redis.Redis) -> None:
    tier = cache.local
    users = tier["users"]
    blobs = {f"u{i}": msgspec.json.encode(_user(i)) for i in range(5)}
    raw.hset(cache.keys.USERS, mapping=blobs)
    raw.hset(cache.keys.USER_IDENTS, mapping={"agent0@acme.example": "u0"})
    # Single fill.
    assert await cache.get_user_by_id("u0") is not None
    assert users.weight == tier.weight("users", len(blobs["u0"]))
    # Batch fills: u0 is an L1 hit and u9 is missing; then every id is found.
    await cache.get_users_batch(["u0", "u1", "u2", "u9"])
    assert users.weight == sum(tier.weights("users", [len(blobs[f"u{i}"]) for i in range(3)]))
    tier.flush("users")
    await cache.get_users_batch(list(blobs))
    assert users.weight == sum(tier.weights("users", list(map(len, blobs.values()))))
    # Ident -> id entry.
    before = users.weight
    assert await cache.get_user_by_ident("agent0@acme.example") is not None
    assert users.weight - before == tier.ident_weight("users", len("agent0@acme.example") + len("u0"))
    # Own write.
    tier.flush("users")
    written = await cache.set_user(_user(3, role="admin"))
    assert users.weight == tier.weight("users", len(msgspec.json.encode(written)))


async def test_event_refresh_weighs_by_namespace(make_cache: Any) -> None:
    a = await make_cache()
    b = await make_cache()
    user = await b.set_user(_user(7))
    await a.get_user_by_id("u7")
    newer = await b.update_user("u7", name="A much longer display name than before")
    await _until(lambda: a.local["users"].peek("u7") == newer)
    assert a.local["users"].weight == a.local.weight("users", len(msgspec.json.encode(newer)))
    assert newer != user


async def test_trunk_ip_and_flow_state_fills_weigh_by_namespace(
    cache: CallableCache, raw: redis.Redis
) -> None:
    tier = cache.local
    raw.set(cache.keys.trunk_ip("203.0.113.17"), "acc-000042")
    assert await cache.get_trunk_account("203.0.113.17") == "acc-000042"
    assert tier["trunks_ip"].weight == tier.weight("trunks_ip", len("203.0.113.17") + len("acc-000042"))

    state = FlowState(id="flow-1", state="ivr_menu", data={"caller": "+442071234567", "attempts": 1})
    stored = await cache.set_flow_state("acc-000042", state)
    blob = raw.get(cache.keys.flow_state("acc-000042", "flow-1"))
    assert isinstance(blob, bytes)
    assert tier["flow_states"].weight == tier.weight("flow_states", len(blob))  # own write
    tier.flush("flow_states")
    assert await cache.get_flow_state("acc-000042", "flow-1") == stored
    assert tier["flow_states"].weight == tier.weight("flow_states", len(blob))  # read fill
