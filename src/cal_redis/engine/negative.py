"""Negative caching: the L1 marker of "looked up, not in Redis".

A cache-first lookup that finds nothing stores :data:`ABSENT` under the key it
looked up, for the namespace's ``negative_ttl``, with the same fenced fill as a found
value (so a write or event racing the miss wins). Living under the entity's own L1
key, the marker is dropped by everything that drops or replaces the entry: events,
this instance's writes, flushes. Readers turn it back into ``None``.
"""

from __future__ import annotations

from typing import Any, Final, final

__all__ = ("ABSENT", "held")


@final
class _Absent:
    """The type of :data:`ABSENT` (one instance)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


#: Stored in L1 for a key known to be absent from Redis (see the module docstring).
ABSENT: Final[Any] = _Absent()


def held(value: Any) -> Any:
    """``value`` as read from L1 with ``peek``, ``None`` for the absent marker."""
    return None if value is ABSENT else value
