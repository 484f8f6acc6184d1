"""Shared plumbing of the direct-Redis mixins (sessions, agents, queues, records, ...).

:class:`DirectOps` is the base of every direct-Redis mixin: it declares what the
mixins need of their host (the context) and holds the helpers they share: argument
checks that run before any I/O and :meth:`DirectOps._put`, the merge-safe write of
one JSON value through the one write path (:mod:`cal_redis.engine.writes`).

Merge-safe: a write must not drop fields another service stored and this version does
not know (docs/wire-format.md, "Compatibility"). The first attempt is accepted by the
write script when nothing is stored or the stored value has only fields this version
knows (one round trip); otherwise the script answers the stored value, the new one is
merged over it (:func:`cal_redis.codec.merge_encode`) and sent again as a
compare-and-set against exactly that value.
"""

from __future__ import annotations

import math

from .. import codec
from .._context import NeedsContext
from ..engine.writes import Target, check_model, owned, put
from ..errors import ValidationError
from ..models import Model

__all__ = ("DirectOps", "MAX_TTL_MS", "seconds", "ttl_ms")

#: Upper bound of a TTL (about 8,900 years): keeps ``now + ttl`` inside Redis' range.
MAX_TTL_MS = 2**48


def seconds(value: object, argument: str) -> float:
    """``value`` as a positive, finite number of seconds, else ValidationError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = type(value).__name__
        raise ValidationError(argument, f"expected seconds as int or float, got {kind}")
    if not math.isfinite(value) or value <= 0:
        raise ValidationError(argument, f"must be a positive, finite number of seconds: {value!r}")
    return float(value)


def ttl_ms(ttl: object, argument: str = "ttl") -> int:
    """A TTL in seconds (int or float, > 0) as whole milliseconds for ``PX``, rounded up."""
    ms = math.ceil(seconds(ttl, argument) * 1000)
    if ms > MAX_TTL_MS:
        raise ValidationError(argument, f"at most {MAX_TTL_MS // 1000} seconds")
    return ms


class DirectOps(NeedsContext):
    """Base of the direct-Redis mixins of :class:`~cal_redis.CallableCache`."""

    _check_model = staticmethod(check_model)
    _owned = staticmethod(owned)
    _json = staticmethod(codec.check)

    async def _put(
        self, what: str, target: Target, obj: Model, data: bytes, *,
        must_exist: tuple[str, str] | None = None,
    ) -> bool:
        """Merge-safe write through the one write path (:func:`cal_redis.engine.writes.put`)."""
        return await put(self._ctx.remote, what, target, obj, data, must_exist=must_exist)
