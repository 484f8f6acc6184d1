"""`python -m cal_redis` demo and doctor against the session's redis-server; the bench
is loaded only by its own subcommand."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cal_redis.__main__ import main
from cal_redis.embedded import EmbeddedRedis


def test_doctor(redis_server: EmbeddedRedis, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--url", redis_url]) == 0
    out = capsys.readouterr().out
    assert "hiredis parser   yes" in out
    assert "command packing  hiredis" in out
    assert f"redis server     {redis_server.version}" in out
    assert "L1 extension" in out


def test_doctor_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--url", "redis://127.0.0.1:1/0"]) == 1
    assert "UNREACHABLE" in capsys.readouterr().out


@pytest.mark.parametrize("users", [1, 10])
def test_demo_on_a_given_server(
    redis_url: str, capsys: pytest.CaptureFixture[str], users: int
) -> None:
    assert main(["demo", "--url", redis_url, "--users", str(users)]) == 0
    out = capsys.readouterr().out
    assert "L1 hit: await get_user_by_id" in out
    assert "instance B's L1 refreshed" in out
    assert "python -m cal_redis bench" in out


# The bench (cal_redis.bench) is imported only by its subcommand. Checked in a fresh
# interpreter, since this test session may have imported it already.
_NO_BENCH = """
import json, sys
import cal_redis, cal_redis.__main__
stage = {"import": sorted(m for m in sys.modules if m.startswith("cal_redis.bench"))}
for argv in (sys.argv[1:] and [["doctor", "--url", sys.argv[1]],
                                ["demo", "--url", sys.argv[1], "--users", "3"]]):
    code = cal_redis.__main__.main(argv)
    stage[argv[0]] = [code, sorted(m for m in sys.modules if m.startswith("cal_redis.bench"))]
print(json.dumps(stage))
"""


def _fresh(*args: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", _NO_BENCH, *args], capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_import_loads_no_bench_module() -> None:
    assert _fresh() == {"import": []}


def test_demo_and_doctor_load_no_bench_module(redis_url: str) -> None:
    assert _fresh(redis_url) == {"import": [], "doctor": [0, []], "demo": [0, []]}


def test_bench_options_belong_to_the_bench(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "python -m cal_redis bench" in out and "--quick" in out


def test_other_commands_reject_bench_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--quick"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --quick" in capsys.readouterr().err
