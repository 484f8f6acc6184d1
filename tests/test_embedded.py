"""The embedded launcher: starts, answers, stops, and fails clearly."""

from __future__ import annotations

import os
import socket

import pytest
import redis

from cal_redis.embedded import EmbeddedRedis, EmbeddedRedisError, find_server_binary


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
    with pytest.raises(EmbeddedRedisError, match="not installed"):
        find_server_binary()


def test_explicit_binary(redis_server: EmbeddedRedis) -> None:
    path = find_server_binary()
    with EmbeddedRedis(binary=path) as server:
        assert server.version == redis_server.version
