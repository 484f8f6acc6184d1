"""The one write path: every merge-safe write of a JSON value goes through :func:`write`.

A write is a compare-and-set run by one server-side script (:data:`._lua.WRITE`, or
for agent statuses :data:`._lua.AGENT_SET`, which follows the same protocol): the
caller computes what to store from the value it believes is stored (its *guess*:
usually this instance's L1 copy re-encoded, or "nothing"), and the script stores it,
with the ident mappings, member set and event, only if the stored value is still
that one, byte for byte. Otherwise the script answers the stored value, the write
is computed again over it and sent once more. So a write costs one round trip when
the guess is right and two when it is not (the refusal doubles as the read); only
writers of the *same* value can make each other retry, and each retry provably
wrote nothing. Merging happens here in Python (msgspec), never in Lua.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import msgspec

from .. import codec
from ..config import CacheConfig
from ..errors import CalRedisError, NotFoundError, ValidationError
from ..keys import validate_id
from ..models import Model
from ..remote import Remote, Script
from . import _lua

__all__ = (
    "ANY",
    "KNOWN",
    "KNOWN_EXISTING",
    "MAX_ATTEMPTS",
    "Guess",
    "Outcome",
    "Step",
    "Target",
    "check_model",
    "log_limits",
    "owned",
    "put",
    "write",
    "write_with",
)

R = TypeVar("R")
M = TypeVar("M", bound=Model)

#: Compare-and-set attempts before giving up (only concurrent writers of the same
#: value make an attempt fail; each failed attempt wrote nothing). From the third
#: attempt on (a refused guess is normal, a second refusal means contention) writers
#: back off with jitter so that they spread out.
MAX_ATTEMPTS: Final = 100


async def _contended(attempt: int) -> None:
    if attempt >= 2:  # exponential backoff with full jitter, capped at 20 ms
        await asyncio.sleep(random.random() * min(0.02, 0.0005 * 2 ** (attempt - 2)))


class _Any:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ANY"


class _Known:
    __slots__ = ()

    def __repr__(self) -> str:
        return "KNOWN"


#: A guess that accepts whatever is stored (values that are never merged: trunk IPs).
ANY: Final = _Any()
#: A guess that the stored value, if any, holds only fields this version knows (so the
#: new value may replace it as it is); the script checks it (mode ``k``).
KNOWN: Final = _Known()
#: As KNOWN, and a value must be stored (else the write is refused as for a mismatch
#: on nothing: ``compute(None)`` is asked, which raises NotFoundError).
KNOWN_EXISTING: Final = _Known()

Guess = bytes | None | _Any | _Known


@dataclass(frozen=True, slots=True)
class Target:
    """Where a write goes: the value's key (and hash field), its idents hash, a member
    set, the event channel and the event's log, and the TTL of a string key."""

    key: str
    field: str = ""  # '' = a string key
    idents_key: str | None = None
    member_set: str | None = None
    channel: str = ""
    #: What ident fields map to, and the member added to ``member_set``.
    id: str = ""
    #: String keys: '' keeps the TTL (KEEPTTL), '-' none, else PX milliseconds.
    ttl: str = ""
    #: The model's field names, comma-separated (for a KNOWN guess).
    known: str = ""
    #: The ident field names, comma-separated (for a KNOWN guess).
    ident_fields: str = ""
    #: The event log (a stream) the event is appended to; None: published only.
    log: str | None = None

    def keys(self) -> list[str]:
        out = [self.key]
        if self.idents_key is not None:
            out.append(self.idents_key)
        if self.member_set is not None:
            out.append(self.member_set)
        if self.log is not None:
            out.append(self.log)
        return out

    def flags(self) -> str:
        return (("i" if self.idents_key is not None else "")
                + ("m" if self.member_set is not None else "")
                + ("l" if self.log is not None else ""))


@dataclass(frozen=True, slots=True)
class Step(Generic[R]):
    """One attempt of a write, computed from the stored value it assumes."""

    #: JSON to store; None deletes.
    value: bytes | None
    #: The event to publish (b'' for none).
    event: bytes = b""
    #: The event to publish instead when nothing was stored (a KNOWN guess).
    event_if_new: bytes = b""
    drop_idents: Sequence[str] = ()
    add_idents: Sequence[str] = ()
    #: What the write returns to its caller when this attempt succeeds.
    result: Any = None


@dataclass(frozen=True, slots=True)
class Outcome(Generic[R]):
    """A write that happened: the step stored and the stored value it replaced."""

    step: Step[R]
    #: The value the write replaced (None: nothing was stored; ANY/KNOWN: not known).
    before: Guess
    #: True when a value was stored before the write.
    existed: bool


async def write(
    remote: Remote,
    what: str,
    target: Target,
    compute: Callable[[Guess], Step[R]],
    guess: Guess,
    *,
    replace: bool = False,
) -> Outcome[R]:
    """Compare-and-set ``compute(stored)`` at ``target``, starting from ``guess``.

    ``compute`` may raise (e.g. NotFoundError when an update finds nothing): the write
    stops there, having stored nothing for that attempt. ``replace``: the write replaces
    every known field (a set, not an update), so a stored value merged over is only
    required to still hold the same unknown fields (mode ``f``). Errors of the round trip are
    mapped by :class:`~cal_redis.remote.Remote` and never retried.
    """
    keys = target.keys()
    flags = target.flags()
    retention, cap = log_limits(remote.config)
    stored = guess
    for attempt in range(MAX_ATTEMPTS):
        await _contended(attempt)
        step = compute(stored)
        mode, expect = _mode(stored, target.known, replace)
        value = step.value
        args: list[Any] = [
            mode, expect, target.field,
            b"" if value is None else value, "d" if value is None else "s",
            target.ttl, target.channel, step.event, step.event_if_new, flags, target.id,
            target.ident_fields, retention, cap,
            len(step.drop_idents), *step.drop_idents, *step.add_idents,
        ]
        reply = await remote.script(what, _lua.WRITE, keys, args)
        if reply == 1 or reply == 2:
            return Outcome(step, stored, reply == 1)
        stored = _refused(what, reply)
    raise CalRedisError(f"{what}: gave up after {MAX_ATTEMPTS} concurrent changes of the value")


async def write_with(
    remote: Remote,
    what: str,
    script: Script,
    keys: Sequence[str],
    compute: Callable[[Guess], tuple[bytes, Sequence[Any], R]],
    guess: Guess,
    known: str = "",
) -> R:
    """The same compare-and-set through another script of the same protocol
    (``ARGV = mode, expected, json, *args``; same replies), e.g. :data:`._lua.AGENT_SET`.
    ``known``: the comma-separated field names a KNOWN guess is checked against."""
    stored = guess
    for attempt in range(MAX_ATTEMPTS):
        await _contended(attempt)
        data, extra, result = compute(stored)
        mode, expect = _mode(stored, known, True)
        reply = await remote.script(what, script, keys, [mode, expect, data, *extra])
        if reply == 1 or reply == 2:
            return result
        stored = _refused(what, reply)
    raise CalRedisError(f"{what}: gave up after {MAX_ATTEMPTS} concurrent changes of the value")


def log_limits(config: CacheConfig) -> tuple[int, int]:
    """The event logs' retention (ms) and approximate cap, as the scripts take them."""
    return int(config.event_log_retention * 1000), config.event_log_max_len


def _mode(stored: Guess, known: str, replace: bool) -> tuple[str, bytes]:
    if stored is None:
        return "a", b""
    if isinstance(stored, bytes):
        if replace:
            return "f", known.encode() + b"\n" + stored
        return "e", stored
    if stored is KNOWN:
        return "k", known.encode()
    if stored is KNOWN_EXISTING:
        return "x", known.encode()
    return "*", b""


def _refused(what: str, reply: object) -> bytes | None:
    if reply == 0:
        return None
    if isinstance(reply, bytes):
        return reply
    raise CalRedisError(f"{what}: unexpected script reply {reply!r}")  # pragma: no cover


def check_model(obj: object, model: type[M], argument: str) -> M:
    """``obj`` if it is a ``model``, else ValidationError naming ``argument``."""
    if not isinstance(obj, model):
        raise ValidationError(argument, f"expected {model.__name__}, got {type(obj).__name__}")
    return obj


def owned(obj: M, account_id: str, argument: str) -> M:
    """``obj`` stamped with ``account_id``; ValidationError if it names another account."""
    validate_id(account_id, "account_id")
    owner = getattr(obj, "account_id", "")
    if owner == account_id:
        return obj
    if owner:
        raise ValidationError(
            "account_id", f"{argument} belongs to account {owner!r}, not {account_id!r}"
        )
    return msgspec.structs.replace(obj, account_id=account_id)


async def put(
    remote: Remote, what: str, target: Target, obj: Model, data: bytes, *,
    must_exist: tuple[str, str] | None = None,
) -> bool:
    """Merge-safe write of ``obj`` (its checked JSON ``data``) at ``target``; True if a
    value was stored before.

    One round trip when nothing is stored or the stored value has only fields this
    version knows; otherwise the new value is merged over the stored one
    (:func:`cal_redis.codec.merge_encode`) and compare-and-set against it.
    ``must_exist=(kind, id)``: the value must be stored already, else NotFoundError.
    """
    field = target.field or None

    def compute(stored: Guess) -> Step[None]:
        if stored is None and must_exist is not None:
            raise NotFoundError(*must_exist)
        if isinstance(stored, bytes):
            return Step(codec.merge_encode(stored, obj, key=target.key, field=field))
        return Step(data)

    target = dataclasses.replace(target, known=codec.known_fields(type(obj)))
    guess = KNOWN_EXISTING if must_exist is not None else KNOWN
    outcome = await write(remote, what, target, compute, guess, replace=True)
    return outcome.existed
