"""The backup file: JSON lines, gzip-compressed when the file name ends in ``.gz``.

Line 1 is the header, the last line the end record; every line between is one
*record*: one key, or one part of a large key (the parts of a key are consecutive
lines). Keys, fields, members and values are JSON strings when they are valid UTF-8
and ``{"b64": "..."}`` otherwise, so every byte survives::

    {"format": "cal-redis-backup", "version": 1, "created_at": 1764000000000, ...}
    {"key": "cal:users", "type": "hash", "ttl": -1, "items": [["u1", "{...}"], ...]}
    {"key": "cal:account:acc42:session:s1", "type": "string", "ttl": 3599000, "value": "{...}"}
    {"key": "cal:account:acc42:queue:q1", "type": "zset", "ttl": -1, "items": [["call-1", "1764000000000"]]}
    {"key": "cal:users", "type": "hash", "ttl": -1, "fields": true, "items": [...]}
    {"end": true, "keys": 2, "records": 3, "families": {...}}

``ttl`` is the key's remaining time to live in ms when it was read (-1: none).
``fields: true`` marks entries of a shared table picked for one tenant: restored
field by field, never as the whole key. Streams: ``items`` are ``[id, [field, value,
...]]`` and the key's last record carries ``last_id`` (the stream's last generated
id). ``type: "dump"`` holds a key of a type this format does not spell out, as
``DUMP`` wrote it (restorable on a server of the same major version).
"""

from __future__ import annotations

import base64
import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Final

import msgspec

from ..errors import BackupFormatError

__all__ = (
    "FORMAT",
    "TYPES",
    "VERSION",
    "Reader",
    "Record",
    "Writer",
    "decode_bytes",
    "encode_bytes",
)

FORMAT: Final = "cal-redis-backup"
VERSION: Final = 1
#: The Redis types a record may hold (``dump``: any other type, as DUMP wrote it).
TYPES: Final = ("string", "hash", "set", "zset", "list", "stream", "dump")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, Any])


def encode_bytes(data: bytes) -> str | dict[str, str]:
    """``data`` as JSON: its text when it is valid UTF-8, else ``{"b64": ...}``."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode("ascii")}


def decode_bytes(value: object, what: str) -> bytes:
    """The bytes of a JSON value written by :func:`encode_bytes` (ValueError if not)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise ValueError(f"{what}: invalid base64") from None
    raise ValueError(f"{what}: expected a string or {{\"b64\": ...}}, got {type(value).__name__}")


@dataclass(slots=True)
class Record:
    """One line of a backup between the header and the end record, decoded."""

    key: bytes
    type: str
    ttl: int
    #: Entries: hash [field, value] pairs, set/list members, zset [member, score]
    #: pairs (the score as text), stream [id, [field, value, ...]] entries.
    items: list[Any] = field(default_factory=list)
    #: The value of a string (or a part of it) or a dump.
    value: bytes | None = None
    #: Entries of a shared table picked for a tenant (restored field by field).
    fields: bool = False
    #: A stream's last generated id (on the stream's last record).
    last_id: bytes | None = None
    #: Line number in the file (1 = header).
    line: int = 0

    @property
    def size(self) -> int:
        """Entries held (1 for a string or dump)."""
        return len(self.items) if self.value is None else 1

    @property
    def nbytes(self) -> int:
        """Bytes of the keys' data held: fields, members, values, ids."""
        if self.value is not None:
            return len(self.value)
        t = self.type
        if t in ("hash", "zset"):
            return sum(len(a) + len(b) for a, b in self.items)
        if t == "stream":
            return sum(len(i) + sum(map(len, fv)) for i, fv in self.items)
        return sum(map(len, self.items))

    def to_json(self) -> dict[str, Any]:
        """The record as it is written (see the module docstring)."""
        out: dict[str, Any] = {"key": encode_bytes(self.key), "type": self.type, "ttl": self.ttl}
        if self.fields:
            out["fields"] = True
        if self.value is not None:
            out["value"] = encode_bytes(self.value)
        else:
            t = self.type
            if t == "hash" or t == "zset":
                out["items"] = [[encode_bytes(a), encode_bytes(b)] for a, b in self.items]
            elif t == "stream":
                out["items"] = [[encode_bytes(i), [encode_bytes(x) for x in fv]]
                                for i, fv in self.items]
            else:
                out["items"] = [encode_bytes(m) for m in self.items]
        if self.last_id is not None:
            out["last_id"] = encode_bytes(self.last_id)
        return out


def _check_record(obj: dict[str, Any], line: int) -> Record:
    """A :class:`Record` from one decoded line, or ValueError saying what is wrong."""
    unknown = set(obj) - {"key", "type", "ttl", "items", "value", "fields", "last_id"}
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    key = decode_bytes(obj.get("key"), "key")
    if not key:
        raise ValueError("empty key")
    t = obj.get("type")
    if t not in TYPES:
        raise ValueError(f"type {t!r} is not one of {TYPES}")
    ttl = obj.get("ttl")
    if type(ttl) is not int or (ttl < 1 and ttl != -1):
        raise ValueError(f"ttl must be -1 or a positive number of ms, got {ttl!r}")
    fields = obj.get("fields", False)
    if fields is not False and (fields is not True or t != "hash"):
        raise ValueError("'fields' is only for hash records, and only true")
    rec = Record(key, t, ttl, fields=fields, line=line)
    if t in ("string", "dump"):
        if "items" in obj:
            raise ValueError(f"a {t} record holds 'value', not 'items'")
        rec.value = decode_bytes(obj.get("value"), "value")
    else:
        if "value" in obj:
            raise ValueError(f"a {t} record holds 'items', not 'value'")
        items = obj.get("items")
        if not isinstance(items, list):
            raise ValueError("'items' must be a list")
        if t in ("hash", "zset"):
            for i, pair in enumerate(items):
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise ValueError(f"items[{i}] must be a pair")
                a, b = decode_bytes(pair[0], f"items[{i}][0]"), decode_bytes(pair[1], f"items[{i}][1]")
                if t == "zset":
                    try:
                        float(b)
                    except ValueError:
                        raise ValueError(f"items[{i}]: score {b!r} is not a number") from None
                rec.items.append((a, b))
        elif t == "stream":
            for i, entry in enumerate(items):
                if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list)
                        and len(entry[1]) % 2 == 0):
                    raise ValueError(f"items[{i}] must be [id, [field, value, ...]]")
                rec.items.append((decode_bytes(entry[0], f"items[{i}][0]"),
                                  [decode_bytes(x, f"items[{i}][1]") for x in entry[1]]))
        else:
            rec.items = [decode_bytes(m, f"items[{i}]") for i, m in enumerate(items)]
    if "last_id" in obj:
        if t != "stream":
            raise ValueError("'last_id' is only for stream records")
        rec.last_id = decode_bytes(obj["last_id"], "last_id")
    return rec


class Writer:
    """Writes a backup file: to ``path + ".partial"``, renamed to ``path`` by
    :meth:`commit` (so a failed backup never leaves a file that looks complete)."""

    def __init__(self, path: str, header: dict[str, Any]) -> None:
        self.path = path
        self._partial = path + ".partial"
        raw: IO[bytes] = open(self._partial, "wb")  # noqa: SIM115 - closed by close()
        self._file: Any = (
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=3, mtime=0)
            if path.endswith(".gz") else raw
        )
        self._raw = raw
        self.records = 0
        self.bytes_written = 0
        self._line(dict(header, format=FORMAT, version=VERSION))

    def _line(self, obj: dict[str, Any]) -> None:
        data = _encoder.encode(obj) + b"\n"
        self._file.write(data)
        self.bytes_written += len(data)

    def write(self, record: Record) -> None:
        """Append one record."""
        self._line(record.to_json())
        self.records += 1

    def commit(self, trailer: dict[str, Any]) -> None:
        """Write the end record, close and move the file into place."""
        self._line(dict(trailer, end=True, records=self.records))
        self.close()
        os.replace(self._partial, self.path)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._raw.closed:
            return
        self._file.close()
        self._raw.close()

    def abort(self) -> None:
        """Close and delete the partial file."""
        self.close()
        if os.path.exists(self._partial):
            os.remove(self._partial)


class Reader:
    """Reads a backup file line by line: :meth:`records` checks every line and raises
    :class:`~cal_redis.errors.BackupFormatError` (with the line number) at the first
    one that is corrupt or truncated; nothing after it is yielded."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.header: dict[str, Any] = {}
        self.trailer: dict[str, Any] = {}

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        """(line number, line) of the file, decompressed when it is gzip (by content)."""
        try:
            raw = open(self.path, "rb")  # noqa: SIM115 - closed below
        except OSError as err:
            raise BackupFormatError(f"cannot open {self.path}: {err}", line=0) from err
        n = 0
        with raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            f: Any = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
            try:
                with f:
                    for n, line in enumerate(f, 1):
                        if not line.endswith(b"\n"):
                            raise BackupFormatError("truncated line (no end of line)", line=n)
                        yield n, line
            except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
                raise BackupFormatError(
                    f"unreadable after line {n} (truncated or corrupt compressed data): {err}",
                    line=n + 1) from err

    def records(self) -> Iterator[Record]:
        """Every record in order, each checked; the header first and the end record
        last must be there (a file cut at a line boundary lacks the end record)."""
        seen: set[bytes] = set()
        last_key: bytes | None = None
        last_kind: tuple[str, bool] = ("", False)
        count = 0
        done = False
        last_line = 0
        for n, line in self._lines():
            last_line = n
            if done:
                raise BackupFormatError("data after the end record", line=n)
            try:
                obj = _decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as err:
                raise BackupFormatError(f"not a JSON object: {err}", line=n) from None
            if n == 1:
                if obj.get("format") != FORMAT:
                    raise BackupFormatError("not a cal-redis backup (no header)", line=1)
                if obj.get("version") != VERSION:
                    raise BackupFormatError(f"unsupported version {obj.get('version')!r}", line=1)
                self.header = obj
                continue
            if obj.get("end") is True:
                if obj.get("records") != count:
                    raise BackupFormatError(
                        f"the end record counts {obj.get('records')} records, the file has {count}",
                        line=n)
                self.trailer = obj
                done = True
                continue
            try:
                rec = _check_record(obj, n)
            except ValueError as err:
                raise BackupFormatError(str(err), line=n) from None
            if rec.key != last_key:
                if rec.key in seen:
                    raise BackupFormatError(f"key {rec.key!r} appears again, apart", line=n)
                seen.add(rec.key)
                last_key = rec.key
                last_kind = (rec.type, rec.fields)
            elif (rec.type, rec.fields) != last_kind:
                raise BackupFormatError(f"a part of key {rec.key!r} of another kind", line=n)
            count += 1
            yield rec
        if last_line == 0:
            raise BackupFormatError("empty file", line=1)
        if not done:
            raise BackupFormatError("no end record: the file is truncated", line=last_line + 1)

    def check(self) -> int:
        """Read the whole file, checking every line; return the number of records."""
        return sum(1 for _ in self.records())
