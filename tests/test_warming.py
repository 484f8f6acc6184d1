"""Cache warming over a real redis-server: what is filled, the budget stop, the
progress callback, validation before I/O, the warm-up at connect, and the fence (a
write racing the warm-up wins). Every test runs with both L1 implementations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
import redis

from cal_redis import (
    Account,
    CacheConfig,
    CallableCache,
    ConfigurationError,
    Device,
    Proxy,
    Region,
    User,
    ValidationError,
    WarmPlan,
)
from cal_redis.engine import entities as entities_mod
from cal_redis.remote import Remote
from keyspace import K
from waiting import until

pytestmark = pytest.mark.l1

Factory = Callable[..., Awaitable[CallableCache]]


def js(**fields: Any) -> bytes:
    return msgspec.json.encode(fields)


def seed_tables(raw: redis.Redis, users: int = 50) -> int:
    """Regions, proxies, accounts, users and two accounts' devices; returns the JSON
    bytes of the regions, proxies and accounts."""
    small = {
        "cal:regions": {f"r{i}": js(id=f"r{i}", code=f"c{i}") for i in range(5)},
        "cal:proxies": {f"p{i}": js(id=f"p{i}", host=f"h{i}") for i in range(7)},
        "cal:accounts": {f"acc{i}": js(id=f"acc{i}", name=f"A{i}") for i in range(3)},
    }
    for key, mapping in small.items():
        raw.hset(key, mapping=mapping)  # type: ignore[arg-type]
    raw.hset("cal:users", mapping={f"u{i}": js(id=f"u{i}", account_id="acc1", name=f"n{i}")
                                   for i in range(users)})  # type: ignore[arg-type]
    for acc in ("acc1", "acc2"):
        raw.hset(K.account(acc) + "devices",
                 mapping={f"d{i}": js(id=f"d{i}", account_id=acc) for i in range(4)})  # type: ignore[arg-type]
    return sum(len(v) for m in small.values() for v in m.values())


async def test_warm_small_tables_then_reads_cost_nothing(
    cache: CallableCache, raw: redis.Redis
) -> None:
    nbytes = seed_tables(raw)
    result = await cache.warm()
    assert set(result.namespaces) == {"regions", "proxies", "accounts"}
    assert (result.read, result.stored, result.bytes) == (15, 15, nbytes)
    assert all(n.complete for n in result.namespaces.values())
    assert result.as_dict()["namespaces"]["proxies"]["stored"] == 7
    rt = cache.remote.round_trips
    assert await cache.get_region("r3") == Region(id="r3", code="c3")
    assert await cache.get_proxy("p6") == Proxy(id="p6", host="h6")
    assert await cache.get_account("acc2") == Account(id="acc2", name="A2")
    assert cache.remote.round_trips == rt  # all from L1
    assert len(cache.local["users"]) == 0


async def test_warm_users_by_id_with_progress(cache: CallableCache, raw: redis.Redis) -> None:
    seed_tables(raw, users=2500)
    ids = [f"u{i}" for i in range(0, 2500, 2)] + ["missing-1", "u0"]
    calls: list[tuple[str, int, int | None]] = []
    result = await cache.warm((), users=ids, progress=lambda *a: calls.append(a))
    users = result.namespaces["users"]
    assert (users.read, users.stored, users.complete) == (1250, 1250, True)
    assert users.bytes == sum(len(raw.hget("cal:users", f"u{i}") or b"")
                              for i in range(0, 2500, 2))
    assert calls and calls[-1] == ("users", 1251, 1251)  # duplicates are asked once
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)
    assert cache.local["users"].peek("u1") is None and cache.local["users"].peek("u2498")


async def test_warm_the_whole_users_table_up_to_the_budget(
    make_cache: Factory, raw: redis.Redis
) -> None:
    seed_tables(raw, users=3000)
    cache = await make_cache(CacheConfig().with_budget("users", max_bytes=200_000, ttl=60))
    calls: list[tuple[str, int, int | None]] = []
    result = await cache.warm(["users"], page=500, progress=lambda *a: calls.append(a))
    users = result.namespaces["users"]
    l1 = cache.local["users"]
    assert not users.complete and 0 < users.stored == len(l1) < 3000
    assert l1.weight <= l1.max_weight and l1.evictions == 0  # stopped, did not churn
    assert calls[0][2] == 3000  # HLEN as the total
    # Unbounded, the whole table fits.
    big = await make_cache(CacheConfig().with_budget("users", max_bytes=50 << 20, ttl=60))
    users = (await big.warm(["users"])).namespaces["users"]
    assert (users.read, users.stored, users.complete) == (3000, 3000, True)


async def test_warm_devices_of_named_accounts(cache: CallableCache, raw: redis.Redis) -> None:
    seed_tables(raw)
    result = await cache.warm((), devices=["acc1", "acc9"])
    assert result.namespaces["devices"].stored == 4
    keys = cache.local["devices"].keys()
    assert sorted(keys) == [("acc1", f"d{i}") for i in range(4)]  # type: ignore[type-var]
    assert await cache.get_device("acc1", "d2") == Device(id="d2", account_id="acc1")


async def test_entries_that_do_not_decode_are_skipped(
    cache: CallableCache, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    seed_tables(raw, users=10)
    raw.hset("cal:users", "u3", b"{not json")
    raw.hset("cal:users", "u4", js(id="someone-else"))
    raw.hset("cal:users", "bad id", js(id="bad id"))
    for how in ({"namespaces": ["users"]}, {"namespaces": (), "users": [f"u{i}" for i in range(10)]}):
        cache.local["users"].invalidate_all()
        users = (await cache.warm(**how)).namespaces["users"]  # type: ignore[arg-type]
        assert users.stored == 8, how
        assert cache.local["users"].peek("u3") is None and cache.local["users"].peek("u4") is None
    assert "u3" in caplog.text and "someone-else" in caplog.text


async def test_arguments_are_checked_before_any_io(cache: CallableCache) -> None:
    rt = cache.remote.round_trips
    for kwargs, argument in [
        ({"namespaces": ["devices"]}, "namespaces"),
        ({"namespaces": "regions"}, "namespaces"),
        ({"users": ["u1", "a b"]}, "users[1]"),
        ({"users": "u1"}, "users"),
        ({"devices": ["acc:1"]}, "devices[0]"),
        ({"devices": "acc1"}, "devices"),
        ({"page": 0}, "page"),
        ({"progress": 5}, "progress"),
    ]:
        with pytest.raises(ValidationError) as exc:
            await cache.warm(**kwargs)
        assert exc.value.argument == argument, kwargs
    assert cache.remote.round_trips == rt


async def test_nothing_is_filled_while_sync_is_degraded(
    cache: CallableCache, raw: redis.Redis
) -> None:
    seed_tables(raw)
    cache._ctx.gate.fill_ok = False
    result = await cache.warm()
    assert result.read == 15 and result.stored == 0
    assert all(len(cache.local[n]) == 0 for n in ("regions", "proxies", "accounts"))


async def test_warm_plan_at_connect(make_cache: Factory, raw: redis.Redis) -> None:
    seed_tables(raw)
    plan = WarmPlan(namespaces=("regions", "accounts"), users=("u1", "u2"), devices=("acc2",))
    cache = await make_cache(CacheConfig(warm=plan))
    result = cache.last_warm
    assert result is not None
    assert {k: v.stored for k, v in result.namespaces.items()} == {
        "regions": 5, "accounts": 3, "users": 2, "devices": 4}
    assert cache.local["regions"].peek("r1") == Region(id="r1", code="c1")
    assert (await make_cache()).last_warm is None
    for bad in ({"namespaces": ("flow_states",)}, {"namespaces": "regions"},
                {"users": ["u1"]}, {"devices": "acc1"}):
        with pytest.raises(ConfigurationError):
            WarmPlan(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        CacheConfig(warm=("regions",))  # type: ignore[arg-type]


# -- a write racing the warm-up wins --------------------------------------------------------
async def _written(cache: CallableCache, uid: str, name: str | None) -> None:
    """Wait until ``cache`` has applied the event of a peer's write of ``uid``."""
    users = cache.local["users"]
    if name is None:
        await until(lambda: cache.sync_state.applied >= 1 and users.peek(uid) is None)
    else:
        await until(lambda: getattr(users.peek(uid), "name", None) == name)


@pytest.mark.parametrize("how", ["scan", "ids"])
@pytest.mark.parametrize("writer", ["peer", "own"])
async def test_a_write_racing_the_warm_up_wins(
    make_cache: Factory, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch, how: str,
    writer: str,
) -> None:
    seed_tables(raw, users=20)
    cache, peer = await make_cache(), await make_cache()
    w = peer if writer == "peer" else cache
    fired: list[int] = []

    async def race() -> None:
        """After Redis answered a page and before it is filled: u5 renamed, u6 deleted."""
        if fired:
            return
        fired.append(1)
        await w.set_user(User(id="u5", account_id="acc1", name="renamed"))
        await w.delete_user("u6")
        if w is peer:
            await _written(cache, "u5", "renamed")
            await until(lambda: cache.sync_state.applied >= 2)

    if how == "scan":
        real_scan = entities_mod.scan_entries

        async def scan(*args: Any, **kwargs: Any) -> AsyncIterator[list[bytes]]:
            async for page in real_scan(*args, **kwargs):
                await race()
                yield page

        monkeypatch.setattr(entities_mod, "scan_entries", scan)
        result = await cache.warm(["users"])
    else:
        real_hmget = Remote.hmget

        async def hmget(self: Remote, *args: Any) -> Any:
            got = await real_hmget(self, *args)
            await race()
            return got

        monkeypatch.setattr(Remote, "hmget", hmget)
        result = await cache.warm((), users=[f"u{i}" for i in range(20)])
    assert fired
    users = cache.local["users"]
    held = users.peek("u5")
    assert held is None or held.name == "renamed"  # never the value the warm-up read
    assert users.peek("u6") is None  # a deleted user is not brought back
    assert await cache.get_user_by_id("u6") is None
    assert (await cache.get_user_by_id("u5")).name == "renamed"  # type: ignore[union-attr]
    # The other users were filled; the two raced ones were refused.
    assert result.namespaces["users"].read == 20
    assert result.namespaces["users"].stored == 18
    assert users.stale_fills >= 2


# -- python -m cal_redis warm -----------------------------------------------------------------
def test_warm_command(
    redis_url: str, raw: redis.Redis, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from cal_redis.__main__ import main

    seed_tables(raw, users=30)
    assert main(["warm", "--url", redis_url]) == 0
    out = capsys.readouterr().out
    assert "regions" in out and "proxies" in out and "accounts" in out and "users" not in out
    ids = tmp_path / "ids.txt"
    ids.write_text("u1\nu2\n\nu-missing\n")
    assert main(["warm", "--url", redis_url, "--namespaces", "", "--users-file", str(ids),
                 "--devices", "acc1", "--json"]) == 0
    import json

    result = json.loads(capsys.readouterr().out)
    assert result["namespaces"]["users"]["stored"] == 2
    assert result["namespaces"]["devices"]["stored"] == 4
    assert main(["warm", "--url", redis_url, "--namespaces", "regions", "--all-users",
                 "--budget-mb", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "no: budget full" in out
    assert main(["warm", "--url", redis_url, "--namespaces", "flow_states"]) == 1
    assert "cannot be warmed" in capsys.readouterr().err
    assert main(["warm", "--url", redis_url, "--users-file", str(tmp_path / "nope")]) == 1
    with pytest.raises(SystemExit):
        main(["warm", "--help"])
    assert "HSCAN" in capsys.readouterr().out
