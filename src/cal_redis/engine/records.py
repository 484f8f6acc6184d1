"""The one generic implementation behind the account-scoped records kept in a hash:
DDIs, trunks, hooks, assets, addresses and queue metadata (direct Redis, no L1).

A small :class:`RecordSpec` per kind (model, id attribute, argument names, hash
key builder) drives :class:`Records`: get (``HGET``), get all (``HGETALL``), batch
get (``HMGET``), merge-safe set and delete. The typed methods of
:mod:`cal_redis.api.account_data` and :mod:`cal_redis.api.queues` are thin wrappers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from .. import codec
from ..errors import ValidationError
from ..keys import KeyBuilder, validate_id
from ..models import Model
from .writes import Target, check_model, owned, put

if TYPE_CHECKING:
    from .._context import Context

__all__ = ("RecordSpec", "Records")

T = TypeVar("T", bound=Model)


@dataclass(frozen=True, slots=True)
class RecordSpec(Generic[T]):
    """What distinguishes one kind of hash-stored record from another."""

    kind: str  # error names, e.g. "Ddi"
    model: type[T]
    hash_key: Callable[[KeyBuilder, str], str]  # account_id -> hash key
    id_arg: str  # argument named by a bad id, e.g. "ddi_id"
    obj_arg: str  # argument named by a bad object, e.g. "ddi"
    id_attr: str = "id"  # the field holding the id (the hash field)


class Records(Generic[T]):
    """Operations of one record kind over a cache's :class:`~cal_redis._context.Context`."""

    __slots__ = ("spec",)

    def __init__(self, spec: RecordSpec[T]) -> None:
        self.spec = spec

    async def get(self, ctx: Context, account_id: str, id_: str) -> T | None:
        """One record, or None (``HGET``)."""
        validate_id(id_, self.spec.id_arg)
        hkey = self.spec.hash_key(ctx.keys, account_id)
        client = ctx.remote.cmd
        raw: bytes | None = await ctx.remote.read("HGET " + hkey, lambda: client.hget(hkey, id_))
        return None if raw is None else codec.decode(raw, self.spec.model, key=hkey, field=id_)

    async def get_all(self, ctx: Context, account_id: str) -> list[T]:
        """Every record of the account, sorted by id (``HGETALL``)."""
        hkey = self.spec.hash_key(ctx.keys, account_id)
        client = ctx.remote.cmd
        raw: dict[bytes, bytes] = await ctx.remote.read(
            "HGETALL " + hkey, lambda: client.hgetall(hkey)
        )
        items = sorted(raw.items())
        fields = [f.decode(errors="replace") for f, _ in items]
        values = codec.decode_batch([v for _, v in items], self.spec.model, key=hkey, fields=fields)
        return [v for v in values if v is not None]

    async def get_batch(
        self, ctx: Context, account_id: str, ids: Sequence[str]
    ) -> list[T | None]:
        """Records by id in one ``HMGET``; order kept, None where missing."""
        if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
            raise ValidationError("ids", f"expected a sequence of ids, got {type(ids).__name__}")
        for i, id_ in enumerate(ids):
            validate_id(id_, f"ids[{i}]")
        hkey = self.spec.hash_key(ctx.keys, account_id)
        if not ids:
            return []
        client = ctx.remote.cmd
        fields = list(ids)
        raws: list[bytes | None] = await ctx.remote.read(
            "HMGET " + hkey, lambda: client.hmget(hkey, fields)
        )
        return codec.decode_batch(raws, self.spec.model, key=hkey, fields=fields)

    async def set(self, ctx: Context, account_id: str, obj: T) -> T:
        """Write a record laid over the stored one (unknown fields kept); return it.

        ``obj.account_id`` must be this account or empty (then filled).
        """
        spec = self.spec
        obj = check_model(obj, spec.model, spec.obj_arg)
        id_ = validate_id(getattr(obj, spec.id_attr), spec.id_arg)
        obj = owned(obj, account_id, spec.obj_arg)
        hkey = spec.hash_key(ctx.keys, account_id)
        data = codec.check(obj, spec.obj_arg)
        await put(ctx.remote, f"HSET {hkey} {id_}", Target(hkey, field=id_), obj, data)
        return obj

    async def delete(self, ctx: Context, account_id: str, id_: str) -> bool:
        """Delete a record (``HDEL``); True if it existed."""
        validate_id(id_, self.spec.id_arg)
        hkey = self.spec.hash_key(ctx.keys, account_id)
        client = ctx.remote.cmd
        n: int = await ctx.remote.write("HDEL " + hkey, lambda: client.hdel(hkey, id_))
        return n > 0
