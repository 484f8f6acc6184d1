"""``CallableCache.connect(url, **redis_options)`` and ``connect(client=...)``.

Options reach every connection the cache makes (commands and the event subscriber);
those that would break the library's guarantees, those CacheConfig owns and unknown
names are refused with a ConfigurationError before any I/O (shown by URLs where nothing
listens: the error is a ConfigurationError, not a ConnectionError). An application's
own client is used through its pool, left unchanged and open.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.credentials import UsernamePasswordCredentialProvider

from cal_redis import CacheConfig, CallableCache, User
from cal_redis.embedded import EmbeddedRedis, EmbeddedRedisError
from cal_redis.errors import ConfigurationError, ConnectionError
from waiting import until

pytestmark = pytest.mark.standalone_only

NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens: a ConfigurationError means no I/O


def _names(url: str, kind: str = "normal") -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        return [c["name"] for c in client.client_list(_type=kind)]
    finally:
        client.close()


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


# -- options ----------------------------------------------------------------------------------
async def test_options_reach_commands_and_the_subscriber(redis_url: str) -> None:
    async with await CallableCache.connect(redis_url, client_name="cal-app",
                                           socket_keepalive=True,
                                           health_check_interval=30) as cache:
        await cache.set_user(User(id="u1", name="x"))
        assert "cal-app" in _names(redis_url)
        # the subscriber keeps its own name (tools count subscribers by it)
        assert "cal-redis-sync-" + cache.instance_id[:12] in _names(redis_url, "pubsub")
        conn = await cache.remote.client.connection_pool.get_connection()
        try:
            assert conn.socket_keepalive is True and conn.health_check_interval == 30
        finally:
            await cache.remote.client.connection_pool.release(conn)
        assert cache.remote.options == {"client_name": "cal-app", "socket_keepalive": True,
                                        "health_check_interval": 30}


@pytest.fixture(scope="module")
def protected() -> Iterator[EmbeddedRedis]:
    """A server with a password and an ACL user ``app``."""
    with EmbeddedRedis(password="admin pw") as server:
        redis.Redis(port=server.port, password="admin pw").execute_command(
            "ACL", "SETUSER", "app", "on", ">app pw", "~*", "&*", "+@all")
        yield server


async def test_credentials_as_options(protected: EmbeddedRedis) -> None:
    url = f"redis://127.0.0.1:{protected.port}/0"
    async with await CallableCache.connect(url, username="app", password="app pw") as cache:
        await cache.set_user(User(id="u1", name="x"))
        assert cache.sync_state.state == "connected"  # the subscriber authenticated too
    provider = UsernamePasswordCredentialProvider("app", "app pw")
    async with await CallableCache.connect(url, credential_provider=provider) as cache:
        assert await cache.get_user_by_id("u1") is not None
    with pytest.raises(ConnectionError):
        await CallableCache.connect(url, username="app", password="wrong")
    with pytest.raises(ConfigurationError, match="credential_provider replaces"):
        await CallableCache.connect(f"redis://:pw@127.0.0.1:{protected.port}/0",
                                    credential_provider=provider)
    with pytest.raises(ConfigurationError, match="password: given both in the URL"):
        await CallableCache.connect(f"redis://:pw@127.0.0.1:{protected.port}/0", password="pw")


async def test_harmless_values_of_owned_options_are_accepted(redis_url: str) -> None:
    async with await CallableCache.connect(redis_url, retry=_no_retry(), decode_responses=False,
                                           protocol=3, retry_on_timeout=False,
                                           retry_on_error=[], encoding="utf-8") as cache:
        await cache.set_user(User(id="u1", name="x"))
        assert cache.remote.options == {}


@pytest.mark.parametrize(("options", "why"), [
    ({"retry": Retry(ExponentialBackoff(), 3)}, "re-sends failed commands (3 retries)"),
    ({"retry_on_error": [TimeoutError]}, "retry_on_error makes redis-py re-send"),
    ({"retry_on_timeout": True}, "retry_on_timeout=True makes redis-py re-send"),
    ({"decode_responses": True}, "codec needs the replies as bytes"),
    ({"protocol": 2}, "the cache speaks RESP3 (set CacheConfig.protocol"),
    ({"max_connections": 5}, "max_connections: set by the cache from CacheConfig.max_connections"),
    ({"socket_timeout": 1}, "from CacheConfig.socket_timeout"),
    ({"socket_connect_timeout": 1}, "from CacheConfig.connect_timeout"),
    ({"timeout": 1}, "from CacheConfig.pool_timeout"),
    ({"connection_pool": object()}, "pass client= to use yours"),
    ({"single_connection_client": True}, "runs commands concurrently"),
    ({"host": "10.0.0.1"}, "give it in the URL"),
    ({"db": 2}, "the URL's database"),
    ({"encoding": "latin-1"}, "keys and values are UTF-8"),
    ({"ssl_certfiel": "c.pem"}, "not an option of redis-py's connections (did you mean 'ssl_certfile'?)"),
    ({"bogus": 1}, "bogus: not an option of redis-py's connections"),
])
async def test_refused_options_say_why(options: dict[str, Any], why: str) -> None:
    with pytest.raises(ConfigurationError, match="connection options refused") as info:
        await CallableCache.connect(NOWHERE, **options)
    assert why in str(info.value)


async def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(ConfigurationError) as info:
        await CallableCache.connect(NOWHERE, decode_responses=True, bogus=1, max_connections=2)
    text = str(info.value)
    assert "decode_responses" in text and "bogus" in text and "max_connections" in text


@pytest.mark.parametrize(("url", "options", "why"), [
    (NOWHERE, {"ssl_ca_certs": "/ca.pem"}, "ssl_ca_certs: a TLS option, but"),
    ("unix:///tmp/nowhere.sock", {"ssl": True}, "is a unix socket, not TCP"),
    ("rediss://127.0.0.1:1/0", {"ssl": False}, "is a TLS URL"),
    ("unix:///tmp/nowhere.sock", {"socket_keepalive": True}, "not an option of a unix-socket"),
    ("redis+cluster://127.0.0.1:1", {"ssl_ca_certs": "/ca.pem"}, "a TLS option"),
    ("redis+cluster://127.0.0.1:1", {"retry_on_timeout": True}, "retry_on_timeout"),
    (NOWHERE, {"ssl_context": "not a context"}, "ssl_context must be an ssl.SSLContext, got str"),
    (NOWHERE, {"ssl_context": ssl.create_default_context(), "ssl_ca_certs": "/ca.pem"},
     "ssl_ca_certs: ssl_context replaces the ssl_* options"),
    (NOWHERE, {"ssl_context": ssl.create_default_context(), "ssl": False},
     "ssl=False, but an ssl_context= is given"),
    ("unix:///tmp/nowhere.sock", {"ssl_context": ssl.create_default_context()},
     "is a unix socket, not TCP"),
    ("redis+sentinel://127.0.0.1:1/mymaster", {"ssl_context": ssl.create_default_context()},
     "ssl_context= is not supported with Sentinel"),
])
async def test_options_checked_against_the_url(url: str, options: dict[str, Any], why: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        await CallableCache.connect(url, **options)
    assert why in str(info.value)


# -- TLS, with certificates made here -----------------------------------------------------------
@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[EmbeddedRedis, int, str]]:
    """A server with a TLS port (and its plain one, for the launcher's PING); the CA
    file is its self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (Debian: apt-get install -y openssl)")
    tmp = tempfile.mkdtemp(prefix="cal-redis-tls-")
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    from cal_redis.embedded import _free_port

    port = _free_port()
    server = EmbeddedRedis(extra_args=["--tls-port", str(port), "--tls-cert-file", cert,
                                       "--tls-key-file", key, "--tls-ca-cert-file", cert,
                                       "--tls-auth-clients", "no"])
    try:
        server.start()
    except EmbeddedRedisError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"this server binary has no TLS support: {err}")
    try:
        yield server, port, cert
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def test_tls_options(tls_server: tuple[EmbeddedRedis, int, str]) -> None:
    _, port, ca = tls_server
    url = f"redis://127.0.0.1:{port}/0"
    async with await CallableCache.connect(url, ssl=True, ssl_ca_certs=ca) as a, \
            await CallableCache.connect(url.replace("redis:", "rediss:"), ssl_ca_certs=ca) as b:
        await a.set_user(User(id="u1", name="one"))
        assert (await b.get_user_by_id("u1")).name == "one"  # type: ignore[union-attr]
        await a.set_user(User(id="u1", name="two"))  # b's subscriber (TLS too) hears it
        await until(lambda: b.local["users"].peek("u1") is None
                    or b.local["users"].peek("u1").name == "two", what="b refreshed")
        assert a.sync_state.state == b.sync_state.state == "connected"
    with pytest.raises(ConnectionError):  # the certificate is checked
        await CallableCache.connect(url, ssl=True, config=CacheConfig(connect_timeout=1))


async def test_tls_with_the_applications_ssl_context(
    tls_server: tuple[EmbeddedRedis, int, str]
) -> None:
    """An ``ssl.SSLContext`` is used as it is, for commands and the subscriber: one
    trusting the server's certificate connects (on a redis:// URL: it implies TLS);
    the same settings without that trust are refused by the handshake."""
    _, port, ca = tls_server
    url = f"redis://127.0.0.1:{port}/0"
    trusted = ssl.create_default_context(cafile=ca)
    async with await CallableCache.connect(url, ssl_context=trusted) as a, \
            await CallableCache.connect(url.replace("redis:", "rediss:"),
                                        ssl_context=trusted) as b:
        await a.set_user(User(id="u1", name="one"))
        assert (await b.get_user_by_id("u1")).name == "one"  # type: ignore[union-attr]
        await a.set_user(User(id="u1", name="two"))
        await until(lambda: b.local["users"].peek("u1") is None
                    or b.local["users"].peek("u1").name == "two", what="b refreshed")
        assert a.sync_state.state == b.sync_state.state == "connected"
    with pytest.raises(ConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        await CallableCache.connect(url, ssl_context=ssl.create_default_context(),
                                    config=CacheConfig(connect_timeout=1))
    lenient = ssl.create_default_context()
    lenient.check_hostname = False
    lenient.verify_mode = ssl.CERT_NONE  # the context's own choice is honoured too
    async with await CallableCache.connect(url, ssl_context=lenient) as c:
        assert (await c.get_user_by_id("u1")).name == "two"  # type: ignore[union-attr]


def test_a_connection_over_an_ssl_context_answers_its_tls_properties() -> None:
    """redis-py's TLS connections expose their settings as properties read from their
    context holder; over an application's context they read None (the settings live on
    the context) instead of raising, and the context handed to the socket is that one."""
    from redis.asyncio.connection import SSLConnection

    from cal_redis.remote._options import connection_kwargs

    context = ssl.create_default_context()
    kwargs = connection_kwargs("redis://127.0.0.1:1/0", {"ssl_context": context})
    conn = kwargs.pop("connection_class")(**kwargs)
    assert isinstance(conn, SSLConnection)
    names = [n for n, v in vars(SSLConnection).items() if isinstance(v, property)]
    assert "check_hostname" in names and "keyfile" in names
    assert {n: getattr(conn, n) for n in names} == dict.fromkeys(names)
    assert conn.ssl_context.get() is context
    with pytest.raises(AttributeError):
        conn.ssl_context.no_such_setting  # noqa: B018 (the read is the test)


# -- client= -----------------------------------------------------------------------------------
@pytest.fixture
async def app_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, retry=_no_retry(), client_name="app-client")
    try:
        yield client
    finally:
        await client.aclose()


async def test_client_is_used_unchanged_and_left_open(
    app_client: aioredis.Redis, redis_url: str
) -> None:
    pool = app_client.connection_pool
    connection_class = pool.connection_class
    async with await CallableCache.connect(client=app_client) as a:
        b = await CallableCache.connect(redis_url)
        try:
            assert a.remote.client is app_client and a.redis_connection() is app_client
            await a.set_user(User(id="u1", name="one"))
            assert "app-client" in _names(redis_url)  # commands on the client's connections
            assert "cal-redis-sync-" + a.instance_id[:12] in _names(redis_url, "pubsub")
            assert (await a.get_user_by_id("u1")).name == "one"  # type: ignore[union-attr]
            await b.set_user(User(id="u1", name="two"))  # a's own subscriber hears it
            await until(lambda: a.local["users"].peek("u1") is None
                        or a.local["users"].peek("u1").name == "two", what="a refreshed")
            assert a.sync_state.state == "connected"
            assert "127.0.0.1" in repr(a)
        finally:
            await b.close()
    assert app_client.connection_pool is pool and pool.connection_class is connection_class
    assert "app-client" in _names(redis_url)  # its connections were not closed by the cache
    assert await app_client.ping()
    assert "cal-redis-sync-" + a.instance_id[:12] not in _names(redis_url, "pubsub")


async def test_refused_clients_say_why(redis_url: str) -> None:
    cases: list[tuple[Any, str]] = [
        (aioredis.Redis.from_url(redis_url, retry=Retry(ExponentialBackoff(), 3)),
         "re-sends failed commands (3 retries)"),
        (aioredis.Redis.from_url(redis_url, retry=_no_retry(), retry_on_error=[TimeoutError]),
         "retry_on_error"),
        (aioredis.Redis.from_url(redis_url, retry=_no_retry(), decode_responses=True),
         "needs the replies as bytes"),
        (aioredis.Redis.from_url(redis_url, retry=_no_retry(), encoding="latin-1"),
         "keys and values are UTF-8"),
        (aioredis.RedisCluster(host="127.0.0.1", port=1), "RedisCluster is not supported"),
        (redis.Redis.from_url(redis_url), "must be a redis.asyncio.Redis"),
    ]
    from redis.asyncio.sentinel import Sentinel

    cases.append((Sentinel([("127.0.0.1", 1)]).master_for("cal"), "redis+sentinel:// URL"))
    for client, why in cases:
        try:
            with pytest.raises(ConfigurationError, match="client=") as info:
                await CallableCache.connect(client=client)
            assert why in str(info.value), (why, str(info.value))
        finally:
            closing = client.aclose() if hasattr(client, "aclose") else client.close()
            if closing is not None:
                await closing


async def test_client_excludes_url_and_options(app_client: aioredis.Redis, redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="client= replaces the URL"):
        await CallableCache.connect(redis_url, client=app_client)
    with pytest.raises(ConfigurationError, match="client_name"):
        await CallableCache.connect(client=app_client, client_name="x")
    with pytest.raises(ConfigurationError, match="one server's client"):
        await CallableCache.connect(client=app_client, config=CacheConfig(topology="cluster"))


def test_redis_connection_on_a_cluster_with_an_ssl_context_is_refused() -> None:
    """redis-py's RedisCluster takes no ssl_context: asking for it says so (no I/O)."""
    from cal_redis.remote._cluster import ClusterRemote

    remote = ClusterRemote("redis+cluster://127.0.0.1:1", CacheConfig(),
                           options={"ssl_context": ssl.create_default_context()})
    with pytest.raises(ConfigurationError, match="RedisCluster takes no ssl_context"):
        _ = remote.client
