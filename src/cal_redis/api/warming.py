"""Cache warming: fill L1 before the first request instead of on the first miss.

Small tables (regions, proxies, accounts) are read whole with ``HSCAN``; large ones
(users) by a given id list (``HMGET``, 1,000 ids per command, ten commands per round
trip) or with ``HSCAN`` up to the namespace budget; devices per account. Every page
is one fenced fill through the same machinery as a batch read
(:meth:`~cal_redis.engine.entities.Entities.warm_all`, ``warm_ids``): its fill token
is taken before the read, so a write or an event that touches a key while the page
is in flight wins, and the warm-up never puts back an older value. While sync is
degraded nothing is filled (the counts say so).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .._context import NeedsContext
from ..config import WARMABLE
from ..errors import ValidationError
from ..keys import validate_id, validate_ids

if TYPE_CHECKING:
    from ..engine.entities import Entities
    from ..engine.ttl_keys import TtlKeys

__all__ = ("NamespaceWarm", "WarmOps", "WarmProgress", "WarmResult")

#: ``progress(namespace, done, total)``: called after every page; ``total`` is the
#: number of ids asked for, the table's length (``HLEN``) or None when unknown.
WarmProgress = Callable[[str, int, int | None], object]


@dataclass(frozen=True, slots=True)
class NamespaceWarm:
    """What warming one namespace did."""

    namespace: str
    #: Entities read from Redis.
    read: int
    #: Entries stored in L1: fewer than ``read`` when a write won a race with the
    #: warm-up (fenced fill), when sync was degraded, or at the budget.
    stored: int
    #: JSON bytes read from Redis.
    bytes: int
    seconds: float
    #: False when the warm-up stopped because the namespace's L1 budget was full.
    complete: bool


@dataclass(frozen=True, slots=True)
class WarmResult:
    """What :meth:`WarmOps.warm` did, per namespace, with totals."""

    namespaces: dict[str, NamespaceWarm]
    seconds: float

    @property
    def read(self) -> int:
        """Entities read, all namespaces."""
        return sum(n.read for n in self.namespaces.values())

    @property
    def stored(self) -> int:
        """Entries stored in L1, all namespaces."""
        return sum(n.stored for n in self.namespaces.values())

    @property
    def bytes(self) -> int:
        """JSON bytes read, all namespaces."""
        return sum(n.bytes for n in self.namespaces.values())

    def as_dict(self) -> dict[str, Any]:
        """The result as plain data (for logs and JSON)."""
        return {
            "seconds": self.seconds, "read": self.read, "stored": self.stored,
            "bytes": self.bytes,
            "namespaces": {k: asdict(v) for k, v in self.namespaces.items()},
        }


class WarmOps(NeedsContext):
    """Mixin of :class:`~cal_redis.CallableCache`: :meth:`warm`."""

    _engines: tuple[Entities[Any] | TtlKeys[Any], ...]

    async def warm(
        self,
        namespaces: Iterable[str] = ("regions", "proxies", "accounts"),
        *,
        users: Sequence[str] | None = None,
        devices: Iterable[str] = (),
        progress: WarmProgress | None = None,
        page: int = 1000,
    ) -> WarmResult:
        """Fill L1 from Redis ahead of traffic; return counts and bytes per namespace.

        - ``namespaces``: whole tables to read with ``HSCAN`` (``page`` fields asked
          per call), among ``regions``, ``proxies``, ``accounts``, ``users``; each
          stops when its L1 budget is full (``complete`` False).
        - ``users``: user ids to warm (``HMGET`` by 1,000, ten per round trip) in
          place of scanning ``cal:users``; missing ids are skipped.
        - ``devices``: account ids whose devices to warm (each account's hash whole).
        - ``progress(namespace, done, total)`` is called after every page.

        Every argument is validated before any I/O. Fills are fenced: a write or an
        event during the warm-up wins over the value the warm-up read. Entries that
        do not decode are skipped and logged, not raised. Also run at connect by
        ``CacheConfig(warm=WarmPlan(...))``.

        Example::

            result = await cache.warm(("regions", "proxies", "accounts"), users=ids)
            print(result.stored, result.bytes, result.seconds)
        """
        if isinstance(namespaces, str):
            raise ValidationError("namespaces", "expected a sequence of names, got str")
        names = list(dict.fromkeys(namespaces))
        for name in names:
            if name not in WARMABLE:
                raise ValidationError("namespaces", f"{name!r} cannot be warmed (one of {WARMABLE})")
        user_ids: list[Any] | None = None
        if users is not None:
            if isinstance(users, str | bytes) or not isinstance(users, Sequence):
                raise ValidationError("users", f"expected a sequence of ids, got {type(users).__name__}")
            user_ids = list(dict.fromkeys(users))
            validate_ids(user_ids, "users")
        if isinstance(devices, str):
            raise ValidationError("devices", "expected a sequence of account ids, got str")
        accounts = list(dict.fromkeys(devices))
        for i, account in enumerate(accounts):
            validate_id(account, f"devices[{i}]")
        if type(page) is not int or page < 1:
            raise ValidationError("page", "must be an int >= 1")
        if progress is not None and not callable(progress):
            raise ValidationError("progress", "must be callable")
        self._ctx.remote.check()

        engines = {e.spec.namespace: e for e in self._engines if hasattr(e, "warm_all")}
        out: dict[str, NamespaceWarm] = {}
        started = time.perf_counter()
        for name in [n for n in WARMABLE if n in names or (n == "users" and user_ids)]:
            engine: Entities[Any] = engines[name]  # type: ignore[assignment]
            t0 = time.perf_counter()
            if name == "users" and user_ids is not None:
                report = _reporter(progress, name, len(user_ids))
                got = await engine.warm_ids(None, user_ids, progress=report)
            else:
                total = await self._table_len(engine, None) if progress else None
                got = await engine.warm_all(None, count=page,
                                            progress=_reporter(progress, name, total))
            out[name] = NamespaceWarm(name, *got[:3], time.perf_counter() - t0, got[3])
        if accounts:
            engine = engines["devices"]  # type: ignore[assignment]
            t0 = time.perf_counter()
            read = stored = nbytes = 0
            complete = True
            for account in accounts:
                report = _reporter(progress, "devices", None, offset=read)
                got = await engine.warm_all(account, count=page, progress=report)
                read, stored, nbytes = read + got[0], stored + got[1], nbytes + got[2]
                if not got[3]:
                    complete = False
                    break
            out["devices"] = NamespaceWarm("devices", read, stored, nbytes,
                                           time.perf_counter() - t0, complete)
        return WarmResult(out, time.perf_counter() - started)

    async def _table_len(self, engine: Entities[Any], account_id: str | None) -> int:
        remote = self._ctx.remote
        key = engine.spec.hash_key(self._ctx.keys, account_id)
        n: int = await remote.read("HLEN " + key, remote.cmd.hlen, key)
        return int(n)


def _reporter(
    progress: WarmProgress | None, name: str, total: int | None, offset: int = 0
) -> Callable[[int], object] | None:
    if progress is None:
        return None
    return lambda done: progress(name, offset + done, total)
