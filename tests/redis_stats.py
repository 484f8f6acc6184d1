"""Counting the commands a real redis-server executed (INFO commandstats)."""

from __future__ import annotations

from typing import Any

import redis

# The sync subscriber's heartbeat (PING), a test's own INFO/CONFIG calls, the cluster
# topology watch (CLUSTER SLOTS/INFO) and the handshake of a connection opened
# meanwhile (HELLO, CLIENT SETINFO, SELECT) and a cluster replica's REPLCONF ACK to its
# master (once a second) are not I/O of the operation under test.
IGNORED = (
    "cmdstat_info", "cmdstat_config", "cmdstat_ping", "cmdstat_cluster",
    "cmdstat_hello", "cmdstat_client", "cmdstat_select", "cmdstat_replconf",
)


def reset_stats(raw: Any) -> None:
    """CONFIG RESETSTAT on the server, or on every node of a cluster."""
    if isinstance(raw, redis.RedisCluster):
        for node in raw.get_nodes():
            raw.get_redis_connection(node).config_resetstat()
    else:
        raw.config_resetstat()


def commandstats(raw: Any) -> list[dict[str, Any]]:
    """``INFO commandstats`` of the server, or of every node of a cluster."""
    if isinstance(raw, redis.RedisCluster):
        return [raw.get_redis_connection(n).info("commandstats") for n in raw.get_nodes()]
    return [raw.info("commandstats")]


def calls(raw: Any, command: str) -> int:
    """How many times ``command`` (lower case, e.g. ``"hget"``) ran since CONFIG RESETSTAT."""
    return sum(int(s.get(f"cmdstat_{command}", {}).get("calls", 0)) for s in commandstats(raw))


def calls_by_command(raw: Any) -> dict[str, int]:
    """Calls per command since CONFIG RESETSTAT (all nodes), except :data:`IGNORED`."""
    out: dict[str, int] = {}
    for stats in commandstats(raw):
        for k, v in stats.items():
            if k.split("|")[0] not in IGNORED:
                out[k] = out.get(k, 0) + int(v["calls"])
    return out


def total_calls(raw: Any) -> int:
    """Every command run since CONFIG RESETSTAT, except those in :data:`IGNORED`."""
    return sum(calls_by_command(raw).values())


async def assert_rejected_before_io(
    cache: Any, raw: redis.Redis, method: str, args: tuple[Any, ...], argument: str
) -> None:
    """``cache.<method>(*args)`` raises ValidationError naming ``argument`` and sends
    no command to Redis."""
    import pytest

    from cal_redis import ValidationError

    reset_stats(raw)
    before = calls_by_command(raw)
    with pytest.raises(ValidationError) as info:
        await getattr(cache, method)(*args)
    assert info.value.argument == argument
    assert calls_by_command(raw) == before


def data_keys(raw: redis.Redis) -> list[bytes]:
    """Every key in Redis but the key-style marker every cache records at connect."""
    from cal_redis.keys import LAYOUT_KEY

    return sorted(k for k in raw.keys("*") if k != LAYOUT_KEY.encode())


def client_of(cache: Any, key: str) -> Any:
    """The cache's own redis-py client of the server holding ``key`` (on a cluster,
    the client of that slot's master), to hook replies in tests."""
    remote = cache.remote
    return remote.node(remote.node_of(key)) if remote.is_cluster else remote.client


def url_of(cache: Any, key: str) -> str:
    """A single-server URL of the server holding ``key`` (on a cluster, its master)."""
    remote = cache.remote
    if not remote.is_cluster:
        return str(remote.url)
    host, _, port = remote.node_of(key).rpartition(":")
    return str(remote.parsed.node_url(host, int(port)))


def kill_clients(raw: Any, kind: str) -> int:
    """CLIENT KILL TYPE ``kind`` on the server, or on every node of a cluster."""
    if isinstance(raw, redis.RedisCluster):
        return sum(
            int(raw.get_redis_connection(n).client_kill_filter(_type=kind)) for n in raw.get_nodes()
        )
    return int(raw.client_kill_filter(_type=kind))


def numsub(raw: Any, channel: str) -> int:
    """Subscribers of ``channel`` on the server, or on all nodes of a cluster."""
    if isinstance(raw, redis.RedisCluster):
        return sum(
            int(raw.get_redis_connection(n).pubsub_numsub(channel)[0][1]) for n in raw.get_nodes()
        )
    return int(raw.pubsub_numsub(channel)[0][1])


def server_url(raw: Any, redis_url: str, key: str) -> str:
    """A single-server URL of the server holding ``key`` (a cluster: its master)."""
    if isinstance(raw, redis.RedisCluster):
        node = raw.get_node_from_key(key)
        return f"redis://{node.host}:{node.port}/0"
    return redis_url


def pause(raw: Any, ms: int) -> None:
    """CLIENT PAUSE on the server, or on every node of a cluster."""
    if isinstance(raw, redis.RedisCluster):
        for node in raw.get_nodes():
            raw.get_redis_connection(node).client_pause(ms)
    else:
        raw.client_pause(ms)


def _nodes(raw: Any) -> list[Any]:
    if isinstance(raw, redis.RedisCluster):
        return [raw.get_redis_connection(n) for n in raw.get_nodes()]
    return [raw]


class SubscriptionGap:
    """A gap in every default-user event subscription while writes go on.

    ``ACL SETUSER default resetchannels`` disconnects the subscribers of the default user
    (and refuses their re-subscriptions) on every node, while clients of the ``writer``
    user (:attr:`url`) keep writing and publishing; :meth:`end` gives the channels back.
    """

    USER = "writer"
    PASSWORD = "writer-secret"

    def __init__(self, raw: Any, redis_url: str) -> None:
        self.nodes = _nodes(raw)
        for node in self.nodes:
            node.execute_command("ACL", "SETUSER", self.USER, "on", ">" + self.PASSWORD,
                                 "~*", "&*", "+@all")
        scheme, _, rest = redis_url.partition("://")
        #: The URL of the writer user (its writes and events go on during the gap).
        self.url = f"{scheme}://{self.USER}:{self.PASSWORD}@{rest}"

    def begin(self) -> None:
        for node in self.nodes:
            node.execute_command("ACL", "SETUSER", "default", "resetchannels")

    def end(self) -> None:
        for node in self.nodes:
            node.execute_command("ACL", "SETUSER", "default", "allchannels")

    def close(self) -> None:
        self.end()
        for node in self.nodes:
            node.execute_command("ACL", "DELUSER", self.USER)
