"""Account data (DDIs, trunks, hooks, assets, addresses) over a real redis-server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest
import redis

from cal_redis import (
    Address,
    Asset,
    CallableCache,
    Ddi,
    Hook,
    SerializationError,
    Trunk,
    ValidationError,
)
from cal_redis.models import Model
from keyspace import K
from redis_stats import assert_rejected_before_io, data_keys

A = "acc1"


# (singular, plural, model, two valid ids, a sample field to change)
KINDS: list[tuple[str, str, type[Model], tuple[str, str], dict[str, Any]]] = [
    ("ddi", "ddis", Ddi, ("+441234567890", "+14155550100"), {"description": "Main line"}),
    ("trunk", "trunks", Trunk, ("t1", "t2"), {"host": "sip.carrier.net", "ips": ["10.0.0.1"]}),
    ("hook", "hooks", Hook, ("h1", "h2"), {"url": "https://x.io/hook", "events": ["call"]}),
    ("asset", "assets", Asset, ("moh-1", "prompt-2"), {"kind": "moh", "size": 1024}),
    ("address", "addresses", Address, ("addr-1", "addr-2"), {"city": "London"}),
]
IDS = [k[0] for k in KINDS]


@pytest.mark.parametrize(("one", "many", "model", "ids", "change"), KINDS, ids=IDS)
async def test_crud(cache: CallableCache, raw: redis.Redis, one: str, many: str,
                    model: type[Model], ids: tuple[str, str], change: dict[str, Any]) -> None:
    get, get_all = getattr(cache, f"get_{one}"), getattr(cache, f"get_{many}")
    put, delete = getattr(cache, f"set_{one}"), getattr(cache, f"delete_{one}")
    batch = getattr(cache, f"get_{many}_batch")
    hkey = K.account(A) + many
    assert await get(A, ids[0]) is None
    assert await get_all(A) == []
    x = await put(A, model(id=ids[1], **change))  # type: ignore[call-arg]
    y = await put(A, model(id=ids[0]))  # type: ignore[call-arg]
    assert x.account_id == A and y.account_id == A
    assert await get(A, ids[1]) == x
    assert await get_all(A) == sorted([x, y], key=lambda v: v.id)
    assert await batch(A, [ids[1], "nope", ids[0]]) == [x, None, y]
    assert await batch(A, []) == []
    stored = json.loads(raw.hget(hkey, ids[1]))
    assert stored["id"] == ids[1] and all(stored[k] == v for k, v in change.items())
    assert await get("acc2", ids[1]) is None  # per account
    assert await delete(A, ids[1]) is True
    assert await delete(A, ids[1]) is False
    assert await get_all(A) == [y]


@pytest.mark.parametrize(("one", "many", "model", "ids", "change"), KINDS, ids=IDS)
async def test_set_keeps_fields_of_other_services(
    cache: CallableCache, raw: redis.Redis, one: str, many: str, model: type[Model],
    ids: tuple[str, str], change: dict[str, Any],
) -> None:
    hkey = K.account(A) + many
    raw.hset(hkey, ids[0], json.dumps({"id": ids[0], "account_id": A, "billing_ref": "X-1"}))
    out = await getattr(cache, f"set_{one}")(A, model(id=ids[0], **change))  # type: ignore[call-arg]
    stored = json.loads(raw.hget(hkey, ids[0]))
    assert stored["billing_ref"] == "X-1"
    assert msgspec.json.decode(raw.hget(hkey, ids[0]), type=model) == out


@pytest.mark.parametrize(("one", "many", "model", "ids", "change"), KINDS, ids=IDS)
async def test_owner_and_type_checked(
    cache: CallableCache, raw: redis.Redis, one: str, many: str, model: type[Model],
    ids: tuple[str, str], change: dict[str, Any],
) -> None:
    put = getattr(cache, f"set_{one}")
    with pytest.raises(ValidationError) as info:
        await put(A, model(id=ids[0], account_id="acc2"))  # type: ignore[call-arg]
    assert info.value.argument == "account_id"
    other = Ddi if model is not Ddi else Trunk
    with pytest.raises(ValidationError) as info:
        await put(A, other(id=ids[0]))
    assert info.value.argument == one
    with pytest.raises(ValidationError) as info:
        await put(A, model(id="bad:id"))  # type: ignore[call-arg]
    assert info.value.argument == f"{one}_id"
    assert data_keys(raw) == []


async def test_concurrent_writers_of_known_fields_keep_foreign_ones(
    make_cache: Any, raw: redis.Redis
) -> None:
    caches = [await make_cache() for _ in range(3)]
    hkey = (K.account(A) + "trunks")
    raw.hset(hkey, "t1", json.dumps({"id": "t1", "carrier_contract": {"n": 7}}))
    await asyncio.gather(*(
        caches[i % 3].set_trunk(A, Trunk(id="t1", name=f"n{i}", port=5060 + i)) for i in range(40)
    ))
    stored = json.loads(raw.hget(hkey, "t1"))
    assert stored["carrier_contract"] == {"n": 7}
    assert stored["port"] == 5060 + int(stored["name"][1:])  # one writer's whole object


async def test_corrupt_stored_value(cache: CallableCache, raw: redis.Redis) -> None:
    raw.hset((K.account(A) + "hooks"), "h1", "{not json")
    with pytest.raises(SerializationError) as info:
        await cache.get_hook(A, "h1")
    assert (K.account("acc1") + "hooks") in str(info.value)
    with pytest.raises(SerializationError):
        await cache.set_hook(A, Hook(id="h1"))  # cannot merge over it: refused
    assert raw.hget((K.account(A) + "hooks"), "h1") == b"{not json"


@pytest.mark.parametrize(
    ("method", "args", "argument"),
    [
        ("get_ddi", (A, "+44 1234"), "ddi_id"),
        ("get_ddi", ("a:b", "+441234567890"), "account_id"),
        ("get_ddis", ("",), "account_id"),
        ("get_ddis_batch", (A, "+44"), "ids"),
        ("get_ddis_batch", (A, ["+44", "x*"]), "ids[1]"),
        ("set_ddi", (A, Ddi(id="")), "ddi_id"),
        ("delete_ddi", (A, "+44{1}"), "ddi_id"),
        ("get_trunk", (A, "t?"), "trunk_id"),
        ("set_trunk", ("a b", Trunk(id="t1")), "account_id"),
        ("delete_trunk", (A, None), "trunk_id"),
        ("get_hooks", ("a]",), "account_id"),
        ("get_hook", (A, "h\n"), "hook_id"),
        ("get_asset", (A, "a:1"), "asset_id"),
        ("delete_asset", (A, ""), "asset_id"),
        ("get_address", (A, "x y"), "address_id"),
        ("get_addresses_batch", (A, [1]), "ids[0]"),
        ("set_address", (A, Address(id="a*")), "address_id"),
    ],
)
async def test_bad_arguments_raise_before_any_command(
    cache: CallableCache, raw: redis.Redis, method: str, args: tuple[Any, ...], argument: str
) -> None:
    await assert_rejected_before_io(cache, raw, method, args, argument)
