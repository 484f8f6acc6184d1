"""`python -m cal_redis` demo and doctor against the session's redis-server."""

from __future__ import annotations

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
