"""Restore: recreate the keys of a backup file, in pipelined batches.

Two passes. The first reads and checks the whole file
(:meth:`~.fileformat.Reader.check`): a corrupt or truncated line raises
:class:`~cal_redis.errors.BackupFormatError` with its line number and **nothing is
applied**. The second applies it, one server-side script call per record
(:data:`_RESTORE`), ``depth`` calls per round trip:

- A key that fits one call is checked and written atomically: absent → created
  with its type and its remaining TTL as it was at backup time; present →
  ``skip-existing`` leaves it alone (a key of another type is reported as a
  conflict), ``replace`` deletes and recreates it.
- A larger key is built in a staging key of its own slot (``cal-restore:{…}:…``,
  with a one-hour safety TTL) and moved into place by ``RENAME`` with its last
  part, under the same check: the key appears whole or not at all, so an
  interrupted restore can simply be run again. A counter beside the staging key
  numbers the parts: a part that finds the one before it missing (lost, expired)
  is refused and the key reported, never committed with a hole.
- Tenant entries of a shared table (``fields`` records) are written field by field
  (``HSETNX`` for ``skip-existing``, ``HSET`` for ``replace``); the shared hash is
  never deleted or replaced as a whole, and its TTL is left alone.

Running a restore twice leaves the same data (idempotent). Keys that are not in the
file are never touched. Writes are never retried (a batch whose outcome is unknown
stops the restore with an error; running it again is safe). Afterwards a
``<Kind>Sync`` event is published for every L1 namespace (and, for account-scoped
kinds, every account) whose keys were written, so running caches drop what they
hold of them (docs/wire-format.md, "Events").
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from .. import codec
from .._progress import Bar
from ..errors import CalRedisError, ValidationError
from ..keys import KeyBuilder
from ..remote import Remote, Script, raw_pipeline
from .fileformat import Reader, Record
from .layout import Layout, single_server

__all__ = ("MODES", "RestoreCount", "RestoreSummary", "restore")

#: ``skip-existing`` (the default) or ``replace``.
MODES: Final = ("skip-existing", "replace")
#: Entries per script call (and at most this many times four arguments): a call of
#: 250 users' JSON runs in well under a millisecond, so other clients barely wait.
CALL_ENTRIES: Final = 250
CALL_ARGS: Final = 1000
#: Safety TTL of a staging key (ms), refreshed by every part.
STAGING_TTL_MS: Final = 3_600_000
_ORIGIN: Final = "cal-redis-restore"

_RESTORE = Script("restore_key", """
-- KEYS[1]: the key; KEYS[2]: its staging key (parts of a large key); KEYS[3]: the
-- staging key's part counter.
-- ARGV: op (put|begin|append|commit|fields), mode (skip|replace), type, ttl ms (-1:
-- none), stream last id ('' none), staging TTL ms, part number, then the entries:
-- string/dump: the value; hash: field, value...; set/list: members; zset: score,
-- member...; stream: id, n, n field/value strings...
-- Reply: {outcome, type found at KEYS[1] before, count}.
local op, mode, t = ARGV[1], ARGV[2], ARGV[3]
local ttl, last_id, safety = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local part = tonumber(ARGV[7])
local first, n = 8, #ARGV
local target, staging, counter = KEYS[1], KEYS[2], KEYS[3]
local found = redis.call('TYPE', target)['ok']

local function put(key, fresh)
  if t == 'string' then
    if fresh then redis.call('SET', key, ARGV[first]) else redis.call('APPEND', key, ARGV[first]) end
  elseif t == 'dump' then
    redis.call('RESTORE', key, 0, ARGV[first], 'REPLACE')
  elseif n >= first then
    if t == 'hash' then redis.call('HSET', key, unpack(ARGV, first, n))
    elseif t == 'set' then redis.call('SADD', key, unpack(ARGV, first, n))
    elseif t == 'zset' then redis.call('ZADD', key, unpack(ARGV, first, n))
    elseif t == 'list' then redis.call('RPUSH', key, unpack(ARGV, first, n))
    elseif t == 'stream' then
      local i = first
      while i <= n do
        local k = tonumber(ARGV[i + 1])
        redis.call('XADD', key, ARGV[i], unpack(ARGV, i + 2, i + 1 + k))
        i = i + 2 + k
      end
    end
  end
end

local function finish(key)
  if t == 'stream' and last_id ~= '' then
    if redis.call('EXISTS', key) == 0 then
      redis.call('XADD', key, last_id, 'x', 'x')
      redis.call('XDEL', key, last_id)
    else
      redis.call('XSETID', key, last_id)
    end
  end
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
end

local function refused()
  if found ~= 'none' and mode ~= 'replace' then
    if found == t or t == 'dump' then return {'exists', found, 0} end
    return {'conflict', found, 0}
  end
  return nil
end

if op == 'fields' then
  if found ~= 'none' and found ~= 'hash' then
    if mode ~= 'replace' then return {'conflict', found, 0} end
    redis.call('DEL', target)
  end
  local written = 0
  for i = first, n, 2 do
    if mode == 'replace' then
      redis.call('HSET', target, ARGV[i], ARGV[i + 1])
      written = written + 1
    else
      written = written + redis.call('HSETNX', target, ARGV[i], ARGV[i + 1])
    end
  end
  return {'fields', found, written}
end
-- the parts before this one all landed, in order
local function in_order()
  return redis.call('EXISTS', staging) == 1
    and tonumber(redis.call('GET', counter) or '0') == part - 1
end
if op == 'append' then
  if not in_order() then
    redis.call('DEL', staging, counter)
    return {'lost', found, 0}
  end
  put(staging, false)
  redis.call('PEXPIRE', staging, safety)
  redis.call('SET', counter, part, 'PX', safety)
  return {'staged', found, 0}
end
local no = refused()
if op == 'begin' then
  if no then return no end
  redis.call('DEL', staging)
  put(staging, true)
  redis.call('PEXPIRE', staging, safety)
  redis.call('SET', counter, part, 'PX', safety)
  return {'staged', found, 0}
end
if op == 'commit' then
  local ok = in_order()
  redis.call('DEL', counter)
  if not ok then
    redis.call('DEL', staging)
    return {'lost', found, 0}
  end
  if no then
    redis.call('DEL', staging)
    return no
  end
  put(staging, false)
  finish(staging)
  redis.call('RENAME', staging, target)
else
  if no then return no end
  if found ~= 'none' then redis.call('DEL', target) end
  put(target, true)
  finish(target)
end
if found == 'none' then return {'created', found, 0} end
return {'replaced', found, 0}
""")


@dataclass(slots=True)
class RestoreCount:
    """What a restore did (or would do) to the keys of one family."""

    created: int = 0
    replaced: int = 0
    skipped: int = 0
    conflicts: int = 0
    #: Fields of shared tables written (``fields`` records).
    fields: int = 0
    errors: int = 0


@dataclass(slots=True)
class RestoreSummary:
    """What :func:`restore` did; with ``dry_run``, what it would do."""

    path: str
    mode: str
    dry_run: bool
    records: int = 0
    seconds: float = 0.0
    families: dict[str, RestoreCount] = field(default_factory=dict)
    #: One line per key that is (or would be) written or that conflicts.
    changes: list[str] = field(default_factory=list)
    #: One line per key that could not be restored.
    errors: list[str] = field(default_factory=list)
    #: The ``<Kind>Sync`` events published (type and channel).
    events: list[str] = field(default_factory=list)

    def conflicts_and_errors(self) -> list[str]:
        """The lines about keys left alone for a conflict, then those that failed."""
        return [c for c in self.changes if c.startswith("conflict ")] + [
            "error " + e for e in self.errors]

    def total(self, what: str) -> int:
        """The sum of one :class:`RestoreCount` field over the families."""
        return sum(getattr(c, what) for c in self.families.values())

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain data."""
        return {
            "path": self.path, "mode": self.mode, "dry_run": self.dry_run,
            "records": self.records, "seconds": self.seconds,
            "totals": {k: self.total(k) for k in RestoreCount.__dataclass_fields__},
            "families": {k: {f: getattr(v, f) for f in RestoreCount.__dataclass_fields__}
                         for k, v in sorted(self.families.items())},
            "errors": self.errors, "events": self.events,
        }


def _staging_key(key: bytes, nonce: bytes) -> bytes:
    """A staging key in ``key``'s cluster slot: its hash tag (or the whole key) as ours."""
    start = key.find(b"{")
    end = key.find(b"}", start + 1) if start >= 0 else -1
    tag = key[start + 1 : end] if start >= 0 and end > start + 1 else key
    return b"cal-restore:{" + tag + b"}:" + nonce


def _flat(record: Record) -> list[Any]:
    """The script arguments of a record's entries (see ``_RESTORE``)."""
    t = record.type
    if record.value is not None:
        return [record.value]
    if t == "hash":
        return [x for pair in record.items for x in pair]
    if t == "zset":
        return [x for member, score in record.items for x in (score, member)]
    if t == "stream":
        return [x for id_, fv in record.items for x in (id_, len(fv), *fv)]
    return list(record.items)


def _split(record: Record) -> list[Record]:
    """``record`` as parts of at most CALL_ENTRIES entries and CALL_ARGS arguments."""
    if record.value is not None or (len(record.items) <= CALL_ENTRIES and (
            record.type != "stream" or sum(2 + len(fv) for _, fv in record.items) <= CALL_ARGS)):
        return [record]
    parts: list[Record] = []
    current: list[Any] = []
    args = 0
    for item in record.items:
        cost = 2 + len(item[1]) if record.type == "stream" else 2
        if current and (len(current) >= CALL_ENTRIES or args + cost > CALL_ARGS):
            parts.append(Record(record.key, record.type, record.ttl, current, fields=record.fields))
            current, args = [], 0
        current.append(item)
        args += cost
    parts.append(Record(record.key, record.type, record.ttl, current, fields=record.fields,
                        last_id=record.last_id))
    return parts


def _lookahead(records: Iterator[Record]) -> Iterator[tuple[Record, bool, bool]]:
    """(record, first part of its key, last part of its key)."""
    prev: Record | None = None
    prev_first = True
    for rec in records:
        if prev is not None:
            yield prev, prev_first, rec.key != prev.key
            prev_first = rec.key != prev.key
        prev = rec
    if prev is not None:
        yield prev, prev_first, True


@dataclass(slots=True)
class _Call:
    op: str
    record: Record
    family: str
    part: int = 1


class _Restorer:
    def __init__(self, remote: Remote, mode: str, dry_run: bool, depth: int,
                 summary: RestoreSummary, say: Callable[[str], None] | None) -> None:
        self.remote = remote
        self.mode = "replace" if mode == "replace" else "skip"
        self.dry_run = dry_run
        self.depth = depth
        self.summary = summary
        self.say = say
        self.layout = Layout()
        self.nonce = secrets.token_hex(8).encode()
        self.refused: set[bytes] = set()  # staged keys whose begin was refused
        self.parts: dict[bytes, int] = {}  # parts queued of the key being staged
        self.touched: set[tuple[str, str | None, bool]] = set()
        self.batch: list[_Call] = []
        self.batch_bytes = 0

    def _count(self, family: str) -> RestoreCount:
        return self.summary.families.setdefault(family, RestoreCount())

    def _change(self, line: str) -> None:
        self.summary.changes.append(line)
        if self.say is not None:
            self.say(line)

    # -- applying ---------------------------------------------------------------------------
    async def add(self, record: Record, first: bool, last: bool) -> None:
        family = self.layout.family_name(record.key.decode("utf-8", "replace")).lower()
        if self.dry_run:
            self.batch.append(_Call("check", record, family))
        elif record.fields:
            self.batch.extend(_Call("fields", part, family) for part in _split(record))
        elif record.key in self.refused:
            return
        else:
            parts = _split(record)
            for i, part in enumerate(parts):
                head, tail = first and i == 0, last and i == len(parts) - 1
                op = "put" if head and tail else "begin" if head else "commit" if tail else "append"
                number = self.parts[record.key] = 1 if head else self.parts[record.key] + 1
                if tail:
                    del self.parts[record.key]
                self.batch.append(_Call(op, part, family, number))
        self.batch_bytes += record.nbytes
        if len(self.batch) >= self.depth or self.batch_bytes >= 1 << 20:
            await self.flush()

    async def flush(self) -> None:
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        if not batch:
            return
        if self.dry_run:
            await self._check(batch)
            return
        # SCRIPT LOAD heads every pipeline, so the EVALSHAs after it find the script;
        # a NOSCRIPT (the cache flushed meanwhile) did not run: its key is reported.
        commands: list[tuple[Any, ...]] = [("SCRIPT", "LOAD", _RESTORE.text)]
        for call in batch:
            rec = call.record
            staging = _staging_key(rec.key, self.nonce)
            args = [self.mode, rec.type, rec.ttl, rec.last_id or b"", STAGING_TTL_MS, call.part,
                    *_flat(rec)]
            commands.append(("EVALSHA", _RESTORE.sha, 3, rec.key, staging, staging + b":parts",
                             call.op, *args))
        replies = await raw_pipeline(self.remote, "restore", commands, read=False)
        if isinstance(replies[0], CalRedisError):
            raise replies[0]
        for call, reply in zip(batch, replies[1:], strict=True):
            self._outcome(call, reply)

    def _outcome(self, call: _Call, reply: Any) -> None:
        rec = call.record
        count = self._count(call.family)
        name = rec.key.decode("utf-8", "replace")
        if isinstance(reply, CalRedisError):
            count.errors += 1
            self.summary.errors.append(f"{name}: {reply}")
            self.refused.add(rec.key)
            return
        outcome = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        found = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        if outcome == "staged":
            return
        if outcome == "lost":
            if rec.key not in self.refused:  # its begin was refused: skipped, not lost
                count.errors += 1
                self.summary.errors.append(
                    f"{name}: a part of it did not land (its staging key expired or was "
                    "lost): not restored; run the restore again")
                self.refused.add(rec.key)
            return
        if outcome in ("exists", "conflict"):
            self.refused.add(rec.key)
            if outcome == "exists":
                count.skipped += 1
            else:
                count.conflicts += 1
                self._change(f"conflict {name}: the target is a {found}, the backup a {rec.type}"
                             " (left alone; --mode replace overwrites it)")
            return
        kind = self.layout.l1_kind(name)
        if outcome == "fields":
            count.fields += int(reply[2])
            if int(reply[2]) and kind is not None:
                self.touched.add(kind)
            return
        if kind is not None:
            self.touched.add(kind)
        if outcome == "created":
            count.created += 1
        else:
            count.replaced += 1

    # -- dry run ----------------------------------------------------------------------------
    async def _check(self, batch: list[_Call]) -> None:
        commands: list[tuple[Any, ...]] = []
        for call in batch:
            rec = call.record
            commands.append(("TYPE", rec.key))
            if rec.fields:
                commands.append(("HMGET", rec.key, *(f for f, _ in rec.items)))
        replies = iter(await raw_pipeline(self.remote, "restore --dry-run", commands, read=True))
        for call in batch:
            rec = call.record
            found = next(replies)
            found = found.decode() if isinstance(found, bytes) else str(found)
            stored: Any = next(replies) if rec.fields else None
            count = self._count(call.family)
            name = rec.key.decode("utf-8", "replace")
            replace = self.mode == "replace"
            if rec.fields:
                if found not in ("none", "hash"):
                    if replace:
                        count.fields += len(rec.items)
                        self._change(f"replace {name}: the target is a {found}; "
                                     f"{len(rec.items)} fields would be written")
                    else:
                        count.conflicts += 1
                        self._change(f"conflict {name}: the target is a {found}")
                    continue
                if isinstance(stored, CalRedisError):
                    raise stored
                new = sum(1 for v in stored if v is None)
                changed = sum(1 for (_, v), old in zip(rec.items, stored, strict=True)
                              if old is not None and old != v)
                n = new + changed if replace else new
                count.fields += n
                same = len(rec.items) - new - changed
                if n and replace:
                    self._change(f"fields {name}: {new} added, {changed} overwritten, "
                                 f"{same} unchanged")
                elif n:
                    self._change(f"fields {name}: {new} added, {changed} differ and are kept "
                                 f"(skip-existing), {same} unchanged")
                continue
            if rec.key in self.refused:
                continue  # a later part of a key already reported
            self.refused.add(rec.key)
            if found == "none":
                count.created += 1
                self._change(f"create {name} ({rec.type})")
            elif replace:
                count.replaced += 1
                self._change(f"replace {name} (a {found} now)")
            elif found == rec.type or rec.type == "dump":
                count.skipped += 1
            else:
                count.conflicts += 1
                self._change(f"conflict {name}: the target is a {found}, the backup a {rec.type}")

    # -- events -----------------------------------------------------------------------------
    async def announce(self) -> None:
        """One ``<Kind>Sync`` per L1 namespace (and account) written."""
        commands = []
        for kind, account, cluster in sorted(self.touched, key=lambda k: (k[0], k[1] or "", k[2])):
            kb = KeyBuilder(cluster=cluster)
            channel = kb.EVENTS if account is None else kb.account_events(account)
            event = codec.event(kind + "Sync", "", origin=_ORIGIN, account_id=account)
            commands.append(("PUBLISH", channel, event))
            self.summary.events.append(f"{kind}Sync on {channel}")
        if commands:
            for reply in await raw_pipeline(self.remote, "restore events", commands, read=False):
                if isinstance(reply, CalRedisError):
                    raise reply


async def restore(
    remote: Remote, path: str, *, mode: str = "skip-existing", dry_run: bool = False,
    depth: int = 20, progress: Callable[[int], Bar] | None = None,
    say: Callable[[str], None] | None = None,
) -> RestoreSummary:
    """Restore the backup file ``path`` (see the module docstring).

    ``mode``: ``skip-existing`` (keys already there are left alone) or ``replace``.
    ``dry_run``: read the target and report what would change, write nothing.
    ``depth``: script calls per round trip. ``progress(records)`` makes the bar
    advanced per record, once the file is checked. ``say(line)`` is called for
    every change (and conflict) as it is found. Raises
    :class:`~cal_redis.errors.BackupFormatError` before writing anything when the
    file is corrupt or truncated.
    """
    single_server(remote, "restore")
    if mode not in MODES:
        raise ValidationError("mode", f"one of {MODES}, got {mode!r}")
    if type(depth) is not int or depth < 1:
        raise ValidationError("depth", "must be an int >= 1")
    started = time.perf_counter()
    reader = Reader(path)
    records = reader.check()  # the whole file, before any write
    summary = RestoreSummary(path, mode, dry_run, records=records)
    restorer = _Restorer(remote, mode, dry_run, depth, summary, say)
    bar = progress(records) if progress is not None else Bar()
    try:
        # A line found bad now (the file changed since it was checked) raises
        # BackupFormatError here: nothing from that line on is applied.
        for record, first, last in _lookahead(reader.records()):
            await restorer.add(record, first, last)
            bar.update(1)
        await restorer.flush()
    finally:
        bar.close()
    if not dry_run:
        await restorer.announce()
    summary.seconds = time.perf_counter() - started
    return summary
