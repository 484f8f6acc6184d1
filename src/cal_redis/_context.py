"""What the parts of a cache share, built once by :class:`~cal_redis.CallableCache`,
and what each API mixin needs of its host.

Engines, the sync dispatcher and the API mixins all get the one :class:`Context`;
none of them reaches into the façade or into another part's private names.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .config import CacheConfig
from .keys import KeyBuilder
from .local import LocalTier

if TYPE_CHECKING:
    from .remote import Remote

__all__ = ("Context", "Gate", "NeedsContext")


@dataclass(slots=True)
class Gate:
    """The L1 gate, set by the sync dispatcher's degraded/connected policy.

    While ``fill_ok`` is False, L1 is neither filled nor trusted (events may have been
    lost). While ``track`` is True, events are applied to L1, so an own write is
    tracked until its echo comes back.
    """

    fill_ok: bool = True
    track: bool = False


@dataclass(slots=True, eq=False)
class Context:
    """Remote (L2), key builder, local tier (L1), L1 gate and instance id of one cache."""

    config: CacheConfig
    remote: Remote
    keys: KeyBuilder
    local: LocalTier
    gate: Gate = field(default_factory=Gate)
    #: Tags this instance's events (``origin``) so it can recognise its own echoes.
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex)


class NeedsContext(Protocol):
    """What the direct-Redis mixins need of their host: the context."""

    _ctx: Context
