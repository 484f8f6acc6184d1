"""Tenant isolation: no operation for account A touches a key or channel of account B.

Every public async method of CallableCache is covered automatically: methods whose
first parameter is ``account_id`` run for account A (arguments come from a table
keyed by parameter name) while Redis ``MONITOR`` records every command the server
runs (commands inside Lua scripts included; under ``--redis-cluster`` on every node
of the cluster). B's data is seeded first with the same operations, so a leak would
show. A public method that is neither account-scoped nor listed in
``GLOBAL_METHODS`` fails the test: new operations must be classified.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

from cal_redis import (
    Address,
    AgentState,
    AgentStatus,
    Asset,
    CallableCache,
    Conversation,
    Ddi,
    Device,
    Event,
    FlowState,
    Hook,
    NotFoundError,
    QueueMeta,
    SessionData,
    Trunk,
)
from keyspace import K

# The isolation run reads cache-first entities (devices, accounts, flow states)
# through the L1: each implementation.
pytestmark = pytest.mark.l1

A, B = "acc-a", "acc-b"
MARK = "cal-isolation-test:"

#: Public async methods that are not account-scoped: global entities, routing by
#: connection or node id, lifecycle. They are never run for A here.
GLOBAL_METHODS = frozenset({
    "close", "connect",
    "get_user", "get_user_by_id", "get_user_by_ident", "get_users", "get_users_batch",
    "set_user", "update_user", "delete_user",
    "get_region", "get_region_by_id", "get_region_by_ident", "get_regions",
    "get_regions_batch", "set_region", "update_region", "delete_region",
    "get_proxy", "get_proxy_by_id", "get_proxies", "get_proxies_batch", "set_proxy",
    "update_proxy", "delete_proxy",
    "get_account_by_ident", "get_accounts", "get_accounts_batch", "set_account",
    "get_connection", "remove_node_connections", "publish_event",
    "get_trunk_account", "set_trunk_ip", "delete_trunk_ip",  # cal:trunk:{ip}, by IP
    "invalidate",  # by kind: global kinds on cal:events, scoped ones on account_id's channel
    "warm",  # global tables; devices of the accounts it is given
})

# Argument values by parameter name; a callable gets the account id.
ARGS: dict[str, Callable[[str], Any]] = {
    "user_id": lambda a: "u1",
    "session_id": lambda a: "sess-1",
    "ttl": lambda a: 30,
    "session": lambda a: SessionData(id="sess-1", user_id="u1", data={"owner": a}),
    "status": lambda a: AgentStatus(user_id="u1", name=f"agent of {a}",
                                    status=AgentState.AVAILABLE, registered=True,
                                    connected=True),
    "queue": lambda a: "q1",
    "item_id": lambda a: "item-1",
    "n": lambda a: 5,
    "timeout": lambda a: 0.05,
    "meta": lambda a: QueueMeta(name="q1", description=a),
    "name": lambda a: "q1",
    "conv": lambda a: Conversation(id="conv-1", data={"owner": a}),
    "conversation_id": lambda a: "conv-1",
    "connection_id": lambda a: f"conn-{a}",
    "node_id": lambda a: f"node-{a}",
    "state": lambda a: FlowState(id="flow-1", state=a),
    "flow_id": lambda a: "flow-1",
    "ddi": lambda a: Ddi(id="+441234567890", description=a),
    "ddi_id": lambda a: "+441234567890",
    "ddi_ids": lambda a: ["+441234567890", "+14155550100"],
    "trunk": lambda a: Trunk(id="trunk-1", name=a),
    "trunk_id": lambda a: "trunk-1",
    "trunk_ids": lambda a: ["trunk-1"],
    "hook": lambda a: Hook(id="hook-1", url=f"https://{a}.example/hook"),
    "hook_id": lambda a: "hook-1",
    "hook_ids": lambda a: ["hook-1"],
    "asset": lambda a: Asset(id="asset-1", name=a),
    "asset_id": lambda a: "asset-1",
    "asset_ids": lambda a: ["asset-1"],
    "address": lambda a: Address(id="addr-1", line1=a),
    "address_id": lambda a: "addr-1",
    "address_ids": lambda a: ["addr-1"],
    "device": lambda a: Device(id="dev-1", name=a, sip_username="sip-1", mac="aa:bb"),
    "device_id": lambda a: "dev-1",
    "device_ids": lambda a: ["dev-1", "dev-2"],
    "ident": lambda a: "sip-1",
    "event": lambda a: Event(type="AppNotice", id="notice-1"),
}
#: Keyword-only ``**changes`` of update methods.
CHANGES = {"name": "renamed"}

_WRITE_PREFIXES = (
    "create_", "set_", "add_", "publish_", "queue_add", "agent_status_set", "session_set",
)
_DELETE_PREFIXES = ("delete_", "remove_", "queue_pop", "queue_remove", "session_delete")


def phase(name: str) -> int:
    """Writes first (updates after sets), then reads, then deletes and pops."""
    if name.startswith(_WRITE_PREFIXES):
        return 0
    if name.startswith("update_"):
        return 1
    if name.startswith(_DELETE_PREFIXES):
        return 3
    return 2


def public_async_methods() -> dict[str, inspect.Signature]:
    out = {}
    for name in dir(CallableCache):
        if name.startswith("_"):
            continue
        attr = getattr(CallableCache, name)
        if inspect.iscoroutinefunction(attr) or inspect.isasyncgenfunction(attr):
            out[name] = inspect.signature(attr)
    return out


def account_scoped() -> list[str]:
    names = []
    for name, sig in public_async_methods().items():
        params = [p for p in sig.parameters.values() if p.name != "self"]
        if params and params[0].name == "account_id":
            names.append(name)
    return sorted(names, key=lambda n: (phase(n), n))


def call_args(name: str, account: str) -> tuple[list[Any], dict[str, Any]]:
    sig = public_async_methods()[name]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        if p.name == "account_id":
            value: Any = account
        elif p.kind is p.VAR_KEYWORD:
            kwargs.update(CHANGES)
            continue
        elif p.name in ARGS:
            value = ARGS[p.name](account)
        elif p.default is not p.empty:
            continue
        else:
            raise AssertionError(
                f"{name}: no test value for parameter {p.name!r}; add it to ARGS in "
                "tests/test_tenant_isolation.py"
            )
        if p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = value
        else:
            args.append(value)
    return args, kwargs


async def run(cache: CallableCache, name: str, account: str) -> None:
    args, kwargs = call_args(name, account)
    # NotFoundError: e.g. update_account of a summary never stored; the call still ran.
    with contextlib.suppress(NotFoundError):
        await getattr(cache, name)(*args, **kwargs)


def test_every_public_method_is_classified() -> None:
    scoped = set(account_scoped())
    methods = set(public_async_methods())
    unclassified = methods - scoped - GLOBAL_METHODS
    assert not unclassified, (
        f"public methods neither account-scoped nor listed as global: {sorted(unclassified)}"
    )
    assert not scoped & GLOBAL_METHODS, sorted(scoped & GLOBAL_METHODS)
    for name in scoped:
        call_args(name, A)  # every parameter has a value


# -- MONITOR ---------------------------------------------------------------------------
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
_KEYLESS = frozenset({
    "multi", "exec", "discard", "ping", "echo", "hello", "client", "select", "info",
    "config", "script", "subscribe", "psubscribe", "unsubscribe", "punsubscribe",
    "monitor", "command", "auth", "readonly", "reset",
    # a script's own commands are logged as "[0 lua]" lines and checked one by one
    "eval", "evalsha", "eval_ro", "evalsha_ro",
})
_MANY_KEYS = frozenset({"del", "unlink", "exists", "watch", "mget"})
#: Point commands allowed on a key outside A's prefix (a global hash field, a channel);
#: whole-collection reads (HGETALL, HSCAN, SMEMBERS...) of such keys are violations.
#: Appending an event to a global table's log (XADD, and the XTRIM of its retention)
#: is a point write like PUBLISH: nothing of the log is read.
_POINT = frozenset({"hget", "hmget", "hset", "hdel", "hexists", "publish", "get", "watch",
                    "xadd", "xtrim"})


class Monitor:
    """Collects MONITOR lines of one server in a thread until the stop marker is seen."""

    def __init__(self, raw: redis.Redis) -> None:
        self.raw = raw
        self.lines: list[str] = []
        self._mon = raw.monitor()
        self._mon.__enter__()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        conn = self._mon.connection
        while True:
            line = conn.read_response()
            text = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
            self.lines.append(text)
            if MARK + "stop" in text:
                return

    def mark(self, label: str) -> None:
        self.raw.echo(MARK + label)

    def stop(self) -> list[str]:
        self.mark("stop")
        self._thread.join(10)
        assert not self._thread.is_alive(), "MONITOR reader did not see the stop marker"
        self._mon.__exit__(None, None, None)
        return self.lines


class Monitors:
    """MONITOR of the server, or of every node of a cluster (masters run the commands;
    replicas are watched too). Each node's lines carry the method markers, which are
    sent to every node, so each node's part of :meth:`stop` reads on its own."""

    def __init__(self, raw: Any) -> None:
        if isinstance(raw, redis.RedisCluster):
            self.servers = [redis.Redis(host=n.host, port=n.port) for n in raw.get_nodes()]
        else:
            self.servers = [raw]
        self.own = raw is not self.servers[0]
        self.monitors = [Monitor(server) for server in self.servers]

    def mark(self, label: str) -> None:
        for monitor in self.monitors:
            monitor.mark(label)

    def stop(self) -> list[str]:
        lines: list[str] = []
        for monitor in self.monitors:
            lines += monitor.stop()
        if self.own:
            for server in self.servers:
                server.close()
        return lines


def parse(line: str) -> list[str]:
    """The command and its arguments from a MONITOR line (escapes kept as written)."""
    return _ARG.findall(line.split("]", 1)[1] if "]" in line else line)


def keys_of(argv: list[str]) -> list[str]:
    cmd = argv[0].lower()
    if cmd in _KEYLESS or len(argv) < 2:
        return []
    if cmd in _MANY_KEYS:
        return argv[1:]
    return [argv[1]]


def violations(lines: list[str], mine: str, other: str) -> list[str]:
    prefix = K.account(mine)
    bad: list[str] = []
    method = "?"
    for line in lines:
        argv = parse(line)
        if not argv:
            continue
        if argv[0].lower() == "echo" and len(argv) > 1 and argv[1].startswith(MARK):
            method = argv[1][len(MARK):]
            continue
        if other in line:
            bad.append(f"{method}: mentions {other}: {line}")
            continue
        cmd = argv[0].lower()
        for key in keys_of(argv):
            if not key.startswith(prefix) and cmd not in _POINT:
                bad.append(f"{method}: {cmd.upper()} on {key!r} outside {prefix}: {line}")
    return bad


async def test_no_operation_of_one_account_touches_another(
    cache: CallableCache, raw: redis.Redis
) -> None:
    names = account_scoped()
    for name in names:  # B's data everywhere a leak could reach
        if phase(name) < 2:
            await run(cache, name, B)
    cache.local.flush_all()
    monitor = Monitors(raw)
    try:
        for name in names:
            monitor.mark(name)
            await run(cache, name, A)
    finally:
        lines = monitor.stop()
    bad = violations(lines, A, B)
    assert not bad, "\n".join(bad[:20])
    # the check has teeth: A's operations did reach A's keys, B's data is still there
    assert sum(K.account(A) in line for line in lines) > len(names)
    assert raw.exists((K.account(B) + "session:sess-1"), (K.account(B) + "ddis")) == 2
    assert raw.hexists(K.WS_CONNECTIONS, f"conn-{B}")


def test_the_checker_flags_leaks() -> None:
    lines = [
        f'1.0 [0 127.0.0.1:1] "echo" "{MARK}get_x"',
        f'1.0 [0 127.0.0.1:1] "get" "cal:account:{B}:session:s1"',
        '1.0 [0 lua] "HGETALL" "cal:ws:connections"',
        f'1.0 [0 127.0.0.1:1] "get" "cal:account:{A}:session:s1"',
        '1.0 [0 127.0.0.1:1] "hget" "cal:ws:connections" "conn-a"',
    ]
    bad = violations(lines, A, B)
    assert len(bad) == 2 and bad[0].startswith("get_x: mentions") and "HGETALL" in bad[1]


@pytest.mark.parametrize("name", account_scoped())
def test_account_scoped_methods_take_the_account_first(name: str) -> None:
    sig = public_async_methods()[name]
    first = next(p for p in sig.parameters.values() if p.name != "self")
    assert first.kind is first.POSITIONAL_OR_KEYWORD and first.annotation in ("str", str)
