"""Sends that cannot block skip redis-py's per-send ``asyncio.wait_for``.

With a socket timeout set, redis-py wraps every send in ``asyncio.wait_for``, which on
Python 3.11 creates a task per command: about a tenth of the client's work on an L2
hit. A send can only wait when the transport's write buffer is over its high-water
mark; when the buffer plus the command stays at or under it, the write goes to the
transport and ``drain()`` returns at once, so there is nothing to time. Such sends
take redis-py's own untimed branch; every other send (a large value, a backed-up
socket) keeps the timed one, so every call stays bounded in time. Reads keep
redis-py's read timeout.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import AbstractConnection

__all__ = ("unblocked_sends",)

_made: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _fits(self: Any, command: Any) -> bool:
    writer = getattr(self, "_writer", None)
    if writer is None or self.health_check_interval:
        return False
    transport = writer.transport
    try:
        high = transport.get_write_buffer_limits()[1]
        buffered = transport.get_write_buffer_size()
    except (AttributeError, NotImplementedError):  # pragma: no cover - exotic transports
        return False
    size = len(command) if isinstance(command, bytes | str) else sum(map(len, command))
    return bool(buffered + size <= high)


def unblocked_sends(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` whose sends that cannot block are not wrapped in ``wait_for``."""
    if getattr(cls, "_cal_unblocked_sends", False):
        return cls
    made = _made.get(cls)
    if made is None:

        async def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
            timeout = self.socket_timeout
            if timeout and self.is_connected and _fits(self, command):
                self.socket_timeout = None  # this connection is ours until the send returns
                try:
                    await cls.send_packed_command(self, command, check_health)
                finally:
                    self.socket_timeout = timeout
                return
            await cls.send_packed_command(self, command, check_health)

        made = type(
            cls.__name__,
            (cls,),
            {
                "send_packed_command": send_packed_command,
                "_cal_unblocked_sends": True,
                "__module__": cls.__module__,
                "__doc__": cls.__doc__,
            },
        )
        _made[cls] = made
    return made
