"""docs/observability.md matches the code: the metric table is cal_redis.metrics.METRICS,
and the dashboard and queries name only metrics that exist."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from cal_redis.metrics import METRICS

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "observability.md"
pytestmark = pytest.mark.skipif(not DOC.is_file(), reason="needs the source tree")

_KINDS = {"counter": "observable counter", "updowncounter": "observable up-down counter (gauge)",
          "histogram": "histogram"}


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _series() -> set[str]:
    """Every series name the exporter writes."""
    out = set()
    for m in METRICS:
        if m.instrument == "histogram":
            out |= {m.prometheus + s for s in ("_bucket", "_sum", "_count")}
        else:
            out.add(m.prometheus)
    return out


def test_the_metric_table_is_the_code() -> None:
    rows = [line for line in _text().splitlines() if line.startswith("| `cal_redis.")
            or line.startswith("| `db.")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [c[0].strip("`") for c in cells] == [m.name for m in METRICS]
    for c, m in zip(cells, METRICS, strict=True):
        assert c[1] == _KINDS[m.instrument], m.name
        assert c[2] == f"`{m.unit}`", m.name
        assert c[3] == (", ".join(f"`{a}`" for a in m.attributes) or "—"), m.name
        assert c[4].startswith(f"`{m.prometheus}`"), m.name
        assert c[5] == m.description, m.name


def test_dashboard_and_queries_name_existing_metrics() -> None:
    text = _text()
    (block,) = re.findall(r"```json\n(.*?)\n```", text, re.S)
    dash = json.loads(block)
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for what in ("hit ratio", "l2 latency", "event lag", "degraded time"):
        assert what in titles
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += re.findall(r"^\| [^|]+ \| `(.+?)`", text.split("### Queries", 1)[1], re.M)
    names = {n for e in exprs for n in re.findall(r"\b(?:cal_redis|db_client)_[a-z0-9_]+", e)}
    labels = {"cal_redis_namespace", "cal_redis_sync_state", "cal_redis_flush_reason"}
    assert names - labels <= _series(), (names - labels) - _series()
    assert len(names - labels) >= 6
    assert "job_name: cal_redis" in text  # the scrape config
