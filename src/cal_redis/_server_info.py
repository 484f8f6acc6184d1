"""What a Redis-protocol server says it is, from its ``INFO server`` section, and
whether this library supports it (:data:`MIN_SERVER_VERSIONS`, checked at connect)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import ConfigurationError

__all__ = (
    "MIN_SERVER_VERSIONS",
    "check_server_version",
    "describe_server",
    "server_version",
    "supported_servers",
)

#: The oldest server of each name this library supports, as (major, minor): Redis 7.0
#: and Valkey 8.0 (CI runs the suite on Redis 7.0 and Valkey 9). The library itself
#: relies on Redis 6.0 commands and options (``SET ... KEEPTTL``, RESP3 through
#: ``HELLO``, ``BZPOPMIN`` with a fractional timeout); the floor is the oldest release
#: it is tested on, older ones being out of their vendors' support. A server of
#: another name (a Redis-compatible one) is held to the Redis floor through the
#: ``redis_version`` it reports.
MIN_SERVER_VERSIONS: dict[str, tuple[int, int]] = {"redis": (7, 0), "valkey": (8, 0)}

_VERSION = re.compile(r"(\d+)\.(\d+)")


def _name(info: Mapping[str, object]) -> str:
    return str(info.get("server_name") or "redis").strip().lower() or "redis"


def describe_server(info: Mapping[str, object]) -> str:
    """The server's name and its own version: ``"redis 7.0.15"``, ``"valkey 9.0.1"``.

    Valkey reports ``server_name:valkey`` and ``valkey_version``; its ``redis_version``
    is a fixed compatibility value (7.2.4), not the version of the server.
    """
    name = _name(info)
    version = info.get(f"{name}_version") or info.get("redis_version") or "unknown"
    return f"{name} {version}"


def server_version(info: Mapping[str, object]) -> tuple[str, tuple[int, int] | None]:
    """The name the minimum applies to and the (major, minor) held against it.

    ``("valkey", (9, 0))`` for Valkey 9.0.1; a server of another name is judged by
    its ``redis_version`` under the name ``"redis"``; None when no version parses.
    """
    name = _name(info)
    raw = info.get(f"{name}_version") if name in MIN_SERVER_VERSIONS else info.get("redis_version")
    name = name if name in MIN_SERVER_VERSIONS else "redis"
    match = _VERSION.match(str(raw or "").strip())
    return name, (int(match[1]), int(match[2])) if match else None


def supported_servers() -> str:
    """The minimums in words: ``"Redis 7.0+, Valkey 8.0+"``."""
    return ", ".join(f"{n.capitalize()} {a}.{b}+" for n, (a, b) in MIN_SERVER_VERSIONS.items())


def check_server_version(info: Mapping[str, object], where: str) -> None:
    """Raise :class:`~cal_redis.errors.ConfigurationError` when the server described by
    ``info`` (its ``INFO server`` section) is older than :data:`MIN_SERVER_VERSIONS`.

    ``where`` names the server in the message (a redacted URL). A server that reports
    no parsable version is let through: there is nothing to hold against the floor.
    """
    name, version = server_version(info)
    floor = MIN_SERVER_VERSIONS[name]
    if version is None or version >= floor:
        return
    raise ConfigurationError(
        f"the server at {where} is {describe_server(info)}, older than cal-redis supports "
        f"({supported_servers()}; docs/configuration.md, \"Servers\"): upgrade it, or point the "
        "cache at a newer one"
    )
