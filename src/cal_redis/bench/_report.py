"""The report of ``python -m cal_redis bench``: the text table and the optional chart."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from .._fmt import fmt_time

__all__ = ("format_table", "write_chart")


def _stat(side: dict[str, Any], stat: str) -> float:
    """The statistic a row compares, from one side's stats."""
    return float(side["min"] if stat == "min" else side["median"])


def _grid(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Fixed-width lines: the first column left-aligned, the others right-aligned, a
    rule under the header."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        rest = [v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([row[0].ljust(widths[0]), *rest]).rstrip())
        if n == 0:
            lines.append("-" * len(lines[0]))
    return lines


def _rate(per_s: float) -> str:
    return f"{per_s:,.0f} /s"


def _ratio(x: float) -> str:
    return f"{x:.2f}x" if x < 10 else f"{x:.1f}x"


def _check_bound(metric: str, bound: float | None, strict: bool = False) -> str:
    if bound is None:
        return "-"
    if metric == "errors":
        return f"== {bound:g}"
    if metric == "tput":
        return f">={bound:.2f}x"
    return f"<{bound:.2f}x" if strict else f"<={bound:.2f}x"


def _verdict(row: dict[str, Any]) -> str:
    """PASS, FAIL, or OVER: past its ratio gate, which this run does not apply."""
    if not row["passed"]:
        return "FAIL"
    return "OVER" if row.get("over_gate") else "PASS"


def _time_range(lo: float, hi: float) -> str:
    """``lo``-``hi`` as durations, the unit written once when both share it."""
    a, b = fmt_time(lo), fmt_time(hi)
    if a.split()[-1] == b.split()[-1]:
        return f"{a.split()[0]}-{b}"
    return f"{a}-{b}"


def format_concurrency(report: dict[str, Any]) -> list[str]:
    """The concurrency stage: one line per C and side, then its checks."""
    conc = report.get("concurrency")
    if not conc:
        return []
    rows = [("   C  side", "calls/s (min-max)", "p50 (min-max)", "p99 (min-max)", "errors",
             "Redis cmd/s", "calls/cmd", "vs raw")]
    for c, sides in conc["by_c"].items():
        raw = sides.get("raw")
        for name, f in sides.items():
            ws = f["windows"]
            label = conc["sides"][name].replace("of C", f"of {c}")
            if name == "ours_99" and f.get("l1_hit_ratio") == f.get("l1_hit_ratio"):
                label += f", {100 * f['l1_hit_ratio']:.1f} % measured"
            tput = [w["calls_per_s"] for w in ws]
            p50 = [w["p50_s"] for w in ws]
            p99 = [w["p99_s"] for w in ws]
            vs = "" if raw is None or name == "raw" else _ratio(f["calls_per_s"] / raw["calls_per_s"])
            rows.append((
                f"{c:>4}  {label}",
                f"{f['calls_per_s']:,.0f} ({min(tput):,.0f}-{max(tput):,.0f})",
                f"{fmt_time(f['p50_s'])} ({_time_range(min(p50), max(p50))})",
                f"{fmt_time(f['p99_s'])} ({_time_range(min(p99), max(p99))})",
                str(f["errors"]), f"{f['commands_per_s']:,.0f}",
                f"{f['calls_per_command']:,.1f}", vs,
            ))
    shape = conc.get("windows", {})
    split = ", ".join(f"C={c}: {w['rounds']} of {w['window_s']:g} s" for c, w in shape.items()
                      if w["window_s"] != conc["window_s"])
    lines = ["", f"concurrency: get_user_by_id on random ids of {conc['users']:,} users, "
             f"{conc['rounds']} windows of {conc['window_s']:g} s per side and C"
             + (f" ({split})" if split else "") + ", interleaved",
             *_grid(rows)]
    lone = conc.get("lone_pair")
    if lone:
        lines.append(
            f"   1  lone caller, L1 off, alternating blocks of {lone['block']} calls "
            f"({lone['blocks']} per side): p50 {fmt_time(lone['p50_s']['ours_0'])} "
            f"coalescing on, {fmt_time(lone['p50_s']['nc_0'])} off")
    checks = report.get("concurrency_checks", [])
    if checks:
        c_rows = [("check", "value", "(per round)", "goal", "", "gate", "")]
        for ch in checks:
            value = str(int(ch["value"])) if ch["metric"] == "errors" else _ratio(ch["value"])
            rs = ch["rounds"]
            per_round = f"({_ratio(min(rs))}-{_ratio(max(rs))})" if rs else ""
            c_rows.append((
                ch["label"], value, per_round,
                _check_bound(ch["metric"], ch["goal"], strict=ch["metric"] == "p99"),
                {True: "met", False: "NOT MET", None: ""}[ch["met_goal"]],
                _check_bound(ch["metric"], ch["gate"]),
                _verdict(ch) if ch["gate"] is not None or ch["problem"] else "(not gated)",
            ))
        lines += ["", *_grid(c_rows)]
    return lines


def format_table(report: dict[str, Any]) -> str:
    """The report as fixed-width text tables (baselines listed below them)."""
    head = ("scenario", "by", "ours", "baseline", "ratio", "goal", "seed", "gate", "trips",
            "", "median", "p99", "p50 ratio")
    rows = [head]
    notes = []
    for i, r in enumerate(report["results"], 1):
        stat = r["stat"]
        rows.append((
            r["label"], stat, fmt_time(_stat(r["ours"], stat)),
            f"{fmt_time(_stat(r['base'], stat))} [{i}]", f"{r['ratio']:.2f}x",
            f"<={r['goal']:.2f}x" if r["goal"] else "", r["seed_text"],
            f"<={r['gate']:.2f}x",
            "-" if r["trips"] is None else f"{r['trips']}/{r['base_trips']}",
            _verdict(r),
            fmt_time(r["ours"]["median"]), fmt_time(r["ours"]["p99"]),
            f"{r['ours']['median'] / r['base']['median']:.2f}x",
        ))
        notes.append(f"[{i}] {r['baseline']}")
    lines = _grid(rows)
    throughput = report.get("throughput", [])
    if throughput:
        t_rows = [("scenario", "ours", "baseline", "ratio", "goal", "failed", "gate", "")]
        for j, t in enumerate(throughput, len(notes) + 1):
            gate = "failed == 0"
            if t["min_ratio"] is not None:
                gate += f", >={t['min_ratio']:.2f}x"
            t_rows.append((
                t["label"], _rate(t["ours_per_s"]), f"{_rate(t['base_per_s'])} [{j}]",
                f"{t['ratio']:.2f}x", f">={t['goal']:.2f}x",
                f"{t['failures']} of {t['writes'] + t['failures']}", gate,
                _verdict(t),
            ))
            notes.append(f"[{j}] {t['baseline']}")
        t0 = throughput[0]
        lines += ["", f"throughput: writes per second, {t0['rounds']} windows of "
                  f"{t0['window_s']:g} s per side, interleaved", *_grid(t_rows)]
    lines += format_concurrency(report)
    m = report["machine"]
    lines += ["", "baselines (measured in the same run, interleaved with ours):", *notes, "",
              f"{report['mode']} run, {report['duration_s']} s; {m['nproc']} CPU ({m['cpu']}), "
              f"Python {m['python']}, server {m['redis_server']}, redis-py {m['redis_py']} "
              f"(hiredis {m['hiredis']}), msgspec {m['msgspec']}, L1 {m['l1']}, "
              f"loop {m.get('loop', 'asyncio')}",
              "ratio = ours / baseline of the statistic in column 'by': p50 = medians, min =",
              "the fastest block of each side (CPU-bound rows: ours and the baseline alternate",
              "block by block). A row fails when the ratio exceeds its gate, when trips (round",
              "trips to Redis per operation, ours/baseline) shows more round trips for ours",
              "than for the baseline, or when an exact check of the measurement fails.",
              "median, p99: ours, for information; p50 ratio: median(ours) / median(baseline).",
              "Throughput: ratio = ours / baseline writes per second (higher is better); a",
              "row fails when any of our writes raised (warm-up included).",
              "Concurrency: calls/s over all windows of a side, p50/p99 the median of its",
              "windows', (min-max) over the windows; Redis cmd/s from INFO commandstats;",
              "calls/s vs raw: ours / the raw client at the same C. A check fails when its",
              "ratio is past its gate, or when any call of ours raised (warm-up included).",
              "RESULT: " + ("PASS" if report["passed"] else "FAIL")]
    gated = report.get("ratio_gates_applied", True)
    over = "FAIL" if gated else "OVER"
    if not gated:
        lines[-1:-1] = [f"The ratio gates were derived on asyncio's loop: on {m.get('loop')} "
                         "they are shown,",
                         "not applied (OVER: past its gate); errors, round trips and exact "
                         "checks are."]
    for r in report["results"]:
        name = r["label"].strip()
        if not r["ratio"] <= r["gate"]:
            word = over if not gated or r.get("ratio_gated", True) \
                else "OVER (reported, not gated)"
            lines.append(f"  {word} {name}: ratio {r['ratio']:.2f}x > gate {r['gate']:.2f}x")
        if (r["trips"] or 0) > (r["base_trips"] or 0):
            lines.append(f"  FAIL {name}: {r['trips']} round trips per call, "
                         f"the baseline needs {r['base_trips']}")
        if r["problem"]:
            lines.append(f"  FAIL {name}: {r['problem']}")
    for t in throughput:
        name = t["label"].strip()
        if t["failures"]:
            kinds = "; ".join(f"{n} x {msg}" for msg, n in t["errors"].items())
            lines.append(f"  FAIL {name}: {t['failures']} writes raised ({kinds})")
        if t["min_ratio"] is not None and t["ratio"] < t["min_ratio"]:
            lines.append(f"  {over} {name}: ratio {t['ratio']:.2f}x < gate {t['min_ratio']:.2f}x")
        if t["problem"]:
            lines.append(f"  FAIL {name}: {t['problem']}")
    for ch in report.get("concurrency_checks", []):
        if ch["passed"] and not ch.get("over_gate"):
            continue
        if ch["problem"]:
            lines.append(f"  FAIL {ch['label']}: {ch['problem']}")
        elif ch["metric"] == "errors":
            counts: collections.Counter[str] = collections.Counter()
            for sides in report["concurrency"]["by_c"].values():
                for side, fig in sides.items():
                    if side != "raw":
                        counts.update(fig["error_kinds"])
            for kinds_of_side in report["concurrency"].get("lone_pair", {}).get(
                    "error_kinds", {}).values():
                counts.update(kinds_of_side)
            lines.append(f"  FAIL {ch['label']}: {int(ch['value'])} calls raised ({dict(counts)})")
        else:
            lines.append(f"  {over} {ch['label']}: {_ratio(ch['value'])}, gate "
                         f"{_check_bound(ch['metric'], ch['gate'])}")
    return "\n".join(lines)


def write_chart(report: dict[str, Any], path: str) -> None:
    """Bar chart (log scale) per latency row: ours and the baseline (the statistic the
    row compares: the median, or the fastest block for the L1 rows) and the seed figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = [r for r in report["results"] if not r["key"].endswith("_vs_seq")]
    labels = [r["label"] for r in res]
    y = list(range(len(res)))
    h = 0.38
    fig, ax = plt.subplots(figsize=(10, 0.7 * len(res) + 1.6))
    ours = [_stat(r["ours"], r["stat"]) * 1e6 for r in res]
    base = [_stat(r["base"], r["stat"]) * 1e6 for r in res]
    ax.barh([v - h / 2 for v in y], ours, h, label="cal-redis", color="#1f77b4")
    ax.barh([v + h / 2 for v in y], base, h, label="baseline, same run", color="#aaaaaa")
    seeded = [(v, r["seed"]) for v, r in zip(y, res, strict=True) if r["seed"]]
    for n, (v, (lo, hi)) in enumerate(seeded):
        ax.plot([lo * 1e6, hi * 1e6], [v, v], color="#d62728", lw=2)
        ax.plot([hi * 1e6], [v], marker="|", ms=14, color="#d62728",
                label="seed target (SPEC)" if n == 0 else None)
    for v, r, x in zip(y, res, ours, strict=True):
        ax.annotate(f" {r['ratio']:.2f}x ({r['stat']})", (x, v - h / 2), va="center",
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel("latency per operation (µs, log scale)")
    m = report["machine"]
    ax.set_title(f"cal-redis bench ({report['mode']}): {m['nproc']} CPU {m['cpu']}, "
                 f"Python {m['python']}, {m['redis_server']}", fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.legend(loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
