"""Coalesced reads: concurrent misses of one hash become one HMGET.

A lone read is sent at once as an ``HGET`` (no added tick of latency when nothing else
is waiting). Reads of the same hash that arrive while another read of it is in flight
are collected until the end of the current event-loop tick and sent together as one
``HMGET`` (chunked as batches are), in its own task: the DataLoader pattern. Each
caller gets its own value (or the round trip's error); decoding, checks and fills stay
with each caller, so a corrupt value fails only the caller that asked for it. A caller
that is cancelled leaves the others and the round trip alone (it cancels only its own
waiter).
Single-flight per key sits above this (a key is read by one caller at a time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..remote import Remote

__all__ = ("HashReader",)


class HashReader:
    """Field reads of one Redis hash, coalesced (see the module docstring)."""

    __slots__ = ("_busy", "_hget", "_hmget", "_key", "_on_idle", "_queue", "_remote", "_tasks")

    def __init__(
        self, remote: Remote, key: str, on_idle: Callable[[str], object] | None = None
    ) -> None:
        self._remote = remote
        self._key = key
        self._hget = "HGET " + key
        self._hmget = "HMGET " + key
        self._busy = 0  # reads of this hash in flight
        # (field, waiter) of the reads waiting for the next HMGET: one waiter per
        # caller (a field asked twice is sent twice), so a caller that is cancelled
        # cancels only its own waiter, and no shield is needed.
        self._queue: list[tuple[str, asyncio.Future[bytes | None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_idle = on_idle

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing waiting."""
        return not self._busy and not self._queue

    async def get(self, field: str) -> bytes | None:
        """The value of ``field`` (None when absent)."""
        if not self._busy:
            remote = self._remote
            self._busy += 1
            try:
                raw: bytes | None = await remote.read(self._hget, remote.cmd.hget, self._key, field)
                return raw
            finally:
                self._busy -= 1
                if self._on_idle is not None and self.idle:
                    self._on_idle(self._key)
        queue = self._queue
        loop = asyncio.get_running_loop()
        if not queue:
            loop.call_soon(self._send)
        waiter: asyncio.Future[bytes | None] = loop.create_future()
        queue.append((field, waiter))
        return await waiter

    def _send(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:  # pragma: no cover - a tick always queues before it schedules
            return
        self._busy += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[str, asyncio.Future[bytes | None]]]) -> None:
        try:
            raws = await self._remote.hmget(self._hmget, self._key, [f for f, _ in batch])
        except asyncio.CancelledError:
            for _, waiter in batch:
                waiter.cancel()
            raise
        except BaseException as err:
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(err)
                    waiter.exception()  # retrieved: each caller re-raises it
            if not isinstance(err, Exception):
                raise
        else:
            for (_, waiter), raw in zip(batch, raws, strict=True):
                if not waiter.done():  # a cancelled caller cancelled its own waiter
                    waiter.set_result(raw)
        finally:
            self._busy -= 1
            if self._on_idle is not None and self.idle:
                self._on_idle(self._key)
