"""Backup: every ``cal:`` key (or one tenant's share) to a backup file, read in pages.

The keyspace is walked with ``SCAN MATCH cal:*`` (never ``KEYS``), a page of keys at
a time, by :func:`~cal_redis.remote.scan_keys` on one node: a cluster backup would
run the same walk once per primary. For each page, one pipeline of a small read-only
script returns every key's type, remaining TTL and size, and the whole value of the
small ones (atomically per key). Larger keys are read in pages of ``HSCAN`` /
``SSCAN`` / ``ZSCAN`` / ``LRANGE`` / ``XRANGE`` / ``GETRANGE``, so no reply is ever
larger than a page and no command holds the server for long. Pipelines are kept
short (``depth`` keys) so that a concurrent reader waits behind at most a few
commands.

A backup is per key, not a point-in-time snapshot of the whole server (use the
server's own ``BGSAVE`` for that): a small key is read atomically; a large key's
pages may straddle writes made meanwhile. Keys created during the scan may or may
not be in it.

With ``accounts``, only those tenants' data is written: their own keys (by the
layout's exact patterns, :meth:`~.layout.Layout.owner`) and, field by field, their
entries of the shared tables (:class:`~.layout.SharedRule`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .. import __version__
from .._progress import Bar
from ..errors import CalRedisError, ValidationError
from ..keys import PREFIX, validate_id
from ..remote import Remote, Script, raw_command, raw_pipeline, scan_entries, scan_keys
from .fileformat import Record, Writer
from .layout import Layout, SharedRule, json_account, single_server

__all__ = ("BackupSummary", "FamilyCount", "backup")

#: Bytes up to which a string is read whole (larger: GETRANGE pages of this size).
#: Other keys are read whole, atomically, up to ``page`` entries.
SMALL_BYTES: Final = 1 << 20

_READ = Script("backup_read", """#!lua flags=no-writes
-- KEYS[1]: a key. ARGV[1]: most entries read whole, ARGV[2]: most string bytes.
-- Reply: {type, pttl, size} and, when the key is small, its whole value.
local key = KEYS[1]
local t = redis.call('TYPE', key)['ok']
local ttl = redis.call('PTTL', key)
if t == 'string' then
  local n = redis.call('STRLEN', key)
  if n <= tonumber(ARGV[2]) then return {t, ttl, n, redis.call('GET', key)} end
  return {t, ttl, n}
end
local max = tonumber(ARGV[1])
local n = 0
if t == 'hash' then
  n = redis.call('HLEN', key)
  if n <= max then return {t, ttl, n, redis.call('HGETALL', key)} end
elseif t == 'set' then
  n = redis.call('SCARD', key)
  if n <= max then return {t, ttl, n, redis.call('SMEMBERS', key)} end
elseif t == 'zset' then
  n = redis.call('ZCARD', key)
  if n <= max then return {t, ttl, n, redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')} end
elseif t == 'list' then
  n = redis.call('LLEN', key)
  if n <= max then return {t, ttl, n, redis.call('LRANGE', key, 0, -1)} end
elseif t == 'stream' then
  n = redis.call('XLEN', key)
end
return {t, ttl, n}
""")


@dataclass(slots=True)
class FamilyCount:
    """Keys, entries and payload bytes of one key family in a backup or restore."""

    keys: int = 0
    entries: int = 0
    bytes: int = 0


@dataclass(slots=True)
class BackupSummary:
    """What :func:`backup` wrote."""

    path: str
    keys: int = 0
    records: int = 0
    entries: int = 0
    #: Bytes written to the file (before compression).
    bytes: int = 0
    seconds: float = 0.0
    accounts: list[str] | None = None
    families: dict[str, FamilyCount] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain data (also the end record's ``families``)."""
        return {
            "path": self.path, "keys": self.keys, "records": self.records,
            "entries": self.entries, "bytes": self.bytes, "seconds": self.seconds,
            "accounts": self.accounts,
            "families": {k: vars_of(v) for k, v in sorted(self.families.items())},
        }


def vars_of(count: FamilyCount) -> dict[str, int]:
    """A :class:`FamilyCount` as a dict."""
    return {"keys": count.keys, "entries": count.entries, "bytes": count.bytes}


def _pairs(flat: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    return list(zip(flat[::2], flat[1::2], strict=True))


class _Dumper:
    def __init__(
        self, remote: Remote, writer: Writer, accounts: frozenset[str] | None, *,
        page: int, depth: int, bar: Bar,
    ) -> None:
        self.remote = remote
        self.writer = writer
        self.layout = Layout()
        self.accounts = accounts
        self.page = page
        self.depth = depth
        self.bar = bar
        self.summary = BackupSummary(writer.path, accounts=sorted(accounts) if accounts else None)
        self._loaded = False

    # -- writing --------------------------------------------------------------------------
    def _emit(self, record: Record, new_key: bool) -> None:
        name = self.layout.family_name(record.key.decode("utf-8", "replace")).lower()
        count = self.summary.families.setdefault(name, FamilyCount())
        if new_key:
            count.keys += 1
            self.summary.keys += 1
        count.entries += record.size
        count.bytes += record.nbytes
        self.summary.entries += record.size
        self.writer.write(record)

    def _emit_items(self, key: bytes, t: str, ttl: int, items: list[Any], *,
                    fields: bool = False, new_key: bool = True) -> None:
        """One record per ``page`` items (at least one record, even when empty)."""
        for start in range(0, max(len(items), 1), self.page):
            self._emit(Record(key, t, ttl, items[start : start + self.page], fields=fields),
                       new_key and start == 0)

    # -- reading --------------------------------------------------------------------------
    async def _read_small(self, keys: Sequence[bytes]) -> list[Any]:
        """The read script's reply per key, one pipeline per ``depth`` keys."""
        out: list[Any] = []
        args = (self.page, SMALL_BYTES)
        for start in range(0, len(keys), self.depth):
            part = keys[start : start + self.depth]
            cmd = "EVALSHA" if self._loaded else "EVAL"
            body = _READ.sha if self._loaded else _READ.text
            replies = await raw_pipeline(
                self.remote, "backup read", [(cmd, body, 1, k, *args) for k in part], read=True
            )
            for k, reply in zip(part, replies, strict=True):
                if isinstance(reply, CalRedisError) and "NOSCRIPT" in str(reply):
                    reply = await raw_command(self.remote, "backup read", "EVAL", _READ.text, 1,
                                              k, *args)
                if isinstance(reply, CalRedisError):
                    raise reply
                out.append(reply)
            self._loaded = True
        return out

    async def _large(self, key: bytes, t: str, ttl: int, size: int) -> list[Record]:
        """A key too large to read whole, as records of at most ``page`` entries."""
        remote, page = self.remote, self.page
        out: list[Record] = []
        if t in ("hash", "set", "zset"):
            command = {"hash": "HSCAN", "set": "SSCAN", "zset": "ZSCAN"}[t]
            async for flat in scan_entries(remote, command, key, count=page):
                out.append(Record(key, t, ttl, flat if t == "set" else _pairs(flat)))
        elif t == "list":
            start = 0
            while True:
                got = await raw_command(remote, "LRANGE", "LRANGE", key, start, start + page - 1)
                if got:
                    out.append(Record(key, t, ttl, list(got)))
                if len(got) < page:
                    break
                start += page
        elif t == "stream":
            info = await raw_command(remote, "XINFO STREAM", "XINFO", "STREAM", key)
            info = info if isinstance(info, dict) else dict(zip(info[::2], info[1::2], strict=True))
            last_id = info.get(b"last-generated-id")
            since = b"-"
            while True:
                got = await raw_command(remote, "XRANGE", "XRANGE", key, since, "+", "COUNT", page)
                if got:
                    out.append(Record(key, t, ttl, [(i, list(fv)) for i, fv in got]))
                if len(got) < page:
                    break
                since = b"(" + got[-1][0]
            if not out:
                out.append(Record(key, t, ttl, []))
            out[-1].last_id = last_id
        elif t == "string":
            chunk = SMALL_BYTES
            for offset in range(0, max(size, 1), chunk):
                got = await raw_command(remote, "GETRANGE", "GETRANGE", key, offset,
                                        offset + chunk - 1)
                out.append(Record(key, t, ttl, value=bytes(got)))
        else:
            dumped = await raw_command(remote, "DUMP", "DUMP", key)
            if dumped is not None:
                out.append(Record(key, "dump", ttl, value=bytes(dumped)))
        return out

    def _whole(self, key: bytes, t: str, ttl: int, value: Any) -> list[Record]:
        if t == "string":
            return [Record(key, t, ttl, value=bytes(value))]
        if t in ("hash", "zset"):
            return [Record(key, t, ttl, _pairs(value))]
        return [Record(key, t, ttl, list(value))]

    async def _records(self, key: bytes, reply: Any) -> list[Record] | None:
        """The records of one key from its read-script reply (None: the key is gone)."""
        t = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        ttl = int(reply[1])
        if t == "none" or ttl == -2:
            return None
        ttl = ttl if ttl > 0 else -1
        if len(reply) > 3:
            return self._whole(key, t, ttl, reply[3])
        return await self._large(key, t, ttl, int(reply[2]))

    # -- the walk ---------------------------------------------------------------------------
    async def run(self) -> BackupSummary:
        started = time.perf_counter()
        seen: set[bytes] = set()
        shared: list[bytes] = []
        async for page in scan_keys(self.remote, PREFIX + "*", count=self.page):
            mine: list[bytes] = []
            for key in page:
                if key in seen:
                    continue  # SCAN may return a key twice
                seen.add(key)
                if self.accounts is None:
                    mine.append(key)
                    continue
                owner = self.layout.owner(key.decode("utf-8", "replace"))
                if owner is None:
                    shared.append(key)
                elif owner in self.accounts:
                    mine.append(key)
            await self._dump(mine)
            self.bar.update(len(page))
        if self.accounts is not None:
            await self._dump_shared(shared)
        self.summary.seconds = time.perf_counter() - started
        return self.summary

    async def _dump(self, keys: Sequence[bytes]) -> None:
        if not keys:
            return
        for key, reply in zip(keys, await self._read_small(keys), strict=True):
            records = await self._records(key, reply)
            if records is None:
                continue
            for i, record in enumerate(records):
                if record.items and len(record.items) > self.page:
                    self._emit_items(key, record.type, record.ttl, record.items, new_key=i == 0)
                else:
                    self._emit(record, i == 0)

    async def _dump_shared(self, keys: Iterable[bytes]) -> None:
        """A tenant backup's entries of the shared keys, field by field."""
        assert self.accounts is not None
        keys = list(keys)
        replies = await self._read_small(keys)
        todo: list[tuple[int, bytes, Any, SharedRule]] = []
        for key, reply in zip(keys, replies, strict=True):
            t = reply[0].decode()
            rule = self.layout.shared_rule(key.decode("utf-8", "replace"), t)
            if rule is not None and t in ("hash", "string"):
                todo.append((rule.order, key, reply, rule))
        owned: dict[str, set[bytes]] = {}
        for _, key, reply, rule in sorted(todo, key=lambda x: x[0]):
            records = await self._records(key, reply)
            if not records:
                continue
            name = key.decode("utf-8", "replace")
            if records[0].type == "string":
                if rule.how == "value" and records[0].value is not None and \
                        records[0].value.decode("utf-8", "replace") in self.accounts:
                    for i, record in enumerate(records):
                        self._emit(record, i == 0)
                continue
            ids = owned.setdefault(name, set())
            picked = [pair for record in records for pair in record.items
                      if self._mine(pair, rule, owned)]
            ids.update(f for f, _ in picked)
            if picked:
                self._emit_items(key, "hash", -1, picked, fields=True)

    def _mine(self, pair: tuple[bytes, bytes], rule: SharedRule,
              owned: dict[str, set[bytes]]) -> bool:
        assert self.accounts is not None
        field_, value = pair
        how = rule.how
        if how == "field":
            return field_.decode("utf-8", "replace") in self.accounts
        if how == "value":
            return value.decode("utf-8", "replace") in self.accounts
        if how == "ident-of":
            return value in owned.get(rule.of or "", ())
        return json_account(value) in self.accounts


async def backup(
    remote: Remote, path: str, *, accounts: Iterable[str] | None = None,
    page: int = 250, depth: int = 20, bar: Bar | None = None, source: str = "",
) -> BackupSummary:
    """Write a backup of every ``cal:`` key (or of ``accounts``' data) to ``path``.

    ``path`` ending in ``.gz`` is gzip-compressed. The file appears only when the
    backup is complete (it is written as ``path + ".partial"`` first). ``page``: keys
    per ``SCAN`` call, entries up to which a key is read whole (atomically), entries
    per page of a larger key (and per record);
    ``depth``: keys per pipeline of the read script. ``bar`` is advanced by the keys
    scanned. See the module docstring for what is read, and how.
    """
    single_server(remote, "backup")
    chosen: frozenset[str] | None = None
    if accounts is not None:
        if isinstance(accounts, str):
            raise ValidationError("accounts", "expected a sequence of account ids, got str")
        chosen = frozenset(validate_id(a, f"accounts[{i}]") for i, a in enumerate(accounts))
        if not chosen:
            raise ValidationError("accounts", "name at least one account (or none for all)")
    for name, value in (("page", page), ("depth", depth)):
        if type(value) is not int or value < 1:
            raise ValidationError(name, "must be an int >= 1")
    header = {
        "created_at": int(time.time() * 1000), "source": source or remote.safe_url,
        "server": await remote.server_version(), "tool": f"cal-redis {__version__}",
        "accounts": sorted(chosen) if chosen else None,
    }
    writer = Writer(path, header)
    try:
        dumper = _Dumper(remote, writer, chosen, page=page, depth=depth, bar=bar or Bar())
        summary = await dumper.run()
        summary.records = writer.records
        families = {k: vars_of(v) for k, v in sorted(summary.families.items())}
        writer.commit({"keys": summary.keys, "entries": summary.entries, "families": families})
    except BaseException:
        writer.abort()
        raise
    summary.bytes = writer.bytes_written
    return summary
