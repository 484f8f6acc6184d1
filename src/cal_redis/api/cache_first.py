"""Typed cache-first operations: regions, proxies, accounts, users, devices.

Each method is a thin wrapper over the generic engine (:mod:`._engine`), driven by
the specs below. Reads return ``None`` for a missing entity; batch reads keep the
order of the ids asked for, with ``None`` in place of missing ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..engine.entities import Entities, EntitySpec
from ..engine.negative import ABSENT
from ..keys import KeyBuilder
from ..models import Account, Device, Proxy, Region, User

if TYPE_CHECKING:
    from .._fast import LRUCache

__all__ = ("CacheFirstOps", "ENTITY_SPECS")

REGION = EntitySpec(
    "Region", "regions", Region,
    hash_key=lambda k, a: k.REGIONS,
    idents_key=lambda k, a: k.REGION_IDENTS,
    ident_fields=("code", "name"),
)
PROXY = EntitySpec("Proxy", "proxies", Proxy, hash_key=lambda k, a: k.PROXIES)
ACCOUNT = EntitySpec(
    "Account", "accounts", Account,
    hash_key=lambda k, a: k.ACCOUNTS,
    idents_key=lambda k, a: k.ACCOUNT_IDENTS,
    ident_fields=("domain", "code"),
    tenant_field="id",  # an account summary belongs to the account it describes
)
USER = EntitySpec(
    "User", "users", User,
    hash_key=lambda k, a: k.USERS,
    idents_key=lambda k, a: k.USER_IDENTS,
    ident_fields=("email", "username", "extension"),
)


def _devices(k: KeyBuilder, a: str | None) -> str:
    return k.devices(a)  # type: ignore[arg-type]


def _device_idents(k: KeyBuilder, a: str | None) -> str:
    return k.device_idents(a)  # type: ignore[arg-type]


DEVICE = EntitySpec(
    "Device", "devices", Device,
    hash_key=_devices,
    idents_key=_device_idents,
    ident_fields=("sip_username", "mac"),
    scoped=True,
)

#: Every cache-first entity, by event prefix.
ENTITY_SPECS: dict[str, EntitySpec[Any]] = {
    s.kind: s for s in (REGION, PROXY, ACCOUNT, USER, DEVICE)
}


class CacheFirstOps:
    """Mixin of :class:`~cal_redis.CallableCache`: L1 → L2 reads and write-through writes."""

    _regions: Entities[Region]
    _proxies: Entities[Proxy]
    _accounts: Entities[Account]
    _users: Entities[User]
    _devices: Entities[Device]
    _users_l1: LRUCache

    # -- users (the hottest path: L1 lookup inlined) --------------------------------------
    async def get_user_by_id(self, user_id: str) -> User | None:
        """The user ``user_id``, from L1 when cached, else from Redis (then cached).

        Example::

            user = await cache.get_user_by_id("u1")
        """
        try:
            hit: User | None = self._users_l1.get(user_id)
        except TypeError:
            hit = None
        if hit is not None:
            return None if hit is ABSENT else hit
        return await self._users.load(None, user_id)

    get_user = get_user_by_id

    async def get_user_by_ident(self, ident: str, *, account_id: str | None = None) -> User | None:
        """The user whose email, username or extension is ``ident``.

        With ``account_id``, a user of another account is treated as not found.
        """
        user = await self._users.get_by_ident(None, ident)
        if user is not None and account_id is not None and user.account_id != account_id:
            return None
        return user

    async def get_users(self) -> list[User]:
        """Every user, straight from Redis."""
        return await self._users.get_all(None)

    async def get_users_batch(self, user_ids: Sequence[str]) -> list[User | None]:
        """Users by id in one Redis round trip for all L1 misses; order kept."""
        return await self._users.get_batch(None, user_ids)

    async def set_user(self, user: User) -> User:
        """Write a user (and its idents), publish ``UserCreate``/``UserUpdate``."""
        return await self._users.set(None, user)

    async def update_user(self, user_id: str, **changes: Any) -> User:
        """Change some fields of a stored user; raises NotFoundError when absent."""
        return await self._users.update(None, user_id, changes)

    async def delete_user(self, user_id: str) -> bool:
        """Delete a user and its idents; True if it existed."""
        return await self._users.delete(None, user_id)

    # -- regions ----------------------------------------------------------------------
    async def get_region(self, region_id: str) -> Region | None:
        """The region ``region_id`` (cache-first)."""
        return await self._regions.get(None, region_id)

    get_region_by_id = get_region

    async def get_region_by_ident(self, ident: str) -> Region | None:
        """The region whose code or name is ``ident``."""
        return await self._regions.get_by_ident(None, ident)

    async def get_regions(self) -> list[Region]:
        """Every region, straight from Redis."""
        return await self._regions.get_all(None)

    async def get_regions_batch(self, region_ids: Sequence[str]) -> list[Region | None]:
        """Regions by id, one round trip for the misses."""
        return await self._regions.get_batch(None, region_ids)

    async def set_region(self, region: Region) -> Region:
        """Write a region and its idents; publish its event."""
        return await self._regions.set(None, region)

    async def update_region(self, region_id: str, **changes: Any) -> Region:
        """Partial update of a region."""
        return await self._regions.update(None, region_id, changes)

    async def delete_region(self, region_id: str) -> bool:
        """Delete a region; True if it existed."""
        return await self._regions.delete(None, region_id)

    # -- proxies ----------------------------------------------------------------------
    async def get_proxy(self, proxy_id: str) -> Proxy | None:
        """The proxy ``proxy_id`` (cache-first)."""
        return await self._proxies.get(None, proxy_id)

    get_proxy_by_id = get_proxy

    async def get_proxies(self) -> list[Proxy]:
        """Every proxy, straight from Redis."""
        return await self._proxies.get_all(None)

    async def get_proxies_batch(self, proxy_ids: Sequence[str]) -> list[Proxy | None]:
        """Proxies by id, one round trip for the misses."""
        return await self._proxies.get_batch(None, proxy_ids)

    async def set_proxy(self, proxy: Proxy) -> Proxy:
        """Write a proxy; publish its event."""
        return await self._proxies.set(None, proxy)

    async def update_proxy(self, proxy_id: str, **changes: Any) -> Proxy:
        """Partial update of a proxy."""
        return await self._proxies.update(None, proxy_id, changes)

    async def delete_proxy(self, proxy_id: str) -> bool:
        """Delete a proxy; True if it existed."""
        return await self._proxies.delete(None, proxy_id)

    # -- accounts ---------------------------------------------------------------------
    async def get_account(self, account_id: str) -> Account | None:
        """The account summary ``account_id`` (cache-first)."""
        return await self._accounts.get(None, account_id)

    get_account_by_id = get_account

    async def get_account_by_ident(self, ident: str) -> Account | None:
        """The account whose domain or code is ``ident``."""
        return await self._accounts.get_by_ident(None, ident)

    async def get_accounts(self) -> list[Account]:
        """Every account, straight from Redis."""
        return await self._accounts.get_all(None)

    async def get_accounts_batch(self, account_ids: Sequence[str]) -> list[Account | None]:
        """Accounts by id, one round trip for the misses."""
        return await self._accounts.get_batch(None, account_ids)

    async def set_account(self, account: Account) -> Account:
        """Write an account and its idents; publish its event."""
        return await self._accounts.set(None, account)

    async def update_account(self, account_id: str, **changes: Any) -> Account:
        """Partial update of an account."""
        return await self._accounts.update(None, account_id, changes)

    async def delete_account(self, account_id: str) -> bool:
        """Delete an account summary; True if it existed."""
        return await self._accounts.delete(None, account_id)

    # -- devices (account-scoped) -----------------------------------------------------
    async def get_device(self, account_id: str, device_id: str) -> Device | None:
        """Device ``device_id`` of account ``account_id`` (cache-first)."""
        return await self._devices.get(account_id, device_id)

    get_device_by_id = get_device

    async def get_device_by_ident(self, account_id: str, ident: str) -> Device | None:
        """The account's device whose SIP username or MAC is ``ident``."""
        return await self._devices.get_by_ident(account_id, ident)

    async def get_devices(self, account_id: str) -> list[Device]:
        """Every device of the account, straight from Redis."""
        return await self._devices.get_all(account_id)

    async def get_devices_batch(
        self, account_id: str, device_ids: Sequence[str]
    ) -> list[Device | None]:
        """The account's devices by id, one round trip for the misses."""
        return await self._devices.get_batch(account_id, device_ids)

    async def set_device(self, account_id: str, device: Device) -> Device:
        """Write a device of the account and its idents; publish on the account channel."""
        return await self._devices.set(account_id, device)

    async def update_device(self, account_id: str, device_id: str, **changes: Any) -> Device:
        """Partial update of a device."""
        return await self._devices.update(account_id, device_id, changes)

    async def delete_device(self, account_id: str, device_id: str) -> bool:
        """Delete a device of the account; True if it existed."""
        return await self._devices.delete(account_id, device_id)
