"""The exception hierarchy of cal-redis.

Every failure the library raises is a :class:`CalRedisError`. Redis client
exceptions never leak unwrapped: they are re-raised as one of these classes with
the original chained (``raise ... from err``).
"""

from __future__ import annotations

__all__ = (
    "BackupFormatError",
    "CalRedisError",
    "ClosedError",
    "ConfigurationError",
    "ConnectionError",
    "NotFoundError",
    "RedisError",
    "SerializationError",
    "TimeoutError",
    "ValidationError",
)


class CalRedisError(Exception):
    """Base class of every error raised by cal-redis."""


#: The seed's name for the root error, kept as an alias.
RedisError = CalRedisError


class ConfigurationError(CalRedisError):
    """The library is misconfigured (e.g. no Redis URL and no ``CAL_VALKEY_HOST``)."""


class ClosedError(CalRedisError):
    """The cache was closed: no method does I/O any more (nothing reconnects)."""


class ConnectionError(CalRedisError):
    """Redis could not be reached, or the connection broke mid-command."""


class TimeoutError(ConnectionError):
    """A Redis command or connection attempt timed out."""


class SerializationError(CalRedisError):
    """A value could not be encoded or decoded (bad JSON, wrong shape).

    ``key`` names the Redis key (and ``field`` the hash field) that held it.
    """

    def __init__(self, message: str, *, key: str | None = None, field: str | None = None) -> None:
        where = ""
        if key is not None:
            where = f" (key {key!r}" + (f", field {field!r})" if field is not None else ")")
        super().__init__(message + where)
        self.key = key
        self.field = field


class ValidationError(CalRedisError, ValueError):
    """An argument is invalid; nothing was sent to Redis.

    ``argument`` names the offending parameter.
    """

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"invalid {argument}: {message}")
        self.argument = argument


class NotFoundError(CalRedisError, LookupError):
    """A method that promises a value found none."""

    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"{what} {ident!r} not found")
        self.what = what
        self.ident = ident


class BackupFormatError(CalRedisError):
    """A backup file is corrupt or truncated; ``line`` is the first line that is not
    right (1 = the header). Nothing from that line on was applied."""

    def __init__(self, message: str, *, line: int) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
