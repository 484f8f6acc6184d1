"""One real redis-server per test session (the embedded launcher), a clean database
per test, and the L1 implementation fixture.

``l1_impl`` is the one implementation fixture. Tests marked ``l1`` (a module-level
``pytestmark`` in the modules that exercise the L1) get it parametrized: once with the
compiled LRU (param marked ``c_extension``) and once with its pure-Python twin. Every
other test that needs a cache runs once, with the implementation ``cal_redis._fast``
picked.

The compiled variants skip when ``--no-c-extensions`` is given, and by default when
``CAL_REDIS_NO_EXTENSIONS`` is set (read once, by ``cal_redis._fast.NO_EXTENSIONS``).
Otherwise a compiled module that does not import fails those tests: an install that
silently fell back to pure Python must not pass. (The install checks of test_lru.py and
the state machine of test_lru_stateful.py follow ``NO_EXTENSIONS`` alone, for the same
reason.)

``--redis-cluster`` (or ``CAL_REDIS_TEST_CLUSTER=1``) runs the tests against one
:class:`~cal_redis.embedded.EmbeddedCluster` per session (3 masters + 3 replicas,
FLUSHALL on every master between tests): ``redis_url`` is then its
``redis+cluster://`` URL and ``raw`` a ``redis.RedisCluster``. Tests that cannot run
on a cluster are marked ``standalone_only``.

Tests marked ``faults`` (tests/test_faults.py: real faults against a server of their
own, a minute or two) run only when ``-m`` selects them (``pytest -m faults``); every
other run deselects them (`make test` runs them as a second pytest run of their own). Their figures
(``report_figures``) are printed at the end of the run.

Tests marked ``sentinel`` start their own Redis Sentinel deployment
(:class:`~cal_redis.embedded.EmbeddedSentinel`: ``redis-sentinel`` processes beside a
primary and its replicas). Without the ``redis-sentinel`` binary they are skipped,
saying how to install it, except under ``CI=true``, where they run (and fail).

``--event-loop=uvloop`` (or ``CAL_REDIS_TEST_LOOP=uvloop``) runs every async test and
fixture on uvloop's event loop, through pytest-asyncio's ``pytest_asyncio_loop_factories``
hook (pytest-asyncio 1.4+; install the ``uvloop`` extra).
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from hypothesis import settings

from cal_redis import CacheConfig, CallableCache, _fast
from cal_redis import local as local_mod
from cal_redis._fast import _lru_py
from cal_redis.embedded import EmbeddedCluster, EmbeddedRedis, EmbeddedRedisError, find_sentinel_binary

# No per-example deadline: these 2-core CI machines are noisy. "ci" keeps examples
# derandomized so a red run can be reproduced.
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

L1_MARK = pytest.mark.l1
C_EXT_MARK = pytest.mark.c_extension
#: The parametrization of ``l1_impl`` in tests marked ``l1``; ids as in the test names.
STANDALONE_MARK = pytest.mark.standalone_only
FAULTS_MARK = pytest.mark.faults
#: Lines tests leave for the end of the run: title -> (header, rows), in test order.
FIGURES = pytest.StashKey[dict[str, tuple[str, list[str]]]]()
SENTINEL_MARK = pytest.mark.sentinel
L1_PARAMS = (pytest.param("c", marks=C_EXT_MARK, id="c"), pytest.param("py", id="py"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default=os.environ.get("CAL_REDIS_TEST_LOOP") or "asyncio",
        dest="event_loop",
        help="the event loop of async tests (default: $CAL_REDIS_TEST_LOOP, else asyncio)",
    )
    parser.addoption(
        "--redis-cluster",
        action="store_true",
        default=os.environ.get("CAL_REDIS_TEST_CLUSTER") == "1",
        dest="redis_cluster",
        help="run against a 3+3 embedded Redis Cluster (default: $CAL_REDIS_TEST_CLUSTER=1)",
    )
    parser.addoption(
        "--c-extensions",  # --no-c-extensions
        action=argparse.BooleanOptionalAction,
        default=None,
        dest="c_extensions",
        help="test the compiled L1 too (default: yes, unless CAL_REDIS_NO_EXTENSIONS is set)",
    )


class _UvloopFactory:
    """Registered under ``--event-loop=uvloop``: pytest-asyncio makes every test's loop
    with ``uvloop.new_event_loop`` (one factory, so test names are unchanged)."""

    @staticmethod
    def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
        import uvloop

        return {"uvloop": uvloop.new_event_loop}


def pytest_configure(config: pytest.Config) -> None:
    if config.option.redis_cluster:
        os.environ["CAL_REDIS_TEST_CLUSTER"] = "1"  # tests/keyspace.py: the cluster key style
    if config.option.event_loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise pytest.UsageError(
                "--event-loop=uvloop: uvloop is not installed (pip install '.[test,uvloop]')"
            ) from None
        if not hasattr(config.pluginmanager.hook, "pytest_asyncio_loop_factories"):
            raise pytest.UsageError(
                "--event-loop=uvloop needs pytest-asyncio 1.4 or newer "
                "(its pytest_asyncio_loop_factories hook)"
            )
        config.pluginmanager.register(_UvloopFactory(), "cal-redis-uvloop")
    if config.option.c_extensions is None:
        config.option.c_extensions = not _fast.NO_EXTENSIONS
    declared = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    for mark, doc in (
        (L1_MARK, "exercises the L1: tests using l1_impl run with each implementation"),
        (C_EXT_MARK, "runs only against the compiled module"),
        (STANDALONE_MARK, "needs a single server (skipped under --redis-cluster)"),
        (SENTINEL_MARK, "starts redis-sentinel processes (skipped without the binary, "
                        "except under CI=true)"),
    ):
        if mark.name not in declared:
            config.addinivalue_line("markers", f"{mark.name}: {doc}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "l1_impl" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        L1_MARK.name
    ):
        metafunc.parametrize("l1_impl", L1_PARAMS, indirect=True)


def sentinel_missing() -> str | None:
    """Why the ``sentinel`` tests cannot run here (no binary), or None when they can."""
    try:
        find_sentinel_binary()
    except EmbeddedRedisError as err:
        return str(err)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FAULTS_MARK.name not in (config.option.markexpr or ""):
        faults = [item for item in items if item.get_closest_marker(FAULTS_MARK.name)]
        if faults:
            config.hook.pytest_deselected(items=faults)
            items[:] = [item for item in items if not item.get_closest_marker(FAULTS_MARK.name)]
    missing = sentinel_missing()
    if missing is not None and os.environ.get("CI", "").lower() not in ("true", "1"):
        no_sentinel = pytest.mark.skip(reason=missing)
        for item in items:
            if item.get_closest_marker(SENTINEL_MARK.name) is not None:
                item.add_marker(no_sentinel)
    if config.option.redis_cluster:
        alone = pytest.mark.skip(reason="--redis-cluster: needs a single server")
        for item in items:
            if item.get_closest_marker(STANDALONE_MARK.name) is not None:
                item.add_marker(alone)
    if config.option.c_extensions:
        return
    why = "CAL_REDIS_NO_EXTENSIONS is set" if _fast.NO_EXTENSIONS else "--no-c-extensions"
    skip = pytest.mark.skip(reason=f"{why}: compiled L1 not tested")
    for item in items:
        if item.get_closest_marker(C_EXT_MARK.name) is not None:
            item.add_marker(skip)


def lru_class(name: str) -> Any:
    """The LRU class of implementation ``name`` ("c" or "py"). The compiled one must
    import: its tests were skipped at collection if it was disabled on purpose."""
    if name == "py":
        return _lru_py.LRUCache
    try:
        return importlib.import_module("cal_redis._fast._lru_c").LRUCache
    except ImportError as err:
        pytest.fail(
            f"compiled module cal_redis._fast._lru_c does not import ({err!r}); for a "
            "pure-Python install set CAL_REDIS_NO_EXTENSIONS=1 or pass --no-c-extensions"
        )


@pytest.fixture
def l1_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The L1 implementation caches are built with: "c" or "py".

    Each in turn for tests marked ``l1``; otherwise the one ``cal_redis._fast`` picked
    (the twin under ``--no-c-extensions``).
    """
    name: str | None = getattr(request, "param", None)
    if name is None:
        if request.config.option.c_extensions or not _fast.EXTENSION_ACTIVE:
            return "c" if _fast.EXTENSION_ACTIVE else "py"  # left as the package picked
        name = "py"
    monkeypatch.setattr(local_mod, "LRUCache", lru_class(name))
    return name


@pytest.fixture
def lru_cls(l1_impl: str) -> Any:
    """The LRU class of ``l1_impl`` (each implementation in turn in ``l1`` tests)."""
    return lru_class(l1_impl)


@pytest.fixture(scope="session")
def report_figures(pytestconfig: pytest.Config) -> Any:
    """``report_figures(title, header, row)``: a row of figures printed under ``title``
    (and its ``header``) in the terminal summary, which CI output shows without ``-s``."""
    tables = pytestconfig.stash.setdefault(FIGURES, {})

    def add(title: str, header: str, row: str) -> None:
        tables.setdefault(title, (header, []))[1].append(row)

    return add


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    for title, (header, rows) in config.stash.get(FIGURES, {}).items():
        terminalreporter.write_sep("-", title)
        terminalreporter.write_line(header)
        for row in rows:
            terminalreporter.write_line(row)


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[EmbeddedRedis | EmbeddedCluster]:
    """The session's private redis-server (an embedded cluster under --redis-cluster)."""
    server = EmbeddedCluster() if request.config.option.redis_cluster else EmbeddedRedis()
    with server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis | EmbeddedCluster) -> Iterator[str]:
    """URL of a freshly flushed database on the session's server."""
    if isinstance(redis_server, EmbeddedCluster):
        redis_server.flushall()
        _drain_cluster_bus(redis_server)
    else:
        client = redis.Redis.from_url(redis_server.url)
        client.flushall()
        client.close()
    yield redis_server.url


def _drain_cluster_bus(cluster: EmbeddedCluster) -> None:
    """Wait until every event an earlier test published has reached every node.

    Cluster pub/sub forwards messages over the cluster bus, so an event of the
    previous test can arrive after the next test's cache subscribed. Each master
    publishes a token after everything it forwarded before; once every node has
    seen every token, nothing older is in flight.
    """
    import time
    import uuid

    token = uuid.uuid4().hex.encode()
    subs = []
    for node in cluster.nodes:
        client = redis.Redis(host=cluster.host, port=node.port)
        sub = client.pubsub()
        sub.subscribe("cal:test:barrier")
        sub.get_message(timeout=1.0)  # the subscribe confirmation
        subs.append((client, sub))
    masters = cluster.masters()
    for node in masters:
        redis.Redis(host=cluster.host, port=node.port).publish(
            "cal:test:barrier", token + b":%d" % node.port)
    deadline = time.monotonic() + 5.0
    for client, sub in subs:
        seen = 0
        while seen < len(masters) and time.monotonic() < deadline:
            msg = sub.get_message(timeout=0.5)
            if msg and msg["type"] == "message" and msg["data"].startswith(token):
                seen += 1
        sub.close()
        client.close()


@pytest.fixture
def quiesce(redis_server: EmbeddedRedis | EmbeddedCluster) -> Any:
    """Call it to wait until every event published so far has reached every node (a
    no-op on one server, where a subscriber gets events in publish order)."""
    if isinstance(redis_server, EmbeddedCluster):
        return lambda: _drain_cluster_bus(redis_server)
    return lambda: None


@pytest.fixture
def raw(redis_url: str, redis_server: EmbeddedRedis | EmbeddedCluster) -> Iterator[Any]:
    """A plain synchronous redis-py client on the test database (a "foreign" writer);
    a ``redis.RedisCluster`` under --redis-cluster."""
    if isinstance(redis_server, EmbeddedCluster):
        client: Any = redis.RedisCluster(host=redis_server.host, port=redis_server.ports[0])
    else:
        client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def make_cache(redis_url: str, l1_impl: str) -> AsyncIterator[Any]:
    """Factory of connected caches on the test database; all closed at teardown."""
    made: list[CallableCache] = []

    async def factory(config: CacheConfig | None = None, url: str | None = None) -> CallableCache:
        cache = await CallableCache.connect(url or redis_url, config=config)
        made.append(cache)
        return cache

    try:
        yield factory
    finally:
        for c in made:
            await c.close()


@pytest.fixture
async def cache(redis_url: str, l1_impl: str) -> AsyncIterator[CallableCache]:
    """A connected cache on a clean database, with the L1 implementation of ``l1_impl``."""
    c = await CallableCache.connect(redis_url)
    try:
        yield c
    finally:
        await c.close()
