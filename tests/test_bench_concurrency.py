"""The bench's concurrency stage: a short run against the session's redis-server (what it
counts, not how fast), the verdicts of its checks, its part of the table, and the
``--loop`` option. Nothing here asserts a timing (docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from cal_redis.bench import _run, format_table
from cal_redis.bench._concurrency import (
    CONCURRENCY,
    CONCURRENCY_CHECKS,
    NO_COALESCE_AT,
    Check,
    CheckSpec,
    concurrency_checks,
    measure_concurrency,
)
from cal_redis.bench._runner import _machine


async def test_short_run_counts_calls_commands_and_hits(redis_url: str) -> None:
    conc = await measure_concurrency(redis_url, concurrency=(1, 8), no_coalesce_at=(1, 8),
                                     users=5000, hot=500, window=0.05, rounds=2, warmup=0.02,
                                     pair=0.05)
    assert set(conc["by_c"]) == {"1", "8"}
    assert conc["windows"]["1"] == {"rounds": 8, "window_s": 0.0125}  # C=1: split windows
    assert conc["windows"]["8"] == {"rounds": 2, "window_s": 0.05}
    for c, sides in conc["by_c"].items():
        assert set(sides) == {"ours_0", "nc_0", "ours_99", "raw"}
        for name, f in sides.items():
            assert f["errors"] == 0, (c, name, f["error_kinds"])
            assert f["calls"] > 0 and f["commands_per_s"] > 0
            assert len(f["windows"]) == conc["windows"][c]["rounds"]
            assert f["calls"] == sum(round(w["calls_per_s"] * w["elapsed_s"])
                                     for w in f["windows"])
        assert sides["raw"]["single_flight_joins"] == 0  # no single-flight there
        assert all(f["single_flight_joins"] >= 0 for f in sides.values())
        # One read in MISS_EVERY is of an id L1 does not hold; L1 holds all the others.
        assert 0.98 <= sides["ours_99"]["l1_hit_ratio"] < 1.0
    one, eight = conc["by_c"]["1"], conc["by_c"]["8"]
    # A lone caller: one command per call (coalescing or not), as the raw client.
    for name in ("ours_0", "nc_0", "raw"):
        assert 0.9 <= one[name]["calls_per_command"] <= 1.1, name
    # Eight callers: coalesced into fewer HMGETs; without coalescing, one HGET each.
    assert eight["ours_0"]["calls_per_command"] > 1.5
    assert 0.9 <= eight["nc_0"]["calls_per_command"] <= 1.1
    lone = conc["lone_pair"]  # the lone caller, coalescing on and off in alternating blocks
    assert lone["errors"] == {"ours_0": 0, "nc_0": 0} and lone["blocks"] >= 1
    assert lone["calls"]["ours_0"] == lone["calls"]["nc_0"] == lone["blocks"] * lone["block"]
    assert lone["ratio_p50"] == lone["p50_s"]["ours_0"] / lone["p50_s"]["nc_0"]
    checks = {c.key: c for c in concurrency_checks(conc)}
    assert checks["conc_errors"].value == 0 and checks["conc_errors"].passed
    assert checks["conc_c1_lone"].value == lone["ratio_p50"]
    assert "conc_c1_lone" in checks and "conc_c100_tput" not in checks  # C=100 not run


def test_default_stage_covers_the_issue() -> None:
    assert CONCURRENCY == (1, 10, 100, 1000) and NO_COALESCE_AT == (1, 100)
    gated = {s.key for s in CONCURRENCY_CHECKS if s.gate is not None}
    assert {"conc_errors", "conc_c1_lone", "conc_c100_tput", "conc_c100_p99",
            "conc_c1000_tput", "conc_c1000_p99"} <= gated
    goals = {s.key: s.goal for s in CONCURRENCY_CHECKS}
    assert goals["conc_c100_tput"] == goals["conc_c1000_tput"] == 5.0
    assert goals["conc_c100_p99"] == goals["conc_c1000_p99"] == 1.0
    assert goals["conc_c1_lone"] == 1.05 and goals["conc_errors"] == 0


def _side(calls_per_s: float, p50: float, p99: float, errors: int = 0,
          rounds: int = 2) -> dict[str, Any]:
    w = {"calls_per_s": calls_per_s, "p50_s": p50, "p99_s": p99, "errors": 0,
         "commands": 10, "elapsed_s": 1.0}
    return {"calls": int(calls_per_s * rounds), "calls_per_s": calls_per_s, "p50_s": p50,
            "p99_s": p99, "errors": errors, "error_kinds": {"TimeoutError: x": errors} if errors
            else {}, "commands_per_s": 10.0, "calls_per_command": calls_per_s / 10,
            "windows": [dict(w) for _ in range(rounds)]}


def _conc(ours: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    return {"users": 10, "hot": 1, "miss_every": 100, "window_s": 1.0, "rounds": 2,
            "warmup_s": 0.1, "windows": {"100": {"rounds": 2, "window_s": 1.0}},
            "sides": {"ours_0": "ours, L1 off (0 % hits)",
                      "raw": "redis-py HGET + decode, blocking pool of C"},
            "by_c": {"100": {"ours_0": ours, "raw": raw}}}


SPECS = (
    CheckSpec("e", "errors", "errors", None, "ours", "", goal=0, gate=0),
    CheckSpec("t", "tput", "tput", 100, "ours_0", "raw", goal=5.0, gate=4.0),
    CheckSpec("p", "p99", "p99", 100, "ours_0", "raw", goal=1.0, gate=0.5),
    CheckSpec("u", "ungated", "tput", 100, "ours_0", "raw", goal=None, gate=None),
    CheckSpec("x", "C not run", "tput", 7, "ours_0", "raw", goal=None, gate=1.0),
)


def test_check_verdicts() -> None:
    fast = concurrency_checks(_conc(_side(600.0, 1e-3, 2e-3), _side(100.0, 5e-3, 1e-2)), SPECS)
    by = {c.key: c for c in fast}
    assert set(by) == {"e", "t", "p", "u"}  # a C that did not run is left out
    assert by["t"].value == 6.0 and by["t"].rounds == [6.0, 6.0] and by["t"].met_goal
    assert by["p"].value == pytest.approx(0.2) and by["p"].met_goal and by["p"].passed
    assert by["u"].passed and by["u"].met_goal is None
    assert all(c.passed for c in fast)

    slow = {c.key: c for c in concurrency_checks(
        _conc(_side(350.0, 1e-3, 6e-3, errors=2), _side(100.0, 5e-3, 1e-2)), SPECS)}
    assert not slow["e"].passed and slow["e"].value == 2  # any error of ours fails
    assert not slow["t"].passed and not slow["t"].met_goal  # 3.5x < gate 4.0
    assert not slow["p"].passed  # 0.6 > gate 0.5
    assert slow["u"].passed  # not gated

    equal = {c.key: c for c in concurrency_checks(
        _conc(_side(100.0, 1e-3, 1e-2), _side(100.0, 5e-3, 1e-2, errors=1)), SPECS)}
    assert equal["p"].met_goal is False  # p99 equal to raw's is not below it
    assert not equal["u"].passed and "baseline raised" in equal["u"].problem


def test_table_has_the_concurrency_section_and_its_failures() -> None:
    conc = _conc(_side(350.0, 1e-3, 6e-3, errors=2), _side(100.0, 5e-3, 1e-2))
    checks = concurrency_checks(conc, SPECS)
    machine = dict.fromkeys(("nproc", "cpu", "python", "redis_server", "redis_py", "hiredis",
                             "msgspec", "l1", "loop"), "x")
    report = {"mode": "quick", "duration_s": 1.0, "machine": machine, "results": [],
              "concurrency": conc,
              "concurrency_checks": [{**dataclasses.asdict(c), "passed": c.passed,
                                      "met_goal": c.met_goal} for c in checks],
              "passed": False}
    text = format_table(report)
    assert "concurrency: get_user_by_id on random ids of 10 users" in text
    assert "redis-py HGET + decode, blocking pool of 100" in text
    assert " 100  ours, L1 off (0 % hits)" in text and "3.50x" in text
    assert "FAIL errors: 2 calls raised ({'TimeoutError: x': 2})" in text
    assert "FAIL tput: 3.50x, gate >=4.00x" in text
    assert "FAIL p99: 0.60x, gate <=0.50x" in text
    assert "NOT MET" in text and "(not gated)" in text
    assert "loop x" in text


def test_check_is_a_plain_record() -> None:
    c = Check("k", "label", "tput", 2.0, None, None, [])
    assert c.passed and c.met_goal is None and c.higher_is_better


def test_run_on_asyncio_and_on_uvloop() -> None:
    async def loop_name() -> str:
        return _machine("redis 0")["loop"]

    assert _run(loop_name(), "asyncio") == "asyncio"
    pytest.importorskip("uvloop")
    assert _run(loop_name(), "uvloop").startswith("uvloop ")


def test_uvloop_missing_is_a_clear_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError

    async def nothing() -> None:
        await asyncio.sleep(0)

    with pytest.raises(SystemExit, match=r"pip install 'cal-redis\[uvloop\]'"):
        _run(nothing(), "uvloop")


def test_ratio_gates_reported_not_applied_on_another_loop() -> None:
    """A run on uvloop shows the asyncio-derived ratio gates without applying them;
    errors, round trips and exact checks still fail it."""
    from cal_redis.bench._runner import Result, Stats
    from cal_redis.bench._writers import Throughput

    slow = _conc(_side(350.0, 1e-3, 6e-3), _side(100.0, 5e-3, 1e-2))
    checks = {c.key: dataclasses.replace(c, ratio_gated=False)
              for c in concurrency_checks(slow, SPECS)}
    assert checks["t"].over_gate and checks["t"].passed
    assert checks["p"].over_gate and checks["p"].passed
    errs = {c.key: dataclasses.replace(c, ratio_gated=False) for c in concurrency_checks(
        _conc(_side(600.0, 1e-3, 2e-3, errors=1), _side(100.0, 5e-3, 1e-2)), SPECS)}
    assert not errs["e"].passed  # an error is an error on any loop

    row = Result("k", "row", "base", Stats(2.0, 3.0, 2.0, 9), Stats(1.0, 2.0, 1.0, 9), "min",
                 2.0, 1.5, None, None, "", 1, 1, ratio_gated=False)
    assert row.over_gate and row.passed
    assert not dataclasses.replace(row, trips=2).passed
    assert not dataclasses.replace(row, problem="the peer's L1 did not hold it").passed
    writers = Throughput("w", "writers", "raw", 50.0, 100.0, 0.5, 0.8, 0.75, 10, 20, 0, {},
                         1.0, 2, ratio_gated=False)
    assert writers.over_gate and writers.passed
    assert not dataclasses.replace(writers, failures=1).passed

    def as_json(r: Any) -> dict[str, Any]:
        return {**dataclasses.asdict(r), "passed": r.passed, "over_gate": r.over_gate,
                **({"met_goal": r.met_goal} if isinstance(r, Check) else {})}

    machine = dict.fromkeys(("nproc", "cpu", "python", "redis_server", "redis_py", "hiredis",
                             "msgspec", "l1"), "x")
    machine["loop"] = "uvloop 0.23.0"
    text = format_table({
        "mode": "quick", "duration_s": 1.0, "machine": machine, "results": [as_json(row)],
        "throughput": [as_json(writers)], "concurrency": slow,
        "concurrency_checks": [as_json(c) for c in checks.values()],
        "ratio_gates_applied": False, "passed": True})
    assert "OVER" in text and "FAIL" not in text and "RESULT: PASS" in text
    assert "OVER row: ratio 2.00x > gate 1.50x" in text
    assert "OVER tput: 3.50x, gate >=4.00x" in text
    assert "derived on asyncio's loop: on uvloop 0.23.0 they are shown,\nnot applied" in text
    # On asyncio's loop (gates applied), a row reported but not gated on its own (the
    # cluster propagation row) is shown past its gate without reading as a failure.
    machine["loop"] = "asyncio"
    text = format_table({
        "mode": "quick", "duration_s": 1.0, "machine": machine, "results": [as_json(row)],
        "throughput": [], "concurrency": [], "concurrency_checks": [],
        "ratio_gates_applied": True, "passed": True})
    assert "OVER (reported, not gated) row: ratio 2.00x > gate 1.50x" in text
    assert "FAIL" not in text
