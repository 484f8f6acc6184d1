"""Trunk IP → account mapping (``cal:trunk:{ip}``), cache-first.

SIP traffic from a trunk is attributed to an account by its source IP on every
call, so the lookup is cached in L1 (namespace ``trunks_ip``) on the string-key
engine (:mod:`cal_redis.engine.ttl_keys`). IPs are parsed and written in canonical
form (IPv6 keeps its colons). Writes publish a ``TrunkIpUpdate``/``TrunkIpDelete``
event (no data: subscribers invalidate) in the same script as the write.
"""

from __future__ import annotations

from .. import codec
from .._context import NeedsContext
from ..engine.negative import ABSENT
from ..engine.ttl_keys import TtlKeys, TtlKeySpec
from ..engine.writes import ANY, Guess, Step, Target
from ..errors import SerializationError
from ..keys import canonical_ip, validate_id

__all__ = ("TRUNK_IP", "TrunkIpOps")


def _decode_account(raw: bytes, key: str, ip: str) -> str:
    try:
        return validate_id(raw.decode(), "account_id")
    except (UnicodeDecodeError, ValueError) as err:
        raise SerializationError(f"not an account id: {raw[:64]!r}", key=key) from err


#: Trunk IP -> account id: global, invalidate-only events, no TTL.
TRUNK_IP: TtlKeySpec[str] = TtlKeySpec(
    "TrunkIp", "trunks_ip", scoped=False, decode=_decode_account,
    event_id=lambda i: canonical_ip(i, "id"), weigh_id=True,
    tenant_of=lambda account_id: account_id,  # the value is the owning account's id
    redis_key=lambda k, a, ip: k.trunk_ip(ip),
)


class TrunkIpOps(NeedsContext):
    """Mixin of :class:`~cal_redis.CallableCache`: the trunk IP → account mapping."""

    _trunk_ips: TtlKeys[str]

    async def get_trunk_account(self, trunk_ip: str) -> str | None:
        """The account id that owns ``trunk_ip`` (IPv4 or IPv6), or None.

        Example::

            account_id = await cache.get_trunk_account("2001:db8::1")
        """
        ip = canonical_ip(trunk_ip)
        hit: str | None = self._trunk_ips.l1.get(ip)
        if hit is not None:
            return None if hit is ABSENT else hit
        return await self._trunk_ips.get(None, ip, self._ctx.keys.trunk_ip(ip))

    async def _write_trunk_ip(self, trunk_ip: str, account_id: str | None) -> bool:
        ip = canonical_ip(trunk_ip)
        if account_id is not None:
            validate_id(account_id, "account_id")
        ctx = self._ctx
        action = "Update" if account_id is not None else "Delete"
        event = codec.event("TrunkIp" + action, ip, origin=ctx.instance_id, account_id=account_id)
        value = None if account_id is None else account_id.encode()

        def compute(stored: Guess) -> Step[None]:
            return Step(value, event)

        target = Target(ctx.keys.trunk_ip(ip), channel=ctx.keys.EVENTS, ttl="-")
        outcome = await self._trunk_ips.write(None, ip, target, compute, ANY)
        return outcome.existed

    async def set_trunk_ip(self, trunk_ip: str, account_id: str) -> None:
        """Map ``trunk_ip`` to ``account_id`` (``cal:trunk:{ip}``) and publish the change."""
        await self._write_trunk_ip(trunk_ip, account_id)

    async def delete_trunk_ip(self, trunk_ip: str) -> bool:
        """Remove the mapping of ``trunk_ip``; True if it existed."""
        return await self._write_trunk_ip(trunk_ip, None)
