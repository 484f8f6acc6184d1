"""Selective invalidation over a real redis-server, on two instances: ``invalidate``
drops exactly the named entries, ``invalidate_account`` exactly one tenant's entries,
and a ``Sync`` of an account-scoped kind on an account channel only that account's.

Each test runs with both L1 implementations (the events are applied to the L1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import msgspec
import pytest
import redis

from cal_redis import (
    Account,
    CallableCache,
    Device,
    Event,
    FlowState,
    Region,
    User,
    ValidationError,
)
from cal_redis.api.invalidation import INVALIDATE_BATCH
from waiting import until

pytestmark = pytest.mark.l1

Factory = Callable[..., Awaitable[CallableCache]]
A, B = "acc1", "acc2"


class Seen:
    """The events one instance has applied (handlers run after L1), by type."""

    def __init__(self, cache: CallableCache) -> None:
        self.types: list[str] = []
        cache.add_event_handler(lambda ev: self.types.append(ev.type))

    async def wait(self, type_: str, count: int = 1) -> None:
        await until(lambda: self.types.count(type_) >= count, what=f"{count} x {type_}")


async def seed(a: CallableCache) -> None:
    """Two tenants' data of every cache-first kind, written through instance ``a``."""
    await a.set_region(Region(id="r1", code="euw"))
    for acc in (A, B):
        await a.set_account(Account(id=acc, domain=f"{acc}.example", code=acc.upper()))
        for i in (1, 2):
            await a.set_user(User(id=f"{acc}-u{i}", account_id=acc, email=f"u{i}@{acc}.io"))
            await a.set_device(acc, Device(id=f"d{i}", sip_username=f"sip{i}", mac=f"m{i}"))
            await a.set_flow_state(acc, FlowState(id=f"f{i}", state="menu"))
    await a.set_trunk_ip("192.0.2.1", A)
    await a.set_trunk_ip("192.0.2.2", B)


async def warm_reads(b: CallableCache) -> None:
    """Instance ``b`` caches every entry (and ident mapping) of the seed."""
    await b.get_region("r1")
    await b.get_region_by_ident("euw")
    for acc in (A, B):
        await b.get_account(acc)
        await b.get_account_by_ident(f"{acc}.example")
        for i in (1, 2):
            await b.get_user_by_id(f"{acc}-u{i}")
            await b.get_user_by_ident(f"u{i}@{acc}.io")
            await b.get_device(acc, f"d{i}")
            await b.get_device_by_ident(acc, f"sip{i}")
            await b.get_flow_state(acc, f"f{i}")
    await b.get_trunk_account("192.0.2.1")
    await b.get_trunk_account("192.0.2.2")


def snapshot(cache: CallableCache) -> dict[tuple[str, Hashable], Any]:
    """Every L1 entry of every namespace: (namespace, key) -> the object held."""
    out = {}
    for ns in cache.local.namespaces:
        l1 = cache.local[ns]
        held = l1.keys()
        for key in held:
            out[(ns, key)] = l1.peek(key)
    return out


def belongs_to(entry: tuple[str, Hashable], value: Any, account: str) -> bool:
    """Whether an L1 entry is ``account``'s (the test's own reading of the seed)."""
    ns, key = entry
    if ns in ("devices", "flow_states"):
        return isinstance(key, tuple) and key[0] == account
    if ns == "users":
        return (isinstance(key, str) and key.startswith(account + "-")) or (
            isinstance(value, str) and value.startswith(account + "-"))
    if ns == "accounts":
        return key == account or value == account
    if ns == "trunks_ip":
        return value == account
    return False


@pytest.fixture
async def pair(make_cache: Factory, quiesce: Any) -> tuple[CallableCache, CallableCache]:
    a = await make_cache()
    await seed(a)
    quiesce()  # B subscribes after every seed event has gone by
    b = await make_cache()
    await warm_reads(b)
    return a, b


def stats_ok(cache: CallableCache) -> None:
    assert cache.sync_state.malformed == 0


async def test_invalidate_drops_only_the_named_users(
    pair: tuple[CallableCache, CallableCache],
) -> None:
    a, b = pair
    seen = Seen(b)
    before = snapshot(b)
    users = b.local["users"]
    assert users.peek(("\x00ident", "u1@acc1.io")) == "acc1-u1"
    assert await a.invalidate("User", ["acc1-u1", "acc2-u2"]) >= (0 if a.remote.is_cluster else 1)
    await seen.wait("UserInvalidate")
    after = snapshot(b)
    dropped = set(before) - set(after)
    assert dropped == {
        ("users", "acc1-u1"), ("users", ("\x00ident", "u1@acc1.io")),
        ("users", "acc2-u2"), ("users", ("\x00ident", "u2@acc2.io")),
    }
    # Everything else is the very object held before.
    assert all(after[k] is before[k] for k in after)
    stats_ok(b)
    # The next read goes to Redis and caches again.
    assert (await b.get_user_by_id("acc1-u1")) is not None
    assert users.peek("acc1-u1") is not None


async def test_invalidate_device_ids_of_one_account(
    pair: tuple[CallableCache, CallableCache],
) -> None:
    a, b = pair
    seen = Seen(b)
    before = snapshot(b)
    await a.invalidate("devices", ["d1"], account_id=A)  # by namespace name
    await seen.wait("DeviceInvalidate")
    dropped = set(before) - set(snapshot(b))
    assert dropped == {("devices", (A, "d1")), ("devices", (A, "\x00ident", "sip1"))}
    # The writer dropped its own copy too (it had one from the write).
    assert a.local["devices"].peek((A, "d1")) is None
    assert a.local["devices"].peek((B, "d1")) is not None
    stats_ok(b)


async def test_invalidate_trunk_ips_and_flow_states(
    pair: tuple[CallableCache, CallableCache],
) -> None:
    a, b = pair
    seen = Seen(b)
    before = snapshot(b)
    await a.invalidate("TrunkIp", ["192.0.2.1"])
    await a.invalidate("FlowState", ["f2"], account_id=B)
    await seen.wait("TrunkIpInvalidate")
    await seen.wait("FlowStateInvalidate")
    dropped = set(before) - set(snapshot(b))
    assert dropped == {("trunks_ip", "192.0.2.1"), ("flow_states", (B, "f2"))}
    stats_ok(b)


async def test_invalidate_canonicalises_ipv6(make_cache: Factory) -> None:
    a, b = await make_cache(), await make_cache()
    seen = Seen(b)
    await a.set_trunk_ip("2001:db8::1", A)
    assert await b.get_trunk_account("2001:db8::1") == A
    await a.invalidate("TrunkIp", ["2001:0db8::0001"])
    await seen.wait("TrunkIpInvalidate")
    assert b.local["trunks_ip"].peek("2001:db8::1") is None


async def test_a_long_list_is_sent_in_batches(make_cache: Factory, raw: redis.Redis) -> None:
    a, b = await make_cache(), await make_cache()
    seen = Seen(b)
    n = INVALIDATE_BATCH * 2 + 5
    users = b.local["users"]
    for i in range(n):
        raw.hset("cal:users", f"u{i}", msgspec.json.encode({"id": f"u{i}"}))
    ids = [f"u{i}" for i in range(n)]
    await b.get_users_batch(ids)
    raw.hset("cal:users", "keep", msgspec.json.encode({"id": "keep"}))
    await b.get_user_by_id("keep")
    assert len(users) == n + 1
    await a.invalidate("users", ids + ids[:10])  # duplicates are sent once
    await seen.wait("UserInvalidate", 3)
    assert users.keys() == ["keep"]
    assert seen.types.count("UserInvalidate") == 3


async def test_arguments_are_checked_before_any_io(make_cache: Factory) -> None:
    a = await make_cache()
    rt = a.remote.round_trips
    bad: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
        (("Nope", ["u1"]), {}, "kind"),
        (("User", ["u1", "bad id"]), {}, "ids[1]"),
        (("User", "u1"), {}, "ids"),
        (("User", ["u1"]), {"account_id": A}, "account_id"),
        (("Device", ["d1"]), {}, "account_id"),
        (("Device", ["d1"]), {"account_id": "a:b"}, "account_id"),
        (("TrunkIp", ["not-an-ip"]), {}, "ids[0]"),
    ]
    for args, kwargs, argument in bad:
        with pytest.raises(ValidationError) as exc:
            await a.invalidate(*args, **kwargs)
        assert exc.value.argument == argument, (args, kwargs)
    with pytest.raises(ValidationError):
        await a.invalidate_account("a*b")
    assert a.remote.round_trips == rt
    assert await a.invalidate("User", []) == 0  # nothing to send
    assert a.remote.round_trips == rt


async def test_invalidate_account_drops_that_tenant_everywhere(
    pair: tuple[CallableCache, CallableCache],
) -> None:
    a, b = pair
    seen = Seen(b)
    before = snapshot(b)
    mine = {k for k, v in before.items() if belongs_to(k, v, A)}
    # Every namespace holding tenant data holds some of A's (the check is not vacuous).
    assert {ns for ns, _ in mine} == {"devices", "flow_states", "users", "accounts", "trunks_ip"}
    # Subscribers that got it (on a cluster: those on the node that ran the PUBLISH).
    assert await a.invalidate_account(A) >= (0 if a.remote.is_cluster else 1)
    await seen.wait("TenantInvalidate")
    after = snapshot(b)
    assert set(before) - set(after) == mine
    assert all(after[k] is before[k] for k in after)  # B's entries and regions untouched
    assert not any(belongs_to(k, v, A) for k, v in after.items())
    # The publishing instance dropped its own copies of A's entries at once.
    own = snapshot(a)
    assert not any(belongs_to(k, v, A) for k, v in own.items())
    assert any(belongs_to(k, v, B) for k, v in own.items())
    stats_ok(b)


async def test_invalidate_account_fences_fills_in_flight(make_cache: Factory) -> None:
    a, b = await make_cache(), await make_cache()
    seen = Seen(b)
    devices = b.local["devices"]
    token = devices.begin_fill()  # a fill that read Redis before the event
    try:
        await a.invalidate_account(A)
        await seen.wait("TenantInvalidate")
        assert not devices.set_if_fresh((A, "d9"), Device(id="d9"), 10, token)
    finally:
        devices.end_fill()
    assert devices.peek((A, "d9")) is None


async def test_scoped_sync_on_an_account_channel_drops_only_that_account(
    pair: tuple[CallableCache, CallableCache], raw: redis.Redis,
) -> None:
    _, b = pair
    seen = Seen(b)
    before = snapshot(b)
    raw.publish(b.keys.account_events(A), b'{"type":"DeviceSync"}')
    raw.publish(b.keys.account_events(B), b'{"type":"FlowStateSync"}')
    await seen.wait("DeviceSync")
    await seen.wait("FlowStateSync")
    dropped = set(before) - set(snapshot(b))
    assert dropped == {k for k in before if (k[0] == "devices" and k[1][0] == A)
                       or (k[0] == "flow_states" and k[1][0] == B)}
    stats_ok(b)
    # A global kind's Sync still drops its whole namespace.
    raw.publish("cal:events", b'{"type":"UserSync"}')
    await seen.wait("UserSync")
    assert len(b.local["users"]) == 0
    assert len(b.local["devices"]) > 0


async def test_events_that_name_nothing_valid(
    pair: tuple[CallableCache, CallableCache], raw: redis.Redis,
) -> None:
    _, b = pair
    seen = Seen(b)
    before = snapshot(b)
    # TenantInvalidate only on the tenant's channel: on cal:events it names no account.
    raw.publish("cal:events", b'{"type":"TenantInvalidate","id":"acc1"}')
    # An account channel can only name itself: account_id of another is refused.
    raw.publish(b.keys.account_events(B), b'{"type":"TenantInvalidate","account_id":"acc1"}')
    # Bad ids are counted as malformed; the valid ones of the batch are still dropped.
    raw.publish("cal:events", b'{"type":"UserInvalidate","ids":["acc1-u1","bad id"]}')
    raw.publish("cal:events", b'{"type":"Barrier"}')
    await seen.wait("Barrier")
    assert b.sync_state.malformed == 3
    assert set(before) - set(snapshot(b)) == {
        ("users", "acc1-u1"), ("users", ("\x00ident", "u1@acc1.io"))}


async def test_unknown_to_an_older_reader(make_cache: Factory, raw: redis.Redis) -> None:
    """The new events are ordinary events: a subscriber that does not apply them
    (an application stream) receives them like any other."""
    a = await make_cache()
    stream = a.events(account_id=A)
    await a.invalidate("Device", ["d1", "d2"], account_id=A)
    await a.invalidate_account(A)
    first = await asyncio.wait_for(anext(stream), 3)
    second = await asyncio.wait_for(anext(stream), 3)
    assert (first.type, first.ids, first.account_id) == ("DeviceInvalidate", ("d1", "d2"), A)
    assert (second.type, second.id, second.account_id) == ("TenantInvalidate", A, A)
    assert msgspec.json.decode(msgspec.json.encode(first))["ids"] == ["d1", "d2"]
    # Events without ids keep their wire form: the field is omitted.
    assert b"ids" not in msgspec.json.encode(Event(type="UserUpdate", id="u1"))
