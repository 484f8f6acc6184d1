"""The OpenTelemetry side of :mod:`cal_redis.metrics`: instruments on a meter provider
and the per-cache recorder. Imported only once a meter provider has been found.

One :class:`Binding` per provider creates every instrument of
:data:`~cal_redis.metrics.METRICS` once (a meter keeps its instruments for good) and
adds up the caches bound to it. Observable instruments read the caches' own counters
when the provider collects, possibly from another thread (a Prometheus scrape, a
periodic exporter): the readers only read attributes and copy dicts in one C call, and
the binding's lock covers what it keeps itself. A counter that goes backwards (an L1's
``reset_stats()``) continues from where it was, so exported counters never decrease;
the counts of a cache that closed stay in the totals.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry.metrics import CallbackOptions, Histogram, Observation

from . import __version__
from .metrics import (
    DB_OPERATION,
    ERROR_TYPE,
    METRICS,
    NAMESPACE,
    Attrs,
    Metric,
    Sources,
)
from .models import Event
from .remote import Remote

__all__ = ("Binding", "CacheMetrics", "binding")

_lock = threading.Lock()
#: id(provider) -> its binding (the binding holds the provider, so the id stays its own).
_bindings: dict[int, Binding] = {}

_EVALSHA = Remote._evalsha
_PIPELINE = Remote._pipeline


def binding(provider: Any) -> Binding:
    """The binding of ``provider`` (made on first use, kept for good)."""
    with _lock:
        b = _bindings.get(id(provider))
        if b is None:
            b = _bindings[id(provider)] = Binding(provider)
        return b


def operation(what: str, fn: Callable[..., object], args: Sequence[Any]) -> str:
    """``db.operation.name`` of a Redis call: the command (``HGET``), ``EVALSHA`` for a
    script, ``MULTI`` / ``PIPELINE`` for a transaction / pipeline, else ``OTHER``."""
    func = getattr(fn, "__func__", None)
    if func is _EVALSHA:
        return "EVALSHA"
    if func is _PIPELINE:
        return "MULTI" if len(args) > 1 and args[1] else "PIPELINE"
    head = what.partition(" ")[0]
    return head if head.isalpha() and head.isupper() else "OTHER"


class CacheMetrics:
    """What one cache records as things happen (the :class:`~cal_redis.metrics.Observer`
    set on its remote and dispatcher), and the state of its exported counters."""

    __slots__ = ("_batch", "_duration", "_lag", "_lag_attrs", "_ops", "_server", "mono",
                 "sources")

    def __init__(self, sources: Sources, duration: Histogram, batch: Histogram,
                 lag: Histogram) -> None:
        self.sources = sources
        self._duration = duration
        self._batch = batch
        self._lag = lag
        self._server = dict(sources.server)
        self._ops: dict[str, dict[str, str | int]] = {}
        self._lag_attrs = {ns: {NAMESPACE: ns} for ns in sources.local.namespaces}
        #: (metric, attributes) -> (last value read, offset added): monotonic counters.
        self.mono: dict[tuple[str, Attrs], tuple[float, float]] = {}

    def monotonic(self, name: str, attrs: Attrs, value: float) -> float:
        """``value`` of a cumulative counter, continued past a reset (call under the lock)."""
        last, offset = self.mono.get((name, attrs), (0.0, 0.0))
        if value < last:
            offset += last
        self.mono[name, attrs] = (value, offset)
        return value + offset

    # -- the Observer protocol -------------------------------------------------------------
    def l2_done(
        self, what: str, fn: Callable[..., object], args: Sequence[Any], start: float,
        error: BaseException | None,
    ) -> None:
        elapsed = time.perf_counter() - start
        op = operation(what, fn, args)
        attrs = self._ops.get(op)
        if attrs is None:
            attrs = self._ops[op] = {**self._server, DB_OPERATION: op}
        if error is not None:
            attrs = {**attrs, ERROR_TYPE: type(error).__name__}
        self._duration.record(elapsed, attrs)

    def batch(self, n: int) -> None:
        self._batch.record(n)

    def event_applied(self, event: Event, namespace: str) -> None:
        if event.ts_us:
            lag = (time.time_ns() // 1000 - event.ts_us) / 1e6
        elif event.ts:
            lag = (time.time_ns() // 1_000_000 - event.ts) / 1e3
        else:
            return
        attrs = self._lag_attrs.get(namespace) or {NAMESPACE: namespace}
        self._lag.record(lag if lag > 0 else 0.0, attrs)  # clocks of two hosts may differ


class Binding:
    """The instruments of one meter provider and the caches recorded on it."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        meter = provider.get_meter("cal_redis", __version__)
        self._lock = threading.Lock()
        self._caches: list[CacheMetrics] = []
        #: metric -> attributes -> the final counts of caches no longer recorded.
        self._retired: dict[str, dict[Attrs, float]] = {}
        #: What each of those caches put into ``_retired`` and its counter state, so a
        #: cache recorded again continues its own counts instead of adding them twice.
        self._gone: weakref.WeakKeyDictionary[
            Sources, tuple[CacheMetrics, dict[tuple[str, Attrs], float]]
        ] = weakref.WeakKeyDictionary()
        self._counters = tuple(m for m in METRICS if m.instrument == "counter")
        hist: dict[str, Histogram] = {}
        for m in METRICS:
            if m.instrument == "histogram":
                hist[m.name] = meter.create_histogram(
                    m.name, unit=m.unit, description=m.description,
                    explicit_bucket_boundaries_advisory=m.buckets,
                )
            else:
                create = (meter.create_observable_counter if m.instrument == "counter"
                          else meter.create_observable_up_down_counter)
                create(m.name, callbacks=[self._callback(m)], unit=m.unit,
                       description=m.description)
        self._duration = hist["db.client.operation.duration"]
        self._batch = hist["cal_redis.l2.batch.size"]
        self._lag = hist["cal_redis.sync.event.lag"]

    def _callback(self, metric: Metric) -> Callable[[CallbackOptions], Iterable[Observation]]:
        read = metric.read
        assert read is not None, metric.name
        name = metric.name
        mono = metric.instrument == "counter"

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                totals = dict(self._retired.get(name, {}))
                for cm in self._caches:
                    for attrs, value in read(cm.sources):
                        if mono:
                            value = cm.monotonic(name, attrs, value)
                        totals[attrs] = totals.get(attrs, 0) + value
            return [Observation(v, dict(a)) for a, v in totals.items()]

        return observe

    def add(self, sources: Sources) -> CacheMetrics:
        """Record ``sources``' cache on this provider from now on."""
        cm = CacheMetrics(sources, self._duration, self._batch, self._lag)
        with self._lock:
            gone = self._gone.pop(sources, None)
            if gone is not None:  # recorded before: take its part out of the totals
                old, parts = gone
                cm.mono = old.mono
                for (name, attrs), value in parts.items():
                    self._retired[name][attrs] -= value
            self._caches.append(cm)
        sources.binding = self
        sources.remote.observer = cm
        sources.dispatcher.observer = cm
        return cm

    def remove(self, sources: Sources) -> None:
        """Stop recording a cache; its counters so far stay in the totals."""
        with self._lock:
            found = [cm for cm in self._caches if cm.sources is sources]
            for cm in found:
                self._caches.remove(cm)
                parts: dict[tuple[str, Attrs], float] = {}
                for m in self._counters:
                    assert m.read is not None
                    retired = self._retired.setdefault(m.name, {})
                    for attrs, value in m.read(sources):
                        final = cm.monotonic(m.name, attrs, value)
                        retired[attrs] = retired.get(attrs, 0) + final
                        parts[m.name, attrs] = final
                self._gone[sources] = (cm, parts)
        self._unhook(sources)

    def close(self) -> list[Sources]:
        """Stop recording every cache (the provider is shutting down) and forget this
        binding; return the caches' sources."""
        with _lock:
            if _bindings.get(id(self.provider)) is self:
                del _bindings[id(self.provider)]
        with self._lock:
            caches, self._caches = self._caches, []
        for cm in caches:
            self._unhook(cm.sources)
        return [cm.sources for cm in caches]

    def _unhook(self, sources: Sources) -> None:
        if sources.binding is self:
            sources.binding = None
            sources.remote.observer = None
            sources.dispatcher.observer = None

    @property
    def caches(self) -> int:
        """Caches recorded now."""
        return len(self._caches)
