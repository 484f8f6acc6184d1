"""``python -m cal_redis inspect`` and ``watch`` against the session's redis-server."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from cal_redis import CallableCache, Device, Event, KeyBuilder, User
from cal_redis.__main__ import main
from cal_redis._inspect import FAMILIES, inspect, watch
from waiting import until

Factory = Callable[..., Awaitable[CallableCache]]


def families(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in report["families"]}


async def _fill(cache: CallableCache) -> None:
    for i in range(12):
        await cache.set_user(User(id=f"u{i}", account_id="acc42", email=f"u{i}@example.com"))
    await cache.set_device("acc42", Device(id="d1", mac="00:11:22:33:44:55"))
    await cache.set_device("acc7", Device(id="d2"))
    for i in range(25):
        await cache.create_session("acc42", f"u{i % 12}", ttl=600)
    await cache.queue_add("acc42", "support", "call-1")
    await cache.queue_add("acc42", "support", "call-2")
    await cache.queue_add("acc7", "sales", "call-3")
    await cache.set_trunk_ip("2001:db8::1", "acc42")


async def test_inspect_counts_keys_fields_and_memory(make_cache: Factory, raw: redis.Redis) -> None:
    cache = await make_cache()
    await _fill(cache)
    raw.set("cal:something:else", "x")
    report = await inspect(cache.remote.url, sample=10, seed=1)
    fam = families(report)
    assert [f["name"] for f in report["families"]] == [f.name for f in FAMILIES]
    assert (fam["users"]["keys"], fam["users"]["fields"]) == (1, 12)
    assert fam["user idents"]["fields"] == 12  # one email each
    assert (fam["account devices"]["keys"], fam["account devices"]["fields"]) == (2, 2)
    assert (fam["sessions"]["keys"], fam["sessions"]["fields"]) == (25, None)
    assert (fam["active sessions"]["keys"], fam["active sessions"]["fields"]) == (1, 25)
    assert (fam["queues"]["keys"], fam["queues"]["fields"]) == (2, 3)
    assert fam["trunk IPs"]["keys"] == 1  # an IPv6 key, colons and all
    assert report["other_cal_keys"] == 1
    # memory: every key measured for small families, a sample scaled up for big ones
    exact = raw.memory_usage("cal:users")
    assert fam["users"]["memory"] == exact and not fam["users"]["estimated"]
    sessions = fam["sessions"]
    assert sessions["estimated"] and sessions["sampled"] == 10
    one = raw.memory_usage(KeyBuilder().session("acc42", next(
        k.decode().rsplit(":", 1)[1] for k in raw.scan_iter("cal:account:acc42:session:*"))))
    assert 0.5 * 25 * one <= sessions["memory"] <= 2 * 25 * one
    assert fam["regions"] == {"name": "regions", "pattern": "cal:regions", "type": "hash",
                              "keys": 0, "fields": 0, "memory": 0, "estimated": False,
                              "sampled": 0}
    ch = report["channels"]
    assert ch["cal:events"] == 1 and ch["patterns_subscribed"] == 1
    assert ch["caches_subscribed"] == 1
    await make_cache()
    assert (await inspect(cache.remote.url))["channels"]["caches_subscribed"] == 2
    srv = report["server"]
    assert srv["role"] == "master" and srv["version"].split()[0] in ("redis", "valkey")
    assert srv["keys_in_db"] == raw.dbsize()


def test_inspect_command_table_and_json(redis_url: str, raw: redis.Redis,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    raw.hset("cal:users", mapping={"u1": b'{"id":"u1"}', "u2": b'{"id":"u2"}'})
    raw.zadd("cal:account:acc42:queue:support", {"c1": 1.0})
    assert main(["inspect", "--url", redis_url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("server   ") and " role master" in out
    (users,) = [line for line in out.splitlines() if line.startswith("users ")]
    assert users.split()[:5] == ["users", "cal:users", "hash", "1", "2"]
    assert "cal:account:*:queue:*" in out and "cal:events subscribers (SUBSCRIBE)" in out
    assert main(["inspect", "--url", redis_url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert families(report)["queues"]["fields"] == 1


async def test_inspect_cluster_style(make_cache: Factory) -> None:
    from cal_redis import CacheConfig

    cache = await make_cache(CacheConfig(cluster=True))
    await cache.set_device("acc42", Device(id="d1"))
    fam = families(await inspect(cache.remote.url, cluster=True))
    assert fam["account devices"]["pattern"] == "cal:account:{*}:devices"
    assert fam["account devices"]["keys"] == 1


async def _start_watch(url: str, **kwargs: Any) -> tuple[asyncio.Task[int], io.StringIO]:
    out = io.StringIO()
    task = asyncio.create_task(watch(url, out=out, **kwargs))
    await until(lambda: "watching " in out.getvalue() or task.done(), what="watch subscribed")
    return task, out


async def test_watch_prints_decoded_events_and_rates(make_cache: Factory, raw: redis.Redis) -> None:
    writer = await make_cache()
    task, out = await _start_watch(writer.remote.url, count=4, interval=0.05)
    await writer.set_user(User(id="u1", name="Jane"))
    await writer.set_device("acc42", Device(id="d1"))
    await writer.publish_account_event("acc42", Event(type="CallStarted", id="c1"))
    raw.publish("cal:events", b"{not json")  # malformed: not shown, counted
    await writer.update_user("u1", name="Jane D")
    assert await asyncio.wait_for(task, 10) == 4
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("watching cal:events and cal:account:*:events on redis://")
    events = [line for line in lines if not line.startswith(("watching", "--"))]
    assert [e.split()[1] for e in events] == ["UserCreate", "DeviceCreate", "CallStarted",
                                              "UserUpdate"]
    assert "id=u1" in events[0] and 'data={"id":"u1"' in events[0] and " lag=" in events[0]
    assert "account=acc42" in events[1] and f"origin={writer.instance_id[:8]}" in events[1]
    assert lines[-1].startswith("-- total: 4 events in ")
    assert "UserCreate 1 (" in lines[-1] and lines[-1].endswith("; malformed 1")


async def test_watch_one_account_and_bounded_time(make_cache: Factory) -> None:
    writer = await make_cache()
    task, out = await _start_watch(writer.remote.url, account="acc42", seconds=1.0,
                                   interval=0.2)
    await writer.set_device("acc7", Device(id="d7"))
    await writer.set_device("acc42", Device(id="d42"))
    await writer.set_user(User(id="u9", account_id="acc42"))
    await writer.set_user(User(id="u8", account_id="acc7"))
    assert await asyncio.wait_for(task, 10) == 2
    text = out.getvalue()
    assert text.startswith("watching cal:account:acc42:events and cal:events")
    assert "id=d42" in text and "id=u9" in text and "id=d7 " not in text and "id=u8 " not in text
    assert text.count("-- last 0.2 s: ") >= 2


def test_watch_until_ctrl_c(redis_url: str) -> None:
    """The command itself, stopped by SIGINT: summary printed, exit status 130."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cal_redis", "watch", "--url", redis_url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("watching "), first + (proc.stderr.read() if proc.stderr else "")
        r = redis.Redis.from_url(redis_url)
        r.publish("cal:events", json.dumps({"type": "UserDelete", "id": "u1", "ts": 1}))
        r.close()
        event = proc.stdout.readline()
        assert event.split()[1] == "UserDelete" and "lag=" in event
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert rest.strip().splitlines()[-1].startswith("-- total: 1 events in ")


def test_cli_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["inspect", "--sample", "0", "--url", "redis://127.0.0.1:1"])
    assert "--sample must be >= 1" in capsys.readouterr().err
    assert main(["watch", "--url", "redis://127.0.0.1:1/0", "--account", "a:b"]) == 1
    assert "account" in capsys.readouterr().err
