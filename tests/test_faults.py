"""The fault suite: real faults under load, then the guarantees checked after quiescence.

A redis-server of this module's own (AOF, ``appendfsync always``, a fixed loopback
port, so it can be killed with SIGKILL and restarted on the same port with its data)
serves two caches (``CallableCache.connect``, with L1 and sync, as a service runs
them) and a foreign writer (a plain redis-py client writing users and publishing
their events as docs/wire-format.md says). During each fault all three keep writing
their own disjoint sets of users, each value carrying a per-id version, and both
caches keep reading every id cache-first. Every call runs under a deadline. Some ids
are written only before the fault and some not after it (``Workload.phase``), so no
later write covers up a lost write or a missed event. Each fault runs under every
configuration of :data:`VARIANTS` (default, event-log replay, serve-stale).

The faults: SIGKILL and restart; SIGSTOP then SIGCONT; ``CLIENT KILL TYPE pubsub`` and
``TYPE normal``; and, with the caches behind the loopback proxy of ``tcp_proxy.py``
(the foreign writer and the checker reach Redis directly), every connection dropped,
latency added, a black hole that heals, and a black hole after which the old
connections are dead for good (only the heartbeat can tell).

After each fault: once both caches report ``connected`` and a barrier event has
reached both, every id read through each cache (L1 first) equals what Redis holds,
no acknowledged write is lost (Redis' version of an id is never below its last
acknowledged one), no call outlived its deadline and no call raised anything but a
:class:`~cal_redis.errors.CalRedisError`. The figures of every run (recovery times,
errors, stale reads, lost writes) are printed in a table at the end of the session.

The module is marked ``faults``: the default run leaves it out (conftest.py);
``pytest -m faults`` runs it (docs/sync.md, "Fault suite").
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import tempfile
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from cal_redis import CacheConfig, CallableCache, CalRedisError, Event, User
from cal_redis.embedded import EmbeddedRedis
from tcp_proxy import TcpProxy
from test_event_log import reference_script

pytestmark = [pytest.mark.faults, pytest.mark.standalone_only]
T = TypeVar("T")

#: Every call of the workload must end within this (s): well above what the timeouts
#: of :data:`BASE` allow a call (3 read attempts of connect + reply timeouts).
DEADLINE = 4.0
#: How long the long faults last (SIGSTOP, latency, black holes) and the server stays
#: down after SIGKILL (s).
FAULT_SECONDS = 2.5
DOWN_SECONDS = 1.0
#: Recovery and quiescence must be reached within this (s) after a fault ended.
RECOVERY_TIMEOUT = 20.0
#: Users per writer (two caches and the foreign writer, disjoint): the first COLD are
#: written only before the fault, the first FROZEN not after the caches recovered
#: (see Workload.phase).
IDS_PER_WRITER = 16
COLD = 4
FROZEN = 10
#: Added latency of the delay fault (ms, each direction).
DELAY_MS = 150

#: Short timeouts and heartbeat, so that faults are noticed fast and runs stay short.
BASE: dict[str, Any] = dict(
    heartbeat_interval=0.25,
    connect_timeout=0.5,
    socket_timeout=0.5,
    read_retries=2,
    retry_backoff=0.02,
    pool_timeout=1.0,
)

#: The configurations the workload runs under: name -> extra CacheConfig keywords.
#: A variant whose option this version of CacheConfig lacks is skipped.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "replay": {"event_log": "replay"},
    "serve-stale": {"stale_if_error": 5.0},
}

#: Where server-side faults are not enough: caches behind the proxy.
PROXY_FAULTS = ("proxy-drop", "proxy-delay", "proxy-blackhole", "proxy-zombie")
FAULTS = ("sigkill", "sigstop", "kill-pubsub", "kill-normal", *PROXY_FAULTS)

#: Ports for this module's server: below Linux's ephemeral range (32768-60999), so no
#: client socket takes the port while the server is down, and above the range of
#: embedded clusters (their data ports 21000-28999, bus ports +1000).
SERVER_PORTS = range(30000, 32700)


def _config_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(CacheConfig)}


def variant_config(name: str) -> CacheConfig:
    """The CacheConfig of variant ``name`` (skips the test when an option is missing)."""
    extra = VARIANTS[name]
    missing = sorted(set(extra) - _config_fields())
    if missing:
        pytest.skip(f"variant {name!r}: CacheConfig has no {', '.join(missing)} option yet")
    return CacheConfig(**BASE, **extra)


def _free_fixed_port() -> int:
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(SERVER_PORTS.start, SERVER_PORTS.stop)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {SERVER_PORTS}")


# -- the server and the proxy ---------------------------------------------------------------
class AofServer:
    """A redis-server with AOF on a fixed port, its data in a directory that outlives
    a SIGKILL, so it restarts with every acknowledged write."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="cal-redis-faults-")
        self.port = _free_fixed_port()
        self.server = EmbeddedRedis(port=self.port, extra_args=[
            "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir,
        ])

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        pid = self.server.pid
        assert pid is not None and self.server.running, "the fault server is not running"
        return pid

    def start(self) -> None:
        self.server.start()

    def sigkill(self) -> None:
        """SIGKILL, then wait until the process is gone."""
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.server.running:  # polls (and reaps) the process
            if time.monotonic() > deadline:
                raise AssertionError("redis-server survived SIGKILL")
            time.sleep(0.005)
        self.server.stop()  # its log directory; the data directory stays

    def resume(self) -> None:
        """Make sure it runs and is not stopped (a failed test may leave it so)."""
        if self.server.running:
            os.kill(self.pid, signal.SIGCONT)
        else:
            self.server.stop()
            self.server.start()

    def close(self) -> None:
        if self.server.running:
            os.kill(self.pid, signal.SIGCONT)
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def aof_server() -> Iterator[AofServer]:
    server = AofServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def proxy(aof_server: AofServer) -> Iterator[TcpProxy]:
    with TcpProxy(aof_server.port) as p:
        yield p


@pytest.fixture
async def checker(aof_server: AofServer, proxy: TcpProxy) -> AsyncIterator[aioredis.Redis]:
    """A plain client of the fault server (directly, never through the proxy), on a
    running, flushed server with the proxy forwarding."""
    await asyncio.to_thread(aof_server.resume)
    await asyncio.to_thread(proxy.forward)
    await asyncio.to_thread(proxy.drop)  # nothing left over from an earlier test
    # Retried: its connection dies with the server (SIGKILL) or by CLIENT KILL.
    client = aioredis.Redis(
        host="127.0.0.1", port=aof_server.port, socket_timeout=5, socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=0.5), 20),
        retry_on_error=[rexc.ConnectionError, rexc.TimeoutError],
    )
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


# -- the proxy itself ------------------------------------------------------------------------
def _raw(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=5)


def _reply(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """What arrives within ``timeout`` s (b"" at EOF); raises socket.timeout if nothing."""
    sock.settimeout(timeout)
    return sock.recv(1024)


def _silent(sock: socket.socket, quiet: float = 0.3) -> bool:
    try:
        _reply(sock, quiet)
    except TimeoutError:
        return True
    return False


def test_proxy_modes(proxy: TcpProxy, aof_server: AofServer) -> None:
    """Each fault of the proxy does what its docstring says, on raw connections."""
    aof_server.resume()
    proxy.forward()
    with _raw(proxy) as s:
        s.sendall(b"PING\r\n")
        assert _reply(s) == b"+PONG\r\n"
        # delay: a round trip takes at least twice the delay (each direction)
        proxy.delay(200)
        began = time.monotonic()
        s.sendall(b"PING\r\n")
        assert _reply(s) == b"+PONG\r\n"
        assert time.monotonic() - began >= 0.4
        # a black hole that heals: held bytes are delivered, a connection accepted
        # meanwhile is connected then
        proxy.blackhole()
        s.sendall(b"PING\r\n")
        with _raw(proxy) as late:
            late.sendall(b"ECHO hi\r\n")
            assert _silent(s) and _silent(late)
            proxy.forward()
            assert _reply(s) == b"+PONG\r\n"
            assert _reply(late) == b"$2\r\nhi\r\n"
        # a black hole after which the old connections are dead for good
        proxy.blackhole()
        s.sendall(b"PING\r\n")
        proxy.forward(zombies=True)
        assert _silent(s, 0.5)
        s.sendall(b"PING\r\n")
        assert _silent(s)
        with _raw(proxy) as fresh:
            fresh.sendall(b"PING\r\n")
            assert _reply(fresh) == b"+PONG\r\n"
            # drop: every current connection is closed (the zombie's client side too)
            assert proxy.drop() >= 2
            assert _reply(fresh) == b"" and _reply(s) == b""
    with _raw(proxy) as s:  # new connections are forwarded after a drop
        s.sendall(b"PING\r\n")
        assert _reply(s) == b"+PONG\r\n"


@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_connect_and_close_in_a_black_hole(
    variant: str, proxy: TcpProxy, checker: aioredis.Redis, l1_impl: str
) -> None:
    """While nothing gets through, ``connect`` fails with a CalRedisError and
    ``close`` of a connected cache returns, each well within the deadline."""
    config = variant_config(variant)
    cache = await CallableCache.connect(proxy.url, config=config)
    await cache.set_user(User(id="u1", name="1"))
    await asyncio.to_thread(proxy.blackhole)
    try:
        with pytest.raises(CalRedisError):
            await asyncio.wait_for(CallableCache.connect(proxy.url, config=config), DEADLINE)
        with pytest.raises(CalRedisError):
            await asyncio.wait_for(cache.get_users_batch(["u1", "u2"]), DEADLINE)
        await asyncio.wait_for(cache.close(), DEADLINE)
    finally:
        await asyncio.to_thread(proxy.forward)
        await cache.close()


# -- the workload ---------------------------------------------------------------------------
def version_of(data: bytes | None) -> int | None:
    """The version a stored user JSON carries (its ``name``), None when absent."""
    return None if data is None else int(json.loads(data)["name"])


@dataclass
class Figures:
    """What one run counted and measured."""

    calls: int = 0
    #: CalRedisErrors raised by cache calls, by class name (expected during faults).
    errors: Counter[str] = field(default_factory=Counter)
    #: Cache calls that outlived DEADLINE, and the longest call that did not (s).
    past_deadline: int = 0
    longest: float = 0.0
    #: Cache calls that raised something else than a CalRedisError (repr each).
    unexpected: list[str] = field(default_factory=list)
    #: Reads of an instance's own ids older than its last acknowledged write when the
    #: read began (read-your-writes broken, or a stale serve by design).
    own_stale: int = 0
    foreign_writes: int = 0
    foreign_errors: Counter[str] = field(default_factory=Counter)
    #: Seconds from the fault's end to the first successful read / write begun after it.
    first_ok: dict[str, float] = field(default_factory=dict)


class Workload:
    """Two caches reading and writing, a foreign writer writing; see the module docstring."""

    def __init__(self, a: CallableCache, b: CallableCache, foreign: aioredis.Redis) -> None:
        self.caches = {"a": a, "b": b}
        self.foreign = foreign
        self.keys = a.keys
        self.config = a.config
        #: The reference write + log + publish script, when gaps are replayed.
        self.log_script = (reference_script()
                           if getattr(a.config, "event_log", "flush") == "replay" else None)
        self.ids = {w: [f"{w}{i}" for i in range(IDS_PER_WRITER)] for w in ("a", "b", "f")}
        self.all_ids = [uid for ids in self.ids.values() for uid in ids]
        self.sent: dict[str, int] = {}  # uid -> last version sent
        self.acked: dict[str, int] = {}  # uid -> last version acknowledged
        self.figures = Figures()
        self.fault_end: float | None = None
        #: ``"before"`` the fault every id of a writer is written; from the fault's
        #: start (``"fault"``) its first :data:`COLD` ids no longer are, so a lost write
        #: or a stale L1 entry of theirs is never covered up by a later write; once the
        #: caches recovered (``"after"``) its first :data:`FROZEN` are not either, so an
        #: event a cache missed during the fault is never covered up by a later one.
        self.phase = "before"
        #: The last writes of each id: (version, began, ended (loop time),
        #: acknowledged), for the message of a failed check.
        self.history: dict[str, deque[tuple[int, float, float, bool]]] = {}
        self.fault_start = 0.0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- one call, under the deadline --------------------------------------------------
    async def _call(self, kind: str, make: Callable[[], Awaitable[Any]]) -> tuple[bool, Any]:
        fig = self.figures
        fig.calls += 1
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            result = await asyncio.wait_for(make(), DEADLINE)
        except CalRedisError as err:
            fig.errors[type(err).__name__] += 1
            return False, None
        except asyncio.TimeoutError:
            fig.past_deadline += 1
            return False, None
        except Exception as err:
            fig.unexpected.append(f"{kind}: {err!r}")
            return False, None
        finally:
            took = loop.time() - began
            if took <= DEADLINE:
                fig.longest = max(fig.longest, took)
        end = self.fault_end
        if end is not None and began >= end and kind not in fig.first_ok:
            fig.first_ok[kind] = loop.time() - end
        return True, result

    # -- the tasks ----------------------------------------------------------------------
    async def seed(self) -> None:
        """Every id written (and acknowledged) once, then both L1s warmed with all of
        them; a call that fails under a loaded machine's noise is made again. The
        figures start afterwards."""
        async def until_acked(write: Callable[[str], Awaitable[object]], uid: str) -> None:
            for _ in range(20):
                await write(uid)
                if uid in self.acked:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"{uid} could not be written before the fault")

        for name, cache in self.caches.items():
            for uid in self.ids[name]:
                await until_acked(lambda u, c=cache: self._write(c, u), uid)
        for uid in self.ids["f"]:
            await until_acked(self.foreign_write, uid)
        for cache in self.caches.values():
            await settled(lambda c=cache: c.get_users_batch(self.all_ids))
        self.figures = Figures()

    def _record(self, uid: str, version: int, began: float, ok: bool) -> None:
        now = asyncio.get_running_loop().time()
        if ok:
            self.acked[uid] = version
        self.history.setdefault(uid, deque(maxlen=3)).append((version, began, now, ok))

    def story(self, uid: str) -> str:
        """The last writes of ``uid`` (for a failed check's message)."""
        t0 = self.fault_start
        writes = [(v, round(b - t0, 3), round(e - t0, 3), ok)
                  for v, b, e, ok in self.history.get(uid, ())]
        return f"{uid} writes (version, began, ended, acked; s after the fault began): {writes}"

    async def _write(self, cache: CallableCache, uid: str) -> None:
        """The next version of ``uid``: a whole-object ``set_user`` or, every other
        time, an ``update_user`` (a compare-and-set against the value it read)."""
        version = self.sent[uid] = self.sent.get(uid, 0) + 1
        if version % 2:
            write = lambda: cache.set_user(User(id=uid, name=str(version)))  # noqa: E731
        else:
            write = lambda: cache.update_user(uid, name=str(version))  # noqa: E731
        began = asyncio.get_running_loop().time()
        ok, _ = await self._call("write", write)
        self._record(uid, version, began, ok)

    def _next_id(self, ids: list[str], n: int) -> str:
        """The ``n``-th id to write: in turn, those :attr:`phase` still writes."""
        pool = ids[{"before": 0, "fault": COLD, "after": FROZEN}[self.phase]:]
        return pool[n % len(pool)]

    async def _writer(self, name: str) -> None:
        cache = self.caches[name]
        ids = self.ids[name]
        n = 0
        while not self._stop.is_set():
            await self._write(cache, self._next_id(ids, n))
            n += 1
            await asyncio.sleep(0.002)

    async def _reader(self, name: str, seed: int) -> None:
        cache = self.caches[name]
        rng = random.Random(seed)
        own = set(self.ids[name])
        while not self._stop.is_set():
            if rng.random() < 0.8:
                uid = rng.choice(self.all_ids)
                floor = self.acked.get(uid, 0) if uid in own else 0
                ok, user = await self._call("read", lambda uid=uid: cache.get_user_by_id(uid))
                if ok and floor and (user is None or int(user.name) < floor):
                    self.figures.own_stale += 1
            else:
                batch = rng.sample(self.all_ids, 8)
                floors = [self.acked.get(u, 0) if u in own else 0 for u in batch]
                ok, users = await self._call("read", lambda batch=batch: cache.get_users_batch(batch))
                if ok:
                    for user, floor in zip(users, floors, strict=True):
                        if floor and (user is None or int(user.name) < floor):
                            self.figures.own_stale += 1
            await asyncio.sleep(0.001)  # L1 hits complete without yielding

    async def foreign_write(self, uid: str) -> bool:
        """Write the user and publish its UserUpdate atomically, as docs/wire-format.md
        says a plain client does: HSET and PUBLISH in one MULTI/EXEC or, when the caches
        replay gaps from the event log, the reference script that also logs the event."""
        version = self.sent[uid] = self.sent.get(uid, 0) + 1
        user = json.dumps({"id": uid, "name": str(version)})
        event = json.dumps({"type": "UserUpdate", "id": uid, "origin": "foreign-writer",
                            "ts": int(time.time() * 1000), "data": json.loads(user)})
        keys, config = self.keys, self.config
        self.figures.foreign_writes += 1
        began = asyncio.get_running_loop().time()
        pipe = self.foreign.pipeline(transaction=True)
        if self.log_script is not None:
            pipe.eval(self.log_script, 2, keys.USERS, keys.table_log(keys.USERS), uid, user,
                      keys.EVENTS, event, int(config.event_log_retention * 1000),
                      config.event_log_max_len)
        else:
            pipe.hset(keys.USERS, uid, user)
            pipe.publish(keys.EVENTS, event)
        try:
            await asyncio.wait_for(pipe.execute(), DEADLINE)
        except Exception as err:  # the plain client's own errors: counted apart
            self.figures.foreign_errors[type(err).__name__] += 1
            self._record(uid, version, began, False)
            return False
        finally:
            await pipe.reset()
        self._record(uid, version, began, True)
        return True

    async def _foreign_writer(self) -> None:
        ids = self.ids["f"]
        n = 0
        while not self._stop.is_set():
            await self.foreign_write(self._next_id(ids, n))
            n += 1
            await asyncio.sleep(0.003)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        jobs = [self._writer("a"), self._writer("b"), self._foreign_writer(),
                self._reader("a", 1), self._reader("a", 2), self._reader("b", 3),
                self._reader("b", 4)]
        self._tasks = [loop.create_task(job) for job in jobs]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


# -- quiescence and the checks --------------------------------------------------------------
async def settled(make: Callable[[], Awaitable[T]]) -> T:
    """A read outside the fault: made again (up to 5 times) if it fails with a
    CalRedisError, as a loaded machine may delay one reply past the short timeouts."""
    for attempt in range(5):
        try:
            return await asyncio.wait_for(make(), DEADLINE)
        except CalRedisError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


class Barrier:
    """An application event published directly after everything else: once every
    cache has seen it, each one's subscription is live and every earlier event has
    been applied (or, for a cache that reconnected meanwhile, its L1 was flushed)."""

    def __init__(self, caches: list[CallableCache]) -> None:
        self.seen: dict[int, set[str]] = {i: set() for i in range(len(caches))}
        for i, cache in enumerate(caches):
            cache.add_event_handler(lambda ev, i=i: self._on(i, ev))

    def _on(self, i: int, event: Event) -> None:
        if event.type == "FaultBarrier":
            self.seen[i].add(event.id)

    async def wait(self, client: aioredis.Redis, channel: str, timeout: float) -> bool:
        """Publish barriers (a new one every second) until one reached every cache;
        False when none did within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        n = 0
        while time.monotonic() < deadline:
            n += 1
            token = f"barrier{n}"
            await client.publish(channel, json.dumps({"type": "FaultBarrier", "id": token}))
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                if all(token in s for s in self.seen.values()):
                    return True
                await asyncio.sleep(0.005)
        return False


async def _wait_connected(caches: list[CallableCache], timeout: float) -> bool:
    """Poll until every cache's sync state is ``connected``; False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not all(c.sync_state.state == "connected" for c in caches):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


# -- the faults -----------------------------------------------------------------------------
@dataclass
class Env:
    server: AofServer
    proxy: TcpProxy
    checker: aioredis.Redis


async def _kills(kill: Callable[[], Awaitable[object]]) -> None:
    """Three kills 0.4 s apart, then a storm: a kill every 10 ms for 0.3 s, so that
    connections are mostly down while the writers go on (each reconnection is killed
    again within milliseconds)."""
    for _ in range(3):
        await kill()
        await asyncio.sleep(0.4)
    storm_end = time.monotonic() + 0.3
    while time.monotonic() < storm_end:
        await kill()
        await asyncio.sleep(0.01)


async def inject(fault: str, env: Env) -> None:
    """Inject ``fault``; return when it has ended (the server is back, the proxy
    forwards)."""
    server, proxy, checker = env.server, env.proxy, env.checker
    if fault == "sigkill":
        await asyncio.to_thread(server.sigkill)
        await asyncio.sleep(DOWN_SECONDS)
        await asyncio.to_thread(server.start)  # same port, same AOF
    elif fault == "sigstop":
        os.kill(server.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(FAULT_SECONDS)
        finally:
            os.kill(server.pid, signal.SIGCONT)
    elif fault in ("kill-pubsub", "kill-normal"):
        kind = fault.split("-")[1]
        await _kills(lambda: checker.client_kill_filter(_type=kind))
    elif fault == "proxy-drop":
        await _kills(lambda: asyncio.to_thread(proxy.drop))
    elif fault == "proxy-delay":
        await asyncio.to_thread(proxy.delay, DELAY_MS)
        try:
            await asyncio.sleep(FAULT_SECONDS)
        finally:
            await asyncio.to_thread(proxy.forward)
    elif fault in ("proxy-blackhole", "proxy-zombie"):
        await asyncio.to_thread(proxy.blackhole)
        try:
            await asyncio.sleep(FAULT_SECONDS)
        finally:
            await asyncio.to_thread(proxy.forward, zombies=fault == "proxy-zombie")
    else:
        raise AssertionError(f"unknown fault {fault!r}")


# -- the report -----------------------------------------------------------------------------
COLUMNS = (
    ("fault", 15), ("variant", 11), ("L1", 2), ("read_ok_s", 9), ("write_ok_s", 10),
    ("sync_ok_s", 9), ("longest_s", 9), ("errors", 6), ("past_dl", 7), ("other_exc", 9), ("stale", 5),
    ("lost", 4), ("own_stale", 9), ("calls", 6), ("foreign_err", 11), ("quiet", 5),
    ("replays", 7), ("stale_serves", 12), ("errors_by_type", 0),
)


def _row(values: dict[str, Any]) -> str:
    return "  ".join(str(values.get(name, "")).rjust(width) for name, width in COLUMNS)


def _header() -> str:
    return "  ".join(name.rjust(width) for name, width in COLUMNS)


def _by_type(errors: Counter[str]) -> str:
    return ",".join(f"{name}:{n}" for name, n in sorted(errors.items())) or "-"


# -- the test -------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fault", FAULTS)
async def test_fault(
    fault: str, variant: str, aof_server: AofServer, proxy: TcpProxy,
    checker: aioredis.Redis, l1_impl: str, report_figures: Callable[[str, str, str], None],
) -> None:
    config = variant_config(variant)
    url = proxy.url if fault in PROXY_FAULTS else aof_server.url
    env = Env(aof_server, proxy, checker)
    a = await CallableCache.connect(url, config=config)
    b = await CallableCache.connect(url, config=config)
    foreign = aioredis.Redis.from_url(aof_server.url, socket_timeout=0.5,
                                      socket_connect_timeout=0.5)
    try:
        work = Workload(a, b, foreign)
        await work.seed()
        work.start()
        await asyncio.sleep(0.4)
        wall_start = time.time()
        work.fault_start = asyncio.get_running_loop().time()
        work.phase = "fault"
        await inject(fault, env)
        loop = asyncio.get_running_loop()
        work.fault_end = loop.time()
        wall_end = time.time()
        # Recovery: a read and a write begun after the fault succeeded, both caches
        # connected; then a moment of normal operation.
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while not ({"read", "write"} <= work.figures.first_ok.keys()
                   and all(c.sync_state.state == "connected" for c in (a, b))):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        work.phase = "after"
        await asyncio.sleep(0.3)
        await work.stop()
        # Quiescence: both connected, a barrier event seen by both.
        # (Not reached: the checks below still run, to show what a cache then serves.)
        connected = await _wait_connected([a, b], RECOVERY_TIMEOUT)
        quiet = connected and await Barrier([a, b]).wait(checker, a.keys.EVENTS,
                                                         RECOVERY_TIMEOUT)
        since = max(c.sync_state.since for c in (a, b)) / 1000.0
        sync_ok = max(0.0, since - wall_end)
        lost_sync = sum(c.sync_state.disconnects for c in (a, b))
        served_stale = sum(c.stats().get("stale_serves", 0) for c in (a, b))
        # The checks: every id through both caches (L1 first, twice: the second read
        # is the L1 entry the first may have filled) against Redis.
        truth = dict(zip(work.all_ids,
                         await checker.hmget(a.keys.USERS, work.all_ids), strict=True))
        stale: list[str] = []
        for name, cache in (("a", a), ("b", b)):
            for _ in range(2):
                for uid in work.all_ids:
                    got = await settled(lambda c=cache, u=uid: c.get_user_by_id(u))
                    want = version_of(truth[uid])
                    if (None if got is None else int(got.name)) != want:
                        stale.append(f"{name} read {got and got.name} redis {want}: "
                                     f"{work.story(uid)}")
        stale_after = sum(c.stats().get("stale_serves", 0) for c in (a, b)) - served_stale
        lost = [f"redis {version_of(truth[uid])} < acked {v}: {work.story(uid)}"
                for uid, v in work.acked.items()
                if (version_of(truth[uid]) or 0) < v]
        fig = work.figures
        values = {
            "fault": fault, "variant": variant, "L1": l1_impl,
            "read_ok_s": f"{fig.first_ok['read']:.2f}" if "read" in fig.first_ok else "-",
            "write_ok_s": f"{fig.first_ok['write']:.2f}" if "write" in fig.first_ok else "-",
            "sync_ok_s": f"{sync_ok:.2f}", "longest_s": f"{fig.longest:.2f}",
            "errors": sum(fig.errors.values()),
            "past_dl": fig.past_deadline, "other_exc": len(fig.unexpected),
            "stale": len(stale), "lost": len(lost), "own_stale": fig.own_stale,
            "calls": fig.calls, "foreign_err": sum(fig.foreign_errors.values()),
            "quiet": "yes" if quiet else "NO", "errors_by_type": _by_type(fig.errors),
            "replays": sum(getattr(c.sync_state, "replays", 0) for c in (a, b)),
            "stale_serves": served_stale,
        }
        report_figures("fault suite", _header(), _row(values))
        summary = (f"{fault}/{variant} [{wall_end - wall_start:.1f} s fault, {lost_sync} "
                   f"subscription losses]: {values}; errors {dict(fig.errors)}, "
                   f"foreign errors {dict(fig.foreign_errors)}")
        assert quiet, (f"no quiescence within {RECOVERY_TIMEOUT} s (both connected: "
                       f"{connected}, then a barrier event seen by both: no); stale reads "
                       f"{stale[:5]}: {summary}")
        assert {"read", "write"} <= fig.first_ok.keys(), f"no recovery: {summary}"
        assert fig.past_deadline == 0, f"calls past their deadline: {summary}"
        assert not fig.unexpected, f"{fig.unexpected[:5]}: {summary}"
        assert not lost, f"acknowledged writes lost {lost[:5]}: {summary}"
        assert not stale, f"stale reads after quiescence {stale[:5]}: {summary}"
        assert stale_after == 0, f"{stale_after} values served stale after quiescence: {summary}"
        assert fig.own_stale == 0, f"read-your-writes broken: {summary}"
        if work.log_script is not None:  # every event was logged: replay stayed on
            assert all(c.sync_state.unlogged == 0 for c in (a, b)), summary
    finally:
        for cache in (a, b):
            await cache.close()
        await foreign.aclose()
