"""What a Redis-protocol server says it is, from its ``INFO server`` section."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ("describe_server",)


def describe_server(info: Mapping[str, object]) -> str:
    """The server's name and its own version: ``"redis 7.0.15"``, ``"valkey 9.0.1"``.

    Valkey reports ``server_name:valkey`` and ``valkey_version``; its ``redis_version``
    is a fixed compatibility value (7.2.4), not the version of the server.
    """
    name = str(info.get("server_name") or "redis").strip().lower() or "redis"
    version = info.get(f"{name}_version") or info.get("redis_version") or "unknown"
    return f"{name} {version}"
