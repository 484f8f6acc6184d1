"""Backup and restore over a real redis-server: every key type of the layout round-trips
byte for byte (both key styles, streams included), a tenant backup holds no other
tenant's data in any family, corrupt and truncated files apply nothing, a restore
into a server holding other data leaves it alone, and running caches hear about it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from cal_redis import (
    Account,
    Address,
    AgentState,
    AgentStatus,
    Asset,
    BackupFormatError,
    CacheConfig,
    CallableCache,
    Conversation,
    Ddi,
    Device,
    FlowState,
    Hook,
    Proxy,
    QueueMeta,
    Region,
    Trunk,
    User,
    ValidationError,
)
from cal_redis.__main__ import main
from cal_redis.backup import Layout, Reader, Record, Writer, backup, families, restore
from cal_redis.keys import KeyBuilder
from waiting import until

Factory = Callable[..., Awaitable[CallableCache]]
BLOB = bytes(range(256))  # not UTF-8: stored as base64 in the file


async def seed(cache: CallableCache, raw: redis.Redis, accounts: tuple[str, ...]) -> None:
    """Every family of the layout, written through the library, for each account."""
    await cache.set_region(Region(id="eu-west", code="euw", name="Europe West"))
    await cache.set_proxy(Proxy(id="px1", region_id="eu-west", host="sip.example"))
    kb = cache.keys
    for n, a in enumerate(accounts):
        await cache.set_account(Account(id=a, domain=f"{a}.example", code=f"C{n}"))
        for i in range(3):
            await cache.set_user(User(id=f"{a}-u{i}", account_id=a, email=f"u{i}@{a}.io",
                                      extension=f"{n}{i}"))
        await cache.set_device(a, Device(id="d1", sip_username=f"sip-{a}", mac=f"aa:{n}"))
        await cache.set_trunk_ip(f"192.0.2.{n + 1}", a)
        await cache.set_trunk_ip(f"2001:db8::{n + 1}", a)
        await cache.create_session(a, f"{a}-u0", ttl=3600, data={"ua": "soft"})
        await cache.set_agent_status(a, AgentStatus(user_id=f"{a}-u0", name="Ann",
                                                    status=AgentState.AVAILABLE,
                                                    registered=True))
        await cache.queue_add(a, "support", "call-1")
        await cache.queue_add(a, "support", "call-vip", priority=0.5)
        await cache.set_queue_meta(a, QueueMeta(name="support", max_size=5))
        await cache.set_conversation(a, Conversation(id="c1", participants=["u"]), ttl=600)
        await cache.set_flow_state(a, FlowState(id="f1", state="menu"), ttl=1800)
        await cache.set_ddi(a, Ddi(id="+441234567890", destination_id="support"))
        await cache.set_trunk(a, Trunk(id="t1", host="carrier.example"))
        await cache.set_hook(a, Hook(id="h1", url="https://example.com/h"))
        await cache.set_asset(a, Asset(id="as1", name="logo"))
        await cache.set_address(a, Address(id="ad1", city="Paris"))
        await cache.add_connected_agent(a, f"{a}-u0", f"conn-{a}", "node-1")
        # The account's event log (written above by every write) is a stream; another
        # stream with set ids, a list and binary data under the account, in keys no
        # family of the builder knows: copied by their type.
        assert raw.type(kb.account_log(a)) == b"stream"
        log = kb.account(a) + "archive"
        raw.xadd(log, {"type": "UserUpdate", "id": f"{a}-u0"}, id="1700000000000-0")
        raw.execute_command("XADD", log, "1700000000001-5", "f", "x", "f", BLOB)
        raw.xadd(log, {"gone": "1"}, id="1700000000002-0")
        raw.xdel(log, "1700000000002-0")  # the last generated id outlives its entry
        raw.rpush(kb.account(a) + "recent", b"one", BLOB, b"three")
        raw.hset(kb.devices(a), BLOB, BLOB)
    raw.set("cal:meta:layout", kb.style.encode())  # the key-style marker
    raw.xadd("cal:log", {"a": "1"}, id="5-1")  # a global stream


def snapshot(raw: redis.Redis, pattern: str = "cal:*") -> dict[bytes, tuple[Any, ...]]:
    """Every matching key: (type, value as Redis holds it, has a TTL)."""
    out: dict[bytes, tuple[Any, ...]] = {}
    for key in raw.scan_iter(match=pattern, count=1000):
        t = raw.type(key).decode()
        if t == "string":
            value: Any = raw.get(key)
        elif t == "hash":
            value = raw.hgetall(key)
        elif t == "set":
            value = raw.smembers(key)
        elif t == "zset":
            value = raw.zrange(key, 0, -1, withscores=True)
        elif t == "list":
            value = raw.lrange(key, 0, -1)
        else:
            entries = raw.execute_command("XRANGE", key, "-", "+")
            info = raw.execute_command("XINFO", "STREAM", key)
            last = dict(zip(info[::2], info[1::2], strict=True))[b"last-generated-id"] \
                if isinstance(info, list) else info[b"last-generated-id"]
            value = ([(i, list(fv)) for i, fv in entries], last)
        out[key] = (t, value, raw.pttl(key) > 0)
    return out


def same_ttls(raw: redis.Redis, keys: Any, before: dict[bytes, int], slack_ms: int) -> None:
    for key in keys:
        was = before[key]
        now = raw.pttl(key)
        if was < 0:
            assert now == -1, key
        else:
            assert was - slack_ms <= now <= was, (key, was, now)


def records(path: Path) -> list[Record]:
    return list(Reader(str(path)).records())


@pytest.fixture(params=[False, True], ids=["plain", "cluster"])
def cluster(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


# -- round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cal.jsonl", "cal.jsonl.gz"])
async def test_every_key_type_round_trips_byte_for_byte(
    make_cache: Factory, raw: redis.Redis, tmp_path: Path, cluster: bool, name: str,
) -> None:
    cache = await make_cache(CacheConfig(cluster=cluster))
    await seed(cache, raw, ("acc1", "acc2"))
    # Large keys: read and restored in parts (staged, renamed into place).
    raw.hset("cal:users", mapping={f"bulk{i}": msgspec.json.encode({"id": f"bulk{i}"})
                                   for i in range(2500)})  # type: ignore[arg-type]
    raw.sadd(cache.keys.agents_registered("acc1"), *[f"m{i}" for i in range(1500)])
    raw.zadd(cache.keys.queue("acc1", "big"), {f"i{i}": i / 7 for i in range(1200)})
    raw.rpush(cache.keys.account("acc1") + "long", *[f"v{i}" for i in range(2100)])
    for i in range(1300):
        raw.xadd("cal:log", {"n": str(i)})
    raw.set(cache.keys.account("acc2") + "blob", BLOB * 5000)  # 1.25 MB: read in ranges
    raw.pexpire(cache.keys.account("acc2") + "blob", 90_000)
    raw.set("other:key", b"not ours")
    before = snapshot(raw)
    ttls = {k: raw.pttl(k) for k in before}
    assert {v[0] for v in before.values()} == {"string", "hash", "set", "zset", "list", "stream"}
    assert sum(1 for v in before.values() if v[2]) >= 6  # sessions, flow states, conversations...

    path = tmp_path / name
    summary = await backup(cache.remote, str(path), page=500)
    assert summary.keys == len(before)
    assert not (tmp_path / (name + ".partial")).exists()
    if name.endswith(".gz"):
        assert gzip.decompress(path.read_bytes()).startswith(b'{"')
    assert summary.families["users"].entries == 2500 + 6
    assert "other" in summary.families  # the stream, list and marker keys
    assert sum(1 for r in records(path) if r.key == b"cal:users") > 1  # in parts

    raw.flushall()
    raw.set("other:key", b"untouched")
    restored = await restore(cache.remote, str(path))
    assert restored.total("created") == len(before) and not restored.errors
    assert snapshot(raw) == before
    same_ttls(raw, before, ttls, slack_ms=60_000)
    assert raw.get("other:key") == b"untouched"
    assert raw.keys("cal-restore:*") == []  # no staging key left

    # Idempotent: again, in both modes, the same data.
    again = await restore(cache.remote, str(path))
    assert again.total("skipped") == len(before) and again.total("created") == 0
    assert snapshot(raw) == before
    for _ in range(2):
        replaced = await restore(cache.remote, str(path), mode="replace")
        assert replaced.total("replaced") == len(before)
        assert snapshot(raw) == before
    same_ttls(raw, before, ttls, slack_ms=60_000)


async def test_every_family_of_the_builder_is_recognised(cluster: bool) -> None:
    fams = {f.name for f in families(cluster)}
    # The builder's public key methods and constants, but no channel or prefix.
    assert {"USERS", "USER_IDENTS", "devices", "session", "queue", "trunk_ip",
            "flow_state", "ws_connections"} <= fams
    assert not {"EVENTS", "account_events", "account", "account_events_pattern"} & fams
    layout = Layout()
    assert layout.family_name("cal:account:idents") == "ACCOUNT_IDENTS"
    assert layout.owner("cal:account:idents") is None
    assert layout.owner("cal:account:idents:devices") == "idents"
    assert layout.owner("cal:account:{idents}:devices") == "idents"
    assert layout.owner("cal:account:idents:future:thing") == "idents"
    assert layout.owner("cal:trunk:2001:db8::1") is None
    assert layout.family_name("cal:meta:layout") == "other"  # metadata, copied by its type


# -- tenant backups ------------------------------------------------------------------------
#: The ident hashes' names in either key style.
_STYLES_ACCOUNT_IDENTS = {KeyBuilder(cluster=c).ACCOUNT_IDENTS for c in (False, True)}
_STYLES_USER_IDENTS = {KeyBuilder(cluster=c).USER_IDENTS for c in (False, True)}


def owned_by(layout: Layout, rec: Record, account: str, users: set[bytes]) -> bool:
    """The test's own reading of whose a record is, entry by entry."""
    name = rec.key.decode("utf-8", "replace")
    if not rec.fields:
        if name.startswith("cal:trunk:"):
            return rec.value == account.encode()
        return layout.owner(name) == account
    for field, value in rec.items:
        if name == "cal:accounts":
            ok = field == account.encode()
        elif name in _STYLES_ACCOUNT_IDENTS:
            ok = value == account.encode()
        elif name in _STYLES_USER_IDENTS:
            ok = value in users
        else:  # users, ws connections: JSON naming the account
            ok = msgspec.json.decode(value).get("account_id") == account
        if not ok:
            return False
    return True


async def test_a_tenant_backup_holds_only_that_tenant(
    make_cache: Factory, raw: redis.Redis, tmp_path: Path, cluster: bool,
) -> None:
    cache = await make_cache(CacheConfig(cluster=cluster))
    tenants = ("acc1", "acc2", "idents")  # "idents" must not pull in cal:account:idents
    await seed(cache, raw, tenants)
    layout = Layout()
    ui, ai = cache.keys.USER_IDENTS.encode(), cache.keys.ACCOUNT_IDENTS.encode()
    for account in tenants:
        path = tmp_path / f"{account}.jsonl"
        summary = await backup(cache.remote, str(path), accounts=[account])
        assert summary.accounts == [account]
        recs = records(path)
        users = {f"{account}-u{i}".encode() for i in range(3)}
        assert all(owned_by(layout, r, account, users) for r in recs), account
        whole = {r.key for r in recs if not r.fields}
        shared = {r.key for r in recs if r.fields}
        # Not vacuous: every family holding this tenant's data is in its backup.
        prefix = cache.keys.account(account).encode()
        assert {k for k in snapshot(raw) if k.startswith(prefix)} <= whole
        assert {b"cal:users", ui, b"cal:accounts", ai,
                b"cal:ws:connections"} == shared
        assert {k for k in whole if k.startswith(b"cal:trunk:")} == {
            f"cal:trunk:192.0.2.{tenants.index(account) + 1}".encode(),
            f"cal:trunk:2001:db8::{tenants.index(account) + 1}".encode()}
        assert ai not in whole and b"cal:regions" not in whole
        per_table = {r.key: len(r.items) for r in recs if r.fields}
        assert per_table[b"cal:users"] == 3 and per_table[ui] == 6
        assert per_table[b"cal:accounts"] == 1 and per_table[ai] == 2


async def test_a_tenant_restore_leaves_other_data_alone(
    make_cache: Factory, raw: redis.Redis, tmp_path: Path, cluster: bool,
) -> None:
    cache = await make_cache(CacheConfig(cluster=cluster))
    await seed(cache, raw, ("acc1", "acc2"))
    ui, ai = cache.keys.USER_IDENTS.encode(), cache.keys.ACCOUNT_IDENTS.encode()
    path = tmp_path / "acc1.jsonl"
    await backup(cache.remote, str(path), accounts=["acc1"])
    mine = {r.key for r in records(path) if not r.fields}
    full = snapshot(raw)
    # The target: acc1's keys lost, acc1's user u2 edited by hand, acc2 changed since.
    for key in mine:
        raw.delete(key)
    raw.hdel("cal:users", "acc1-u0")
    raw.hdel(cache.keys.USER_IDENTS, "u0@acc1.io", "00")
    raw.hset("cal:users", "acc1-u2", b'{"id":"acc1-u2","account_id":"acc1","name":"fixed"}')
    await cache.set_user(User(id="acc2-u9", account_id="acc2", email="new@acc2.io"))
    raw.set("unrelated", b"x")
    others = {k: v for k, v in snapshot(raw).items() if k not in mine}

    summary = await restore(cache.remote, str(path))
    after = snapshot(raw)
    for key in mine:
        assert after[key] == full[key], key
    assert after[b"cal:users"][1][b"acc1-u0"] == full[b"cal:users"][1][b"acc1-u0"]
    assert b"fixed" in after[b"cal:users"][1][b"acc1-u2"]  # skip-existing: field kept
    assert after[b"cal:users"][1][b"acc2-u9"]  # the other tenant's new user is kept
    for key, value in others.items():
        if key not in (b"cal:users", ui, b"cal:accounts",
                       ai, b"cal:ws:connections"):
            assert after[key] == value, key
    for key in (b"cal:users", ui):  # every field not of acc1 unchanged
        assert {f: v for f, v in after[key][1].items() if b"acc1" not in f + v} == \
               {f: v for f, v in others[key][1].items() if b"acc1" not in f + v}
    assert summary.total("fields") == 1 + 2  # acc1-u0 and its two idents
    assert raw.get("unrelated") == b"x"
    # --mode replace writes the tenant's fields back, and still only those.
    await restore(cache.remote, str(path), mode="replace")
    assert raw.hget("cal:users", "acc1-u2") == full[b"cal:users"][1][b"acc1-u2"]
    assert raw.hget("cal:users", "acc2-u9") is not None


# -- what a restore refuses ----------------------------------------------------------------
async def test_a_key_of_another_type_is_reported_not_overwritten(
    cache: CallableCache, raw: redis.Redis, tmp_path: Path,
) -> None:
    await seed(cache, raw, ("acc1",))
    path = tmp_path / "b.jsonl"
    await backup(cache.remote, str(path))
    raw.delete("cal:regions")
    raw.set("cal:regions", b"a string now")
    raw.delete(cache.keys.queue("acc1", "support"))
    raw.sadd(cache.keys.queue("acc1", "support"), b"x")
    seen: list[str] = []
    summary = await restore(cache.remote, str(path), say=seen.append)
    assert summary.total("conflicts") == 2 and summary.families["regions"].conflicts == 1
    assert raw.get("cal:regions") == b"a string now"
    assert raw.type(cache.keys.queue("acc1", "support")) == b"set"
    assert any("conflict cal:regions: the target is a string" in s for s in seen)
    summary = await restore(cache.remote, str(path), mode="replace")
    assert raw.type("cal:regions") == b"hash" and not summary.errors


async def test_dry_run_reports_and_writes_nothing(
    make_cache: Factory, raw: redis.Redis, tmp_path: Path,
) -> None:
    cache = await make_cache()
    await seed(cache, raw, ("acc1",))
    path = tmp_path / "b.jsonl"
    await backup(cache.remote, str(path), accounts=["acc1"])
    raw.delete(cache.keys.devices("acc1"))
    raw.hset("cal:users", "acc1-u1", b'{"id":"acc1-u1","account_id":"acc1"}')
    raw.hdel("cal:users", "acc1-u2")
    raw.delete(cache.keys.sessions_active("acc1"))
    raw.set(cache.keys.sessions_active("acc1"), b"wrong")
    before = snapshot(raw)
    peer = await make_cache()
    lines: list[str] = []
    stream = peer.events()
    summary = await restore(cache.remote, str(path), dry_run=True, say=lines.append)
    assert snapshot(raw) == before and summary.events == []
    assert f"create {cache.keys.devices('acc1')} (hash)" in lines
    assert "fields cal:users: 1 added, 1 differ and are kept (skip-existing), 1 unchanged" \
        in lines
    assert any(line.startswith(f"conflict {cache.keys.sessions_active('acc1')}")
               for line in lines)
    replace = await restore(cache.remote, str(path), dry_run=True, mode="replace")
    assert "fields cal:users: 1 added, 1 overwritten, 1 unchanged" in replace.changes
    assert snapshot(raw) == before
    assert stream.qsize() == 0


@pytest.mark.parametrize("damage", [
    "bad-json", "cut-mid-line", "cut-at-line", "no-header", "bad-b64", "bad-type",
    "bad-ttl", "key-again", "gzip-cut", "count",
])
async def test_a_corrupt_or_truncated_file_applies_nothing(
    cache: CallableCache, raw: redis.Redis, tmp_path: Path, damage: str,
    capsys: pytest.CaptureFixture[str], redis_url: str,
) -> None:
    await seed(cache, raw, ("acc1",))
    gz = damage == "gzip-cut"
    path = tmp_path / ("b.jsonl.gz" if gz else "b.jsonl")
    await backup(cache.remote, str(path))
    data = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    lines = data.split(b"\n")[:-1]
    n = len(lines) // 2  # a line in the middle: records before it are valid
    expect = n + 1
    if damage == "bad-json":
        lines[n] = lines[n][:-3]
    elif damage == "cut-mid-line":
        lines, expect = lines[: n + 1], n + 1
        lines[n] = lines[n][:20]
    elif damage == "cut-at-line":
        lines, expect = lines[:n], n + 1
    elif damage == "no-header":
        lines, expect = lines[1:], 1
    elif damage == "bad-b64":
        lines[n] = b'{"key":{"b64":"%%%"},"type":"string","ttl":-1,"value":"x"}'
    elif damage == "bad-type":
        lines[n] = b'{"key":"cal:x","type":"tree","ttl":-1,"items":[]}'
    elif damage == "bad-ttl":
        lines[n] = b'{"key":"cal:x","type":"string","ttl":0,"value":"x"}'
    elif damage == "key-again":
        lines[n] = lines[1]
    elif damage == "count":
        lines[-1] = lines[-1].replace(b'"records":', b'"records":1')
        expect = len(lines)
    blob = b"\n".join(lines) + (b"" if damage == "cut-mid-line" else b"\n")
    if gz:
        blob = gzip.compress(blob)[:-30]
        expect = -1
    path.write_bytes(blob)
    raw.flushall()
    raw.set("cal:keep", b"1")
    with pytest.raises(BackupFormatError) as exc:
        await restore(cache.remote, str(path), depth=1)  # depth 1: would apply line by line
    if expect > 0:
        assert exc.value.line == expect, (damage, str(exc.value))
    assert str(exc.value).startswith(f"line {exc.value.line}:")
    assert raw.keys("*") == [b"cal:keep"]  # nothing at all was applied (no marker either)
    # The command says so (in a thread: it runs its own event loop).
    assert await asyncio.to_thread(main, ["restore", "--url", redis_url, str(path)]) == 1
    assert f"line {exc.value.line}" in capsys.readouterr().err
    assert raw.keys("*") == [b"cal:keep"]


# -- running caches hear about a restore --------------------------------------------------
@pytest.mark.l1  # what the events do to a running cache's L1: each implementation
async def test_restore_publishes_a_sync_per_namespace_written(
    make_cache: Factory, raw: redis.Redis, tmp_path: Path,
) -> None:
    writer = await make_cache()
    await seed(writer, raw, ("acc1", "acc2"))
    path = tmp_path / "acc1.jsonl"
    await backup(writer.remote, str(path), accounts=["acc1"])
    raw.delete(writer.keys.devices("acc1"), writer.keys.flow_state("acc1", "f1"))
    raw.hdel("cal:users", "acc1-u1")
    reader = await make_cache()
    for a in ("acc1", "acc2"):
        await reader.get_device(a, "d1")
    await reader.get_device("acc2", "d1")
    await reader.get_region("eu-west")
    await reader.get_user_by_id("acc2-u0")
    types: list[tuple[str, str | None]] = []
    reader.add_event_handler(lambda e: types.append((e.type, e.account_id)))
    summary = await restore(writer.remote, str(path))
    assert sorted(summary.events) == [
        "DeviceSync on cal:account:acc1:events", "FlowStateSync on cal:account:acc1:events",
        "UserSync on cal:events"]
    await until(lambda: len(types) == 3)
    assert sorted(types) == [("DeviceSync", "acc1"), ("FlowStateSync", "acc1"), ("UserSync", None)]
    devices = reader.local["devices"]
    assert devices.peek(("acc1", "d1")) is None and devices.peek(("acc2", "d1")) is not None
    assert reader.local["regions"].peek("eu-west") is not None  # not written: kept
    assert len(reader.local["users"]) == 0
    # Nothing written, nothing announced.
    again = await restore(writer.remote, str(path))
    assert again.events == []


# -- the file, directly --------------------------------------------------------------------
async def test_unknown_types_travel_as_dumps(cache: CallableCache, raw: redis.Redis,
                                             tmp_path: Path) -> None:
    raw.set("src", b"dumped value")
    payload = raw.dump("src")
    path = tmp_path / "d.jsonl"
    writer = Writer(str(path), {})
    writer.write(Record(b"cal:module:key", "dump", 5000, value=payload))
    writer.commit({"keys": 1})
    assert (await restore(cache.remote, str(path))).total("created") == 1
    assert raw.get("cal:module:key") == b"dumped value" and 0 < raw.pttl("cal:module:key") <= 5000
    assert json.loads(path.read_text().splitlines()[1])["value"]["b64"]


async def test_arguments_are_checked(cache: CallableCache, tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        await backup(cache.remote, str(tmp_path / "x"), accounts="acc1")
    with pytest.raises(ValidationError):
        await backup(cache.remote, str(tmp_path / "x"), accounts=["a:b"])
    with pytest.raises(ValidationError):
        await backup(cache.remote, str(tmp_path / "x"), page=0)
    with pytest.raises(ValidationError):
        await restore(cache.remote, str(tmp_path / "x"), mode="merge")
    with pytest.raises(BackupFormatError):
        await restore(cache.remote, str(tmp_path / "missing"))
    assert not os.listdir(tmp_path)


def test_backup_and_restore_commands(
    redis_url: str, raw: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    raw.hset("cal:users", "u1", b'{"id":"u1","account_id":"acc1"}')
    raw.hset("cal:account:acc1:devices", "d1", b'{"id":"d1"}')
    out = str(tmp_path / "b.jsonl.gz")
    assert main(["backup", "--url", redis_url, "--out", out]) == 0
    text = capsys.readouterr().out
    assert "2 keys" in text and "users" in text and "devices" in text
    assert main(["backup", "--url", redis_url, "--out", out + "2", "--account", "acc1",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["families"]["devices"]["keys"] == 1
    raw.flushall()
    assert main(["restore", "--url", redis_url, out, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "create cal:users (hash)" in text and "dry run" in text and raw.dbsize() == 0
    assert main(["restore", "--url", redis_url, out]) == 0
    text = capsys.readouterr().out
    assert "published UserSync on cal:events" in text and raw.dbsize() == 2
    for command, words in (("backup", ("SCAN", "never KEYS", "tqdm")),
                           ("restore", ("--dry-run", "skip-existing", "line number"))):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        help_text = capsys.readouterr().out
        assert all(w in help_text for w in words), command
    assert not os.path.exists(out + ".partial")


@pytest.mark.parametrize("how", ["staging-expired", "part-dropped"])
async def test_a_large_key_with_a_lost_part_is_never_committed(
    cache: CallableCache, raw: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    from cal_redis.backup import load

    raw.hset("cal:users", mapping={f"u{i}": f'{{"id":"u{i}"}}' for i in range(1000)})  # type: ignore[arg-type]
    raw.set("cal:small", b"1")
    path = tmp_path / "b.jsonl"
    await backup(cache.remote, str(path), page=200)  # 5 records: 5 round trips at depth 1
    raw.flushall()
    real = load.raw_pipeline
    lost: list[Any] = []

    async def losing(remote: Any, what: str, commands: Any, **kw: Any) -> Any:
        staged = raw.keys("cal-restore:*")
        if staged and not lost:
            if how == "staging-expired":  # between two parts
                lost.extend(k for k in staged if not k.endswith(b":parts"))
                raw.delete(*lost)
            else:  # one part never reaches the server (it answers as if it had)
                lost.append(commands[1])
                commands = [commands[0], ("EVAL", "return {'staged', 'none', 0}", 0),
                            *commands[2:]]
        return await real(remote, what, commands, **kw)

    monkeypatch.setattr(load, "raw_pipeline", losing)
    summary = await restore(cache.remote, str(path), depth=1)
    assert lost and raw.exists("cal:users") == 0  # not committed with a hole
    assert raw.get("cal:small") == b"1"
    assert summary.families["users"].errors == 1 and "did not land" in summary.errors[0]
    assert raw.keys("cal-restore:*") == []
    monkeypatch.setattr(load, "raw_pipeline", real)
    again = await restore(cache.remote, str(path))  # run again: whole
    assert again.total("created") == 1 and raw.hlen("cal:users") == 1000
