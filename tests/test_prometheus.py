"""``serve_prometheus`` scraped by a real Prometheus server (Debian's ``prometheus``
package), started here on loopback with a config and a data directory of its own, and
asked through its HTTP API for the L1 hit counter and the event-lag histogram."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cal_redis import CacheConfig, CallableCache, ConfigurationError, User, metrics
from cal_redis.embedded import _free_port
from waiting import until

PROMETHEUS = shutil.which("prometheus")


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


class Prometheus:
    """A prometheus server scraping ``target`` every 200 ms, on a free loopback port."""

    def __init__(self, binary: str, target: str, workdir: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n"
            "scrape_configs:\n  - job_name: cal_redis\n"
            f"    static_configs:\n      - targets: ['{target}']\n",
            encoding="utf-8",
        )
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}")
            try:
                if _get(self.base + "/-/ready").strip():
                    return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("prometheus not ready")
            time.sleep(0.1)

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = self.base + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        reply = json.loads(_get(url))
        assert reply["status"] == "success", reply
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def endpoint() -> Iterator[metrics.PrometheusEndpoint]:
    ep = metrics.serve_prometheus(port=0, addr="127.0.0.1")
    try:
        yield ep
    finally:
        ep.close()


async def _until_value(prom: Prometheus, promql: str, want: float, timeout: float = 20.0) -> float:
    """Poll ``promql`` (one series) until its value is ``want``; return it."""
    deadline = time.monotonic() + timeout
    got: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        got = await asyncio.to_thread(prom.query, promql)
        if len(got) == 1 and float(got[0]["value"][1]) == want:
            return want
        await asyncio.sleep(0.2)
    raise AssertionError(f"{promql}: wanted {want}, got {got}")


@pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus binary is not installed "
                    "(Debian: apt-get install prometheus; .ci/run installs it)")
async def test_prometheus_scrapes_hits_and_event_lag(redis_url: str, tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    # Connected before the endpoint starts: bound when it does.
    cache = await CallableCache.connect(redis_url)
    writer = await CallableCache.connect(redis_url, config=CacheConfig(metrics=False))
    ep = metrics.serve_prometheus(port=0, addr="127.0.0.1")
    prom = None
    try:
        assert cache._metrics.binding is not None and writer._metrics.binding is None
        for i in range(20):
            await writer.set_user(User(id=f"u{i}", name="v1"))
        await until(lambda: cache.sync_state.applied >= 20, what="events applied")
        for i in range(20):
            assert await cache.get_user_by_id(f"u{i}") is not None  # misses, fills
        for _ in range(5):
            for i in range(20):
                await cache.get_user_by_id(f"u{i}")  # hits
        hits = cache.local["users"].hits
        assert hits >= 100
        page = (await asyncio.to_thread(_get, ep.url)).decode()
        assert 'cal_redis_l1_hits_total{cal_redis_namespace="users"' in page

        prom = Prometheus(PROMETHEUS, f"127.0.0.1:{ep.port}", tmp_path)
        await asyncio.to_thread(prom.wait_ready)
        await _until_value(prom, 'cal_redis_l1_hits_total{cal_redis_namespace="users"}', hits)
        await _until_value(
            prom, 'cal_redis_sync_event_lag_seconds_count{cal_redis_namespace="users"}', 20)
        (lag_sum,) = await asyncio.to_thread(
            prom.query, 'cal_redis_sync_event_lag_seconds_sum{cal_redis_namespace="users"}')
        assert 0 < float(lag_sum["value"][1]) < 20  # 20 events, each well under a second
        buckets = await asyncio.to_thread(
            prom.query, 'cal_redis_sync_event_lag_seconds_bucket{cal_redis_namespace="users"}')
        inf = [float(b["value"][1]) for b in buckets if b["metric"]["le"] == "+Inf"]
        assert inf == [20.0] and len(buckets) == len(metrics.SECONDS_BUCKETS) + 1
        median = await asyncio.to_thread(
            prom.query, 'histogram_quantile(0.5, cal_redis_sync_event_lag_seconds_bucket'
            '{cal_redis_namespace="users"})')
        assert 0 < float(median[0]["value"][1]) < 1.0
        # More hits are seen by the next scrapes.
        for i in range(20):
            await cache.get_user_by_id(f"u{i}")
        await _until_value(prom, 'cal_redis_l1_hits_total{cal_redis_namespace="users"}',
                           hits + 20)
        (up,) = await asyncio.to_thread(prom.query, 'up{job="cal_redis"}')
        assert up["value"][1] == "1"
    finally:
        if prom is not None:
            await asyncio.to_thread(prom.stop)
        ep.close()
        await writer.close()
        await cache.close()
    assert cache._metrics.binding is None


def test_one_endpoint_at_a_time(endpoint: metrics.PrometheusEndpoint) -> None:
    assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
    with pytest.raises(ConfigurationError, match="already serving"):
        metrics.serve_prometheus(port=0)
    with urllib.request.urlopen(endpoint.url, timeout=2) as resp:  # answers, nothing bound
        assert resp.status == 200
    endpoint.close()
    endpoint.close()  # idempotent
    with metrics.serve_prometheus(port=0) as again:
        assert again.port > 0


def test_a_busy_port_is_a_configuration_error(endpoint: metrics.PrometheusEndpoint) -> None:
    endpoint.close()
    with metrics.serve_prometheus(port=0) as first:
        first.close()  # frees the slot; keep its socket busy with a plain listener
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConfigurationError, match="cannot serve metrics"):
            metrics.serve_prometheus(port=s.getsockname()[1])


async def test_every_metric_is_exposed(redis_url: str, endpoint: metrics.PrometheusEndpoint) -> None:
    """The endpoint's page names every metric of the table, as docs/observability.md
    says the exporter names them."""
    cache = await CallableCache.connect(redis_url)
    writer = await CallableCache.connect(redis_url, config=CacheConfig(metrics=False))
    try:
        await writer.set_user(User(id="u1"))
        await until(lambda: cache.sync_state.applied >= 1, what="event applied")
        await cache.get_users_batch(["u1", "u2"])
        page = (await asyncio.to_thread(_get, endpoint.url)).decode()
    finally:
        await writer.close()
        await cache.close()
    exposed = {line.split("{")[0].split(" ")[0] for line in page.splitlines()
               if line and not line.startswith("#")}
    for m in metrics.METRICS:
        want = m.prometheus + ("_bucket" if m.instrument == "histogram" else "")
        assert want in exposed, m.name
