"""A loopback TCP proxy that injects network faults between caches and Redis.

:class:`TcpProxy` listens on ``127.0.0.1`` (a free port) and forwards every connection
to a target port, in a thread with an event loop of its own, so that what the proxy
does never depends on the test's event loop being responsive (it is "the network").
Its modes, switched at any time from the test:

``forward()``
    Pass bytes through as they come (the default). Also ends ``delay`` and
    ``blackhole``.
``delay(ms)``
    Hold every chunk ``ms`` milliseconds after it was received before passing it on,
    in both directions (latency, not a bandwidth cap: chunks are not serialised behind
    each other's delays; order is kept).
``drop()``
    Close every current connection, both sides, at once (the server and the client
    each see the connection end); new ones are forwarded.
``blackhole()``
    Forward nothing: bytes from either side are held, connections stay open, new ones
    are accepted but not connected to the target. ``forward()`` ends it in one of two
    ways:

    * ``forward()`` (a partition that heals): the held bytes are delivered in order,
      as TCP retransmission would, and connections accepted meanwhile are connected
      to the target. A connection the client gave up on meanwhile still delivers
      what it had sent (a request that timed out at the client may still run).
    * ``forward(zombies=True)`` (the path died for good, e.g. the server side dropped
      the connections while they were unreachable): every connection that existed
      during the black hole stays silent for ever - its target side is closed, its
      client side stays open and gets nothing, and nothing it sends is delivered -
      while new connections are forwarded. Only a client-side timeout or heartbeat
      can notice such a connection.

Example::

    with TcpProxy(6379) as proxy:
        url = proxy.url          # redis://127.0.0.1:<port>/0
        proxy.blackhole()
        ...
        proxy.forward()
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

__all__ = ("TcpProxy",)

T = TypeVar("T")
_CHUNK = 65536


class _Link:
    """One proxied connection: the client side, the target side once connected, and
    the tasks moving bytes between them."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.target: asyncio.StreamWriter | None = None
        #: The task handling the link, the one reading the client, and the others.
        self.handler = asyncio.current_task()
        self.client_reader: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        #: Set when the link became a zombie: nothing more is delivered either way.
        self.zombie = False
        self.closed = False

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        for task in (self.handler, self.client_reader, *self.tasks):
            if task is not None and task is not current:
                task.cancel()
        for writer in (self.client, self.target):
            if writer is None:
                continue
            if abort:
                writer.transport.abort()
            else:
                writer.close()


class TcpProxy:
    """See the module docstring. ``target_port`` on ``target_host`` (loopback)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = "127.0.0.1"
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing: asyncio.Event | None = None
        self._delay = 0.0
        self._mode = "forward"
        #: Connections accepted so far (for the test's figures).
        self.accepted = 0

    # -- lifecycle (called from the test's thread) ---------------------------------------
    @property
    def url(self) -> str:
        """A ``redis://`` URL of the proxy (database 0)."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def mode(self) -> str:
        """``"forward"``, ``"delay"`` or ``"blackhole"``."""
        return self._mode

    def start(self) -> TcpProxy:
        """Start the proxy's thread and listening socket; return self."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        """Close every connection and the listening socket, then end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- faults (called from the test's thread; each returns once in effect) -------------
    def forward(self, *, zombies: bool = False) -> None:
        """Forward again (ends ``delay`` and ``blackhole``); see the module docstring
        for ``zombies``."""
        self._call(self._forward(zombies))

    def delay(self, ms: float) -> None:
        """Hold every chunk ``ms`` milliseconds before passing it on."""
        self._call(self._set_delay(ms / 1000.0))

    def drop(self) -> int:
        """Close every current connection; return how many were closed."""
        return self._call(self._drop())

    def blackhole(self) -> None:
        """Forward nothing until :meth:`forward`; accept new connections meanwhile."""
        self._call(self._blackhole())

    def connections(self) -> int:
        """Connections open now (client side)."""
        return self._call(self._count())

    # -- the proxy's own loop ------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None, "the proxy is not running"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close(abort=True)
        self._links.clear()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)  # let cancelled tasks finish

    async def _forward(self, zombies: bool) -> None:
        assert self._flowing is not None
        if zombies and self._mode == "blackhole":
            for link in self._links:
                link.zombie = True
                if link.target is not None:
                    link.target.transport.abort()  # the server side is gone
        self._delay = 0.0
        self._mode = "forward"
        self._flowing.set()

    async def _set_delay(self, seconds: float) -> None:
        assert self._flowing is not None
        self._delay = seconds
        self._mode = "delay"
        self._flowing.set()

    async def _blackhole(self) -> None:
        assert self._flowing is not None
        self._mode = "blackhole"
        self._flowing.clear()

    async def _drop(self) -> int:
        links = list(self._links)
        for link in links:
            link.close(abort=True)
            self._links.discard(link)
        return len(links)

    async def _count(self) -> int:
        return sum(1 for link in self._links if not link.closed)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer)
        self._links.add(link)
        loop = asyncio.get_running_loop()
        upstream: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        downstream: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        try:
            # Read the client at once (held while black-holed), connect the target
            # only when bytes may flow.
            link.client_reader = loop.create_task(self._read(reader, upstream))
            assert self._flowing is not None
            await self._flowing.wait()
            if link.zombie or link.closed:
                await self._hold(link)
                return
            target_reader, target = await asyncio.open_connection(self.target_host, self.target_port)
            link.target = target
            link.tasks.add(loop.create_task(self._read(target_reader, downstream)))
            senders = {
                loop.create_task(self._send(link, upstream, target)),
                loop.create_task(self._send(link, downstream, writer)),
            }
            link.tasks |= senders
            await asyncio.wait(senders, return_when=asyncio.FIRST_COMPLETED)
            if link.zombie:
                await self._hold(link)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            link.close()
            self._links.discard(link)

    async def _hold(self, link: _Link) -> None:
        """A zombie: keep the client side open, deliver nothing, until it closes."""
        if link.client_reader is not None:
            await asyncio.wait({link.client_reader})

    async def _read(self, reader: asyncio.StreamReader,
                    queue: asyncio.Queue[tuple[float, bytes | None]]) -> None:
        """Put every chunk read, stamped with when it is due, on ``queue``; None at EOF."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(_CHUNK)
                queue.put_nowait((loop.time() + self._delay, data or None))
                if not data:
                    return
        except OSError:
            queue.put_nowait((loop.time(), None))

    async def _send(self, link: _Link, queue: asyncio.Queue[tuple[float, bytes | None]],
                    writer: asyncio.StreamWriter) -> None:
        """Write the chunks of ``queue`` when due and while flowing; return at EOF."""
        loop = asyncio.get_running_loop()
        assert self._flowing is not None
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._flowing.wait()
            if link.zombie:
                return
            if data is None:
                return
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                return
