"""The bench's machinery: statistics, interleaving, verdicts, the table, and short runs of
the propagation and concurrent-writers measurements. Nothing here asserts a timing:
the figures themselves are gated by ``python -m cal_redis bench`` (docs/benchmarks.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from cal_redis.bench import format_table, interleave, measure_propagation
from cal_redis.bench._runner import Result, Stats
from cal_redis.bench._writers import WRITERS_ROW, Throughput, measure_writers


def test_stats_median_p99_min() -> None:
    s = Stats.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median, s.p99, s.min, s.n) == (3.0, 5.0, 1.0, 5)
    assert s.get("p50") == 3.0 and s.get("min") == 1.0


async def test_interleave_alternates_block_by_block_and_thins_slow_sides() -> None:
    calls: list[str] = []

    def side(name: str) -> Any:
        async def run(n: int) -> list[float]:
            calls.extend([name] * n)
            return [1.0] * n
        return run

    out = await interleave({"a": side("a"), "b": side("b"), "slow": side("slow")}, rounds=8,
                           per_round=1, warmup=0, side_every={"slow": 4})
    # "slow" runs in rounds 0 and 1 of every 8 (so in both orders), the others in all.
    assert calls == ["a", "b", "slow", "slow", "b", "a", *["a", "b", "b", "a"] * 3]
    assert len(out["a"]) == len(out["b"]) == 8 and len(out["slow"]) == 2


def _result(**kw: Any) -> Result:
    base = dict(key="k", label="row", baseline="base", ours=Stats(2.0, 3.0, 1.2, 9),
                base=Stats(1.0, 2.0, 1.0, 9), stat="min", ratio=1.2, gate=1.5, goal=None,
                seed=None, seed_text="", trips=1, base_trips=1)
    base.update(kw)
    return Result(**base)  # type: ignore[arg-type]


def test_result_verdicts() -> None:
    assert _result().passed
    assert not _result(ratio=1.51).passed
    assert not _result(ratio=float("nan")).passed  # nothing measured is no pass
    assert not _result(trips=2).passed
    assert not _result(problem="the peer's L1 did not hold the value").passed


def _throughput(**kw: Any) -> Throughput:
    base = dict(key="w", label="writers", baseline="raw writers", ours_per_s=100.0,
                base_per_s=1000.0, ratio=0.1, goal=0.8, min_ratio=None, writes=200,
                base_writes=2000, failures=0, errors={}, window_s=1.0, rounds=2)
    base.update(kw)
    return Throughput(**base)  # type: ignore[arg-type]


def test_throughput_verdicts() -> None:
    assert WRITERS_ROW.min_ratio == 0.70  # the ratio is gated (docs/benchmarks.md)
    assert _throughput().passed  # ungated (min_ratio None): a low ratio fails nothing
    assert not _throughput(failures=1, errors={"CalRedisError: gave up": 1}).passed
    assert not _throughput(min_ratio=0.8).passed
    assert _throughput(min_ratio=0.05).passed
    assert not _throughput(problem="raw writes failed").passed


def _report(results: list[Result], throughput: list[Throughput]) -> dict[str, Any]:
    def as_json(r: Any) -> dict[str, Any]:
        return {**dataclasses.asdict(r), "passed": r.passed}

    machine = dict.fromkeys(("nproc", "cpu", "python", "redis_server", "redis_py", "hiredis",
                             "msgspec", "l1"), "x")
    return {"mode": "quick", "duration_s": 1.0, "machine": machine,
            "results": [as_json(r) for r in results],
            "throughput": [as_json(t) for t in throughput],
            "passed": all(r.passed for r in [*results, *throughput])}


def test_table_names_the_statistic_and_every_failure() -> None:
    text = format_table(_report(
        [_result(), _result(label="slow row", ratio=1.6)],
        [_throughput(failures=3, errors={"CalRedisError: User '…': gave up": 3})],
    ))
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["scenario", "by", "ours", "baseline", "ratio"]
    assert lines[2].split()[:2] == ["row", "min"]
    assert "FAIL slow row: ratio 1.60x > gate 1.50x" in text
    assert "FAIL writers: 3 writes raised (3 x CalRedisError: User '…': gave up)" in text
    assert "3 of 203" in text and ">=0.80x" in text and "failed == 0" in text
    assert "RESULT: FAIL" in text


async def test_propagation_reaches_the_peer_l1(redis_url: str) -> None:
    prop = await measure_propagation(redis_url, events=5, warmup=2, writer_subscribed=False)
    assert prop["not_in_l1"] == {"quiet": 0}
    assert prop["no_request_stamp"] == {"quiet": 0}  # the write's publishing request stamped
    assert {k: v["n"] for k, v in prop["series"].items()} == {
        "raw": 5, "write:quiet": 5, "exec:quiet": 5}


@pytest.mark.parametrize("writers", [1, 4])
async def test_concurrent_writers_count_writes_and_failures(redis_url: str, writers: int) -> None:
    w = await measure_writers(redis_url, writers=writers, window=0.05, rounds=2, warmup=0.02)
    assert w["writes"]["ours"] > 0 and w["writes"]["raw"] > 0
    assert w["failures"]["raw"] == 0
    if writers == 1:  # a lone writer never conflicts
        assert w["failures"]["ours"] == 0
    assert w["ratio"] == w["writes_per_s"]["ours"] / w["writes_per_s"]["raw"]


async def test_metered_l1_rows(redis_url: str) -> None:
    """``bench --metrics``: the L1-hit scenarios get a side that times the same hits with
    a meter provider recording the cache (bound for its blocks only), rows against the
    baselines and against the same hits without it, and an exact check that the
    provider collected the L1's hit count."""
    from cal_redis import CallableCache
    from cal_redis.bench._runner import _check_metered, _results
    from cal_redis.bench._scenarios import (
        METRICS_GATE,
        Metering,
        cache_scenarios,
        seed_users,
        stock_client,
    )

    cache = await CallableCache.connect(redis_url)
    metering = Metering(cache)
    stock = stock_client(redis_url)
    try:
        ids = await seed_users(cache, 50)
        l1_sync, l1_async = cache_scenarios(cache, ids, stock, metering)[:2]
        assert set(l1_sync.sides) == {"ours", "dict", "metrics"}
        keys = [r.key for r in l1_async.rows]
        assert keys == ["l1_async", "l1_async_metrics", "l1_async_metrics_ratio"]
        ratio_row = l1_async.rows[2]
        assert (ratio_row.ours, ratio_row.base, ratio_row.gate) == ("metrics", "ours", METRICS_GATE)
        results = []
        for sc in (l1_sync, l1_async):
            assert sc.prepare is not None
            await sc.prepare()
            samples = await interleave(sc.sides, rounds=2, per_round=1, warmup=0)
            assert cache.remote.observer is None  # bound only during the metered blocks
            results += _results(sc, samples, dict.fromkeys(sc.sides, 0))
        assert metering.hits_recorded >= 2 * 2 * 50
        assert [r.problem for r in _check_metered(results, metering)] == [""] * 6
        metering.hits_recorded += 1  # the provider did not see that one
        checked = _check_metered(results, metering)
        assert [bool(r.problem) for r in checked] == ["metrics" in r.key for r in results]
        assert len(cache_scenarios(cache, ids, stock)[0].rows) == 1  # without --metrics
    finally:
        await stock.aclose()
        await cache.close()
