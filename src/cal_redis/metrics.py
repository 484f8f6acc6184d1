"""Metrics of a cache through OpenTelemetry, and a Prometheus endpoint.

Nothing here imports OpenTelemetry until a meter provider is found, and nothing is
recorded without one. :meth:`CallableCache.connect <cal_redis.CallableCache.connect>`
looks for one, in this order:

1. ``CacheConfig(meter_provider=...)``;
2. the provider of :func:`serve_prometheus`, while it serves;
3. the global provider (``opentelemetry.metrics.set_meter_provider``), when the
   application has imported OpenTelemetry and set one.

``CacheConfig(metrics=False)`` turns it all off. A cache that finds no provider at
connect is instrumented by :func:`serve_prometheus` when that starts later.

**The hot path stays as it is.** L1 hits and misses, evictions, the L2 round trips,
the event counters, single-flight joins: every counter is one the cache keeps anyway
(``stats()``), exported through *observable* instruments, read only when the provider
collects. Only the three histograms are recorded as things happen, and none of them
on an L1 hit: the duration of every Redis command (``db.client.operation.duration``),
the ids per HMGET and the lag of every event applied to L1.

Metrics are per process: the caches bound to one provider are added up (a closed
cache's counts are kept), so no attribute names an instance or an account (unbounded
cardinality). :data:`METRICS` lists every metric; docs/observability.md has the table,
a Prometheus scrape config and a Grafana dashboard.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .config import CacheConfig
    from .local import LocalTier
    from .models import Event
    from .remote import Remote
    from .sync import Dispatcher, Hub

__all__ = (
    "METRICS",
    "Metric",
    "Observer",
    "PrometheusEndpoint",
    "Sources",
    "attach",
    "detach",
    "serve_prometheus",
)

#: Instrumentation scope (meter) name.
METER_NAME: Final = "cal_redis"

#: Attribute keys.
NAMESPACE: Final = "cal_redis.namespace"
FLUSH_REASON: Final = "cal_redis.flush.reason"
SYNC_STATE: Final = "cal_redis.sync.state"
DB_SYSTEM: Final = "db.system.name"
DB_OPERATION: Final = "db.operation.name"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"

#: The states :data:`SYNC_STATE` takes (one series each: how many caches are in it).
SYNC_STATES: Final = ("connected", "degraded", "stopped", "disabled")

#: Bucket bounds (seconds) of the duration and lag histograms: an L2 read takes ~0.1 ms
#: on loopback and an event ~0.1-0.3 ms to reach a peer's L1, so the buckets start at
#: 25 µs (OpenTelemetry's default buckets, 0-10,000, suit milliseconds, not seconds).
SECONDS_BUCKETS: Final = (
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
#: Bucket bounds of the batch-size histogram (ids per HMGET).
BATCH_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

Attrs = tuple[tuple[str, "str | int"], ...]
Reading = Iterable[tuple[Attrs, float]]


class Observer(Protocol):
    """What the parts of a metered cache tell as things happen (set on
    :attr:`Remote.observer <cal_redis.remote.Remote.observer>` and
    :attr:`Dispatcher.observer <cal_redis.sync.Dispatcher.observer>` only while a meter
    provider records them)."""

    def l2_done(
        self, what: str, fn: Callable[..., object], args: Sequence[Any], start: float,
        error: BaseException | None,
    ) -> None:
        """A Redis command ``fn(*args)`` (described by ``what``) that began at
        ``time.perf_counter()`` = ``start`` has ended (``error``: the exception it raised)."""

    def batch(self, n: int) -> None:
        """``n`` ids are read in one HMGET (a batch get or coalesced misses)."""

    def event_applied(self, event: Event, namespace: str) -> None:
        """``event`` was applied to the L1 namespace ``namespace``."""


@dataclass(eq=False)
class Sources:
    """The parts of one cache its metrics are read from (built by ``CallableCache``)."""

    config: CacheConfig
    local: LocalTier
    remote: Remote
    dispatcher: Dispatcher
    hub: Hub
    #: The engines: ``joins`` (single-flight), ``stale_serves``, ``refresher`` and
    #: ``spec.namespace``.
    engines: Sequence[Any]
    #: ``db.system.name``, ``server.address`` and ``server.port`` of the server.
    server: Attrs = ()
    #: The binding recording this cache, while one does.
    binding: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.server = server_attributes(self.remote.url)


def server_attributes(url: str) -> Attrs:
    """The ``db.system.name``, ``server.address`` and ``server.port`` of a Redis URL
    (a ``unix://`` socket: its path, no port)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return ((DB_SYSTEM, "redis"), (SERVER_ADDRESS, parts.path))
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return ((DB_SYSTEM, "redis"), (SERVER_ADDRESS, parts.hostname or "localhost"),
            (SERVER_PORT, port))


# -- the readers: one per observable metric, from the counters the cache keeps -------------
def _l1(attr: str) -> Callable[[Sources], Reading]:
    def read(src: Sources) -> Reading:
        local = src.local
        return [(((NAMESPACE, ns),), getattr(local[ns], attr)) for ns in local.namespaces]

    return read


def _l1_entries(src: Sources) -> Reading:
    local = src.local
    return [(((NAMESPACE, ns),), len(local[ns])) for ns in local.namespaces]


def _l2(attr: str) -> Callable[[Sources], Reading]:
    def read(src: Sources) -> Reading:
        return [(src.server, getattr(src.remote, attr))]

    return read


def _sync(attr: str) -> Callable[[Sources], Reading]:
    def read(src: Sources) -> Reading:
        return [((), getattr(src.dispatcher.counters, attr))]

    return read


def _joins(src: Sources) -> Reading:
    return [((), sum(e.joins for e in src.engines))]


def _per_engine(count: Callable[[Any], int]) -> Callable[[Sources], Reading]:
    def read(src: Sources) -> Reading:
        return [(((NAMESPACE, e.spec.namespace),), count(e)) for e in src.engines]

    return read


def _dropped(src: Sources) -> Reading:
    return [((), src.hub.overflow)]


def _flushes(src: Sources) -> Reading:
    # list(dict.items()) copies in one C call: safe against the event loop's thread
    # adding a key while a collector thread reads.
    return [(((NAMESPACE, ns), (FLUSH_REASON, reason)), n)
            for (ns, reason), n in list(src.dispatcher.counters.flushes.items())]


def _degraded(src: Sources) -> Reading:
    return [((), src.dispatcher.degraded_seconds())]


def _state(src: Sources) -> Reading:
    now = src.dispatcher.state
    return [(((SYNC_STATE, st),), 1 if st == now else 0) for st in SYNC_STATES]


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric: its OpenTelemetry name, instrument, unit, attributes, and for an
    observable one the reader of the cache's own counter it exports."""

    name: str
    #: ``counter`` (observable, monotonic), ``updowncounter`` (observable, a gauge
    #: that adds up across caches), ``histogram`` (recorded as things happen).
    instrument: str
    unit: str
    description: str
    attributes: tuple[str, ...] = ()
    read: Callable[[Sources], Reading] | None = field(default=None, compare=False)
    buckets: tuple[float, ...] | None = None

    @property
    def prometheus(self) -> str:
        """The name OpenTelemetry's Prometheus exporter gives it (histograms add
        ``_bucket``, ``_sum`` and ``_count``)."""
        base = self.name.replace(".", "_")
        unit = {"s": "seconds", "By": "bytes"}.get(self.unit, "")
        if unit:
            base += "_" + unit
        return base + "_total" if self.instrument == "counter" else base


_L1 = (NAMESPACE,)
_SERVER = (DB_SYSTEM, SERVER_ADDRESS, SERVER_PORT)

#: Every metric of cal-redis (docs/observability.md lists the same, with their
#: Prometheus names).
METRICS: Final[tuple[Metric, ...]] = (
    Metric("cal_redis.l1.hits", "counter", "{hit}",
           "L1 lookups that found a live entry", _L1, _l1("hits")),
    Metric("cal_redis.l1.misses", "counter", "{miss}",
           "L1 lookups that found nothing (absent or expired)", _L1, _l1("misses")),
    Metric("cal_redis.l1.evictions", "counter", "{entry}",
           "L1 entries evicted to stay within the namespace's byte budget", _L1,
           _l1("evictions")),
    Metric("cal_redis.l1.expirations", "counter", "{entry}",
           "L1 entries removed because their TTL ran out", _L1, _l1("expirations")),
    Metric("cal_redis.l1.entries", "updowncounter", "{entry}",
           "Entries held in L1", _L1, _l1_entries),
    Metric("cal_redis.l1.memory.usage", "updowncounter", "By",
           "Estimated bytes held by L1 entries (their weight)", _L1, _l1("weight")),
    Metric("cal_redis.l1.memory.limit", "updowncounter", "By",
           "The L1 byte budget", _L1, _l1("max_weight")),
    Metric("cal_redis.l1.stale_serves", "counter", "{read}",
           "Reads answered with a stale L1 value because Redis could not be reached", _L1,
           _per_engine(lambda e: e.stale_serves)),
    Metric("cal_redis.l1.refreshes", "counter", "{refresh}",
           "Refresh-ahead reads of L1 entries hit in the last part of their TTL", _L1,
           _per_engine(lambda e: e.refresher.refreshes)),
    Metric("cal_redis.l1.refresh_errors", "counter", "{refresh}",
           "Refresh-ahead reads that failed (the entry stays until its TTL)", _L1,
           _per_engine(lambda e: e.refresher.errors)),
    Metric("cal_redis.l2.reads", "counter", "{read}",
           "Idempotent reads sent to Redis (first attempts and retries)", _SERVER,
           _l2("reads")),
    Metric("cal_redis.l2.round_trips", "counter", "{round_trip}",
           "Round trips to Redis, reads and writes", _SERVER, _l2("round_trips")),
    Metric("cal_redis.l2.errors", "counter", "{error}",
           "Redis calls that failed (after their retries)", _SERVER, _l2("errors")),
    Metric("cal_redis.l2.retries", "counter", "{retry}",
           "Reads retried after a connection error", _SERVER, _l2("retries")),
    Metric("db.client.operation.duration", "histogram", "s",
           "Duration of each Redis call, retries included",
           (DB_SYSTEM, DB_OPERATION, SERVER_ADDRESS, SERVER_PORT, ERROR_TYPE),
           buckets=SECONDS_BUCKETS),
    Metric("cal_redis.l2.batch.size", "histogram", "{key}",
           "Ids per HMGET of a batch get or of coalesced misses", buckets=BATCH_BUCKETS),
    Metric("cal_redis.single_flight.joins", "counter", "{call}",
           "Calls that joined another caller's load of the same key instead of reading",
           read=_joins),
    Metric("cal_redis.sync.events.received", "counter", "{event}",
           "Messages received on the event channels, valid or not", read=_sync("received")),
    Metric("cal_redis.sync.events.applied", "counter", "{event}",
           "Events that refreshed or invalidated an L1 entry or dropped a namespace",
           read=_sync("applied")),
    Metric("cal_redis.sync.events.echoes", "counter", "{event}",
           "This instance's own events coming back", read=_sync("echoes")),
    Metric("cal_redis.sync.events.superseded", "counter", "{event}",
           "Foreign events ignored because an own write of the key is newer",
           read=_sync("superseded")),
    Metric("cal_redis.sync.events.unknown", "counter", "{event}",
           "Well-formed events of a type no engine applies (application events)",
           read=_sync("unknown")),
    Metric("cal_redis.sync.events.malformed", "counter", "{event}",
           "Rejected event payloads (bad JSON or shape, too large, wrong channel or account)",
           read=_sync("malformed")),
    Metric("cal_redis.sync.events.dropped", "counter", "{event}",
           "Events dropped because an application stream's buffer was full",
           read=_dropped),
    Metric("cal_redis.sync.event.lag", "histogram", "s",
           "From an event's timestamp (ts_us, else ts) to its application to L1", _L1,
           buckets=SECONDS_BUCKETS),
    Metric("cal_redis.sync.disconnects", "counter", "{disconnect}",
           "Event subscriptions lost after being confirmed", read=_sync("disconnects")),
    Metric("cal_redis.sync.reconnects", "counter", "{reconnect}",
           "Event subscriptions restored after a loss", read=_sync("reconnects")),
    Metric("cal_redis.sync.flushes", "counter", "{flush}",
           "L1 namespace flushes, by reason", (NAMESPACE, FLUSH_REASON), _flushes),
    Metric("cal_redis.sync.degraded.time", "counter", "s",
           "Time spent degraded (L1 bypassed because events may have been lost)",
           read=_degraded),
    Metric("cal_redis.sync.state", "updowncounter", "{cache}",
           "Caches in each sync state (connected, degraded, stopped, disabled)",
           (SYNC_STATE,), _state),
)


# -- binding caches to meter providers ------------------------------------------------------
_lock = threading.Lock()
#: The provider of the running Prometheus endpoint, if any.
_endpoint_provider: Any = None
#: Caches with metrics on that found no provider at connect (bound by serve_prometheus).
_waiting: weakref.WeakSet[Sources] = weakref.WeakSet()


def _global_provider() -> Any:
    """The application's global meter provider, or None when it set none (without
    importing OpenTelemetry: an application that never imported it set none)."""
    api = sys.modules.get("opentelemetry.metrics")
    if api is None:
        return None
    provider = api.get_meter_provider()
    internal = sys.modules.get("opentelemetry.metrics._internal")
    if provider is getattr(internal, "_PROXY_METER_PROVIDER", None) or isinstance(
        provider, api.NoOpMeterProvider
    ):
        return None
    return provider


def attach(sources: Sources) -> bool:
    """Start recording the metrics of a connected cache if a meter provider is known
    (see the module docstring); True when it is recorded."""
    config = sources.config
    if not config.metrics:
        return False
    provider = config.meter_provider
    if provider is None:
        with _lock:
            provider = _endpoint_provider
            if provider is None:
                provider = _global_provider()
            if provider is None:
                _waiting.add(sources)
                return False
    _bind(sources, provider)
    return True


def _bind(sources: Sources, provider: Any) -> None:
    try:
        from . import _otel
    except ImportError as err:  # pragma: no cover - a provider implies the API
        raise ConfigurationError(
            f"metrics need opentelemetry-api: pip install 'cal-redis[otel]' ({err})"
        ) from err
    _otel.binding(provider).add(sources)


def detach(sources: Sources) -> None:
    """Stop recording a cache (it closed); its counts so far stay in the totals."""
    with _lock:
        _waiting.discard(sources)
    binding = sources.binding
    if binding is not None:
        binding.remove(sources)


class PrometheusEndpoint:
    """The HTTP server of :func:`serve_prometheus`: ``GET /metrics`` in the Prometheus
    text format. Stop it with :meth:`close` (or use it as a context manager)."""

    def __init__(self, server: Any, thread: threading.Thread, provider: Any, addr: str) -> None:
        self._server = server
        self._thread = thread
        self.provider = provider
        #: The address and port it listens on (the port the OS chose for ``port=0``).
        self.addr = addr
        self.port: int = server.server_port

    @property
    def url(self) -> str:
        """The metrics URL, ``http://addr:port/metrics``."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and stop recording the caches bound to it (idempotent)."""
        global _endpoint_provider
        server, self._server = self._server, None
        if server is None:
            return
        with _lock:
            if _endpoint_provider is self.provider:
                _endpoint_provider = None
        server.shutdown()
        server.server_close()
        self._thread.join(timeout=5)
        from . import _otel

        dropped = _otel.binding(self.provider).close()
        with _lock:  # still open: bound again by the next endpoint
            _waiting.update(dropped)
        self.provider.shutdown()

    def __enter__(self) -> PrometheusEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._server is None else "serving"
        return f"<PrometheusEndpoint {self.url} {state}>"


def serve_prometheus(port: int = 9464, addr: str = "127.0.0.1") -> PrometheusEndpoint:
    """Serve the metrics of this process's caches at ``http://addr:port/metrics``.

    Needs the ``prometheus`` extra (``pip install 'cal-redis[prometheus]'``: the
    OpenTelemetry SDK, its Prometheus exporter and prometheus-client). It makes a
    meter provider of its own whose reader is that exporter, binds to it every cache
    that has no other provider (those connected before and those connecting while it
    serves), and starts prometheus-client's HTTP server in a daemon thread. The
    default address is loopback: pass ``addr="0.0.0.0"`` (or the pod's address) for
    a Prometheus on another host. ``port=0`` lets the OS choose (see
    :attr:`PrometheusEndpoint.port`). One endpoint per process at a time.

    Example::

        endpoint = serve_prometheus(9464)
        async with await CallableCache.connect() as cache:
            ...
        endpoint.close()
    """
    global _endpoint_provider
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError as err:
        raise ConfigurationError(
            "serve_prometheus needs the prometheus extra: pip install 'cal-redis[prometheus]' "
            f"({err})"
        ) from err
    with _lock:
        if _endpoint_provider is not None:
            raise ConfigurationError("serve_prometheus is already serving in this process")
        registry = CollectorRegistry(auto_describe=True)
        provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
        try:
            server, thread = start_http_server(port, addr=addr, registry=registry)
        except OSError as err:
            provider.shutdown()
            raise ConfigurationError(f"cannot serve metrics on {addr}:{port}: {err}") from err
        _endpoint_provider = provider
        waiting = list(_waiting)
        _waiting.clear()
    for sources in waiting:
        _bind(sources, provider)
    return PrometheusEndpoint(server, thread, provider, addr)
