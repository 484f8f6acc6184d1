"""Trunk IP → account mapping (``cal:trunk:{ip}``), cache-first.

SIP traffic from a trunk is attributed to an account by its source IP on every
call, so the lookup is cached in L1 (namespace ``trunks_ip``). IPs are parsed and
written in canonical form (IPv6 keeps its colons). Writes publish a
``TrunkIpUpdate``/``TrunkIpDelete`` event (no data: subscribers invalidate) in the
same MULTI/EXEC as the write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import TYPE_CHECKING

import redis.exceptions as rexc

from .. import codec
from ..errors import SerializationError
from ..keys import canonical_ip, validate_id
from ..models import Event, now_ms
from ..remote import map_redis_error

if TYPE_CHECKING:
    from ..cache import CallableCache

__all__ = ("TrunkIps", "TrunkIpOps")


class TrunkIps:
    """The trunk-IP mapping over L1 and L2; also the event target for ``TrunkIp*``."""

    kind = "TrunkIp"

    def __init__(self, cache: CallableCache) -> None:
        self.cache = cache
        self.l1 = cache.local["trunks_ip"]
        self.flights: dict[str, asyncio.Future[str | None]] = {}
        self.pending: dict[Hashable, int] = {}
        self.joins = 0

    async def get(self, trunk_ip: str) -> str | None:
        ip = canonical_ip(trunk_ip)
        hit: str | None = self.l1.get(ip)
        if hit is not None:
            return hit
        flight = self.flights.get(ip)
        if flight is not None:
            self.joins += 1
            return await asyncio.shield(flight)
        flight = asyncio.get_running_loop().create_future()
        self.flights[ip] = flight
        key = self.cache.keys.trunk_ip(ip)
        client = self.cache.remote.untyped
        token = self.l1.begin_fill()
        try:
            raw: bytes | None = await self.cache.remote.read("GET " + key, lambda: client.get(key))
            account: str | None = None
            if raw is not None:
                try:
                    account = validate_id(raw.decode(), "account_id")
                except (UnicodeDecodeError, ValueError) as err:
                    raise SerializationError(f"not an account id: {raw[:64]!r}", key=key) from err
                if self.cache.fill_ok:
                    weight = self.cache.local.weight("trunks_ip", len(ip) + len(account))
                    self.l1.set_if_fresh(ip, account, weight, token)
        except BaseException as err:
            flight.set_exception(err)
            flight.exception()
            raise
        else:
            flight.set_result(account)
            return account
        finally:
            self.l1.end_fill()
            del self.flights[ip]

    async def write(self, trunk_ip: str, account_id: str | None) -> bool:
        """Set (``account_id``) or delete (None) the mapping; True if a key changed/existed."""
        ip = canonical_ip(trunk_ip)
        if account_id is not None:
            validate_id(account_id, "account_id")
        key = self.cache.keys.trunk_ip(ip)
        event = Event(
            type="TrunkIpUpdate" if account_id is not None else "TrunkIpDelete",
            id=ip,
            account_id=account_id,
            origin=self.cache.instance_id,
            ts=now_ms(),
        )
        client = self.cache.remote.client
        try:
            async with client.pipeline(transaction=True) as pipe:
                if account_id is None:
                    pipe.delete(key)
                else:
                    pipe.set(key, account_id)
                pipe.publish(self.cache.keys.EVENTS, codec.encode(event))
                self.cache.remote.round_trips += 1
                result = await pipe.execute()
        except (rexc.RedisError, OSError) as err:
            self.cache.remote.errors += 1
            self.l1.invalidate(ip)
            raise map_redis_error(err, f"write trunk IP {ip}") from err
        # Events carry no data: every instance, this one included, just invalidates.
        self.l1.invalidate(ip)
        return bool(result[0])

    def apply_event(self, action: str, event: Event, account_id: str | None) -> str:
        """Invalidate on any ``TrunkIp*`` event (``Sync`` drops the namespace)."""
        if action == "Sync":
            self.l1.invalidate_all()
            return "sync"
        ip = canonical_ip(event.id, "id")
        if event.origin == self.cache.instance_id:
            return "echo"
        self.l1.invalidate(ip)
        return "invalidate"


class TrunkIpOps:
    """Mixin of :class:`~cal_redis.CallableCache`: the trunk IP → account mapping."""

    _trunk_ips: TrunkIps

    async def get_trunk_account(self, trunk_ip: str) -> str | None:
        """The account id that owns ``trunk_ip`` (IPv4 or IPv6), or None.

        Example::

            account_id = await cache.get_trunk_account("2001:db8::1")
        """
        return await self._trunk_ips.get(trunk_ip)

    async def set_trunk_ip(self, trunk_ip: str, account_id: str) -> None:
        """Map ``trunk_ip`` to ``account_id`` (``cal:trunk:{ip}``) and publish the change."""
        await self._trunk_ips.write(trunk_ip, account_id)

    async def delete_trunk_ip(self, trunk_ip: str) -> bool:
        """Remove the mapping of ``trunk_ip``; True if it existed."""
        return await self._trunk_ips.write(trunk_ip, None)
