"""The report of ``python -m cal_redis bench``: the text table and the optional chart."""

from __future__ import annotations

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
            "PASS" if r["passed"] else "FAIL",
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
                "PASS" if t["passed"] else "FAIL",
            ))
            notes.append(f"[{j}] {t['baseline']}")
        t0 = throughput[0]
        lines += ["", f"throughput: writes per second, {t0['rounds']} windows of "
                  f"{t0['window_s']:g} s per side, interleaved", *_grid(t_rows)]
    m = report["machine"]
    lines += ["", "baselines (measured in the same run, interleaved with ours):", *notes, "",
              f"{report['mode']} run, {report['duration_s']} s; {m['nproc']} CPU ({m['cpu']}), "
              f"Python {m['python']}, server {m['redis_server']}, redis-py {m['redis_py']} "
              f"(hiredis {m['hiredis']}), msgspec {m['msgspec']}, L1 {m['l1']}",
              "ratio = ours / baseline of the statistic in column 'by': p50 = medians, min =",
              "the fastest block of each side (CPU-bound rows: ours and the baseline alternate",
              "block by block). A row fails when the ratio exceeds its gate, when trips (round",
              "trips to Redis per operation, ours/baseline) shows more round trips for ours",
              "than for the baseline, or when an exact check of the measurement fails.",
              "median, p99: ours, for information; p50 ratio: median(ours) / median(baseline).",
              "Throughput: ratio = ours / baseline writes per second (higher is better); a",
              "row fails when any of our writes raised (warm-up included).",
              "RESULT: " + ("PASS" if report["passed"] else "FAIL")]
    for r in report["results"]:
        name = r["label"].strip()
        if not r["ratio"] <= r["gate"]:
            lines.append(f"  FAIL {name}: ratio {r['ratio']:.2f}x > gate {r['gate']:.2f}x")
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
            lines.append(f"  FAIL {name}: ratio {t['ratio']:.2f}x < gate {t['min_ratio']:.2f}x")
        if t["problem"]:
            lines.append(f"  FAIL {name}: {t['problem']}")
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
