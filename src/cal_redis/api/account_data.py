"""Account data kept in per-account hashes, straight from Redis: DDIs
(``cal:account:{a}:ddis``, ids are E.164 numbers such as ``+441234567890``), trunks,
hooks, assets and addresses.

Every method is a thin typed wrapper over the one generic implementation in
:mod:`._records`. Writes lay the new object over the stored JSON, so fields other
services wrote are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..engine.records import Records, RecordSpec
from ..keys import KeyBuilder
from ..models import Address, Asset, Ddi, Hook, Trunk
from ._base import DirectOps

__all__ = ("AccountDataOps", "ACCOUNT_DATA")


def _ddis(k: KeyBuilder, a: str) -> str:
    return k.ddis(a)


def _trunks(k: KeyBuilder, a: str) -> str:
    return k.trunks(a)


def _hooks(k: KeyBuilder, a: str) -> str:
    return k.hooks(a)


def _assets(k: KeyBuilder, a: str) -> str:
    return k.assets(a)


def _addresses(k: KeyBuilder, a: str) -> str:
    return k.addresses(a)


DDIS = Records(RecordSpec("Ddi", Ddi, _ddis, id_arg="ddi_id", obj_arg="ddi"))
TRUNKS = Records(RecordSpec("Trunk", Trunk, _trunks, id_arg="trunk_id", obj_arg="trunk"))
HOOKS = Records(RecordSpec("Hook", Hook, _hooks, id_arg="hook_id", obj_arg="hook"))
ASSETS = Records(RecordSpec("Asset", Asset, _assets, id_arg="asset_id", obj_arg="asset"))
ADDRESSES = Records(
    RecordSpec("Address", Address, _addresses, id_arg="address_id", obj_arg="address")
)

#: Every account-data kind, by name.
ACCOUNT_DATA = {r.spec.kind: r for r in (DDIS, TRUNKS, HOOKS, ASSETS, ADDRESSES)}


class AccountDataOps(DirectOps):
    """Mixin of :class:`~cal_redis.CallableCache`: DDIs, trunks, hooks, assets, addresses.

    Example::

        await cache.set_ddi("acc42", Ddi(id="+441234567890", destination_type="queue",
                                         destination_id="support"))
        ddi = await cache.get_ddi("acc42", "+441234567890")
    """

    # -- DDIs -------------------------------------------------------------------------
    async def get_ddi(self, account_id: str, ddi_id: str) -> Ddi | None:
        """The DDI ``ddi_id`` (E.164) of the account, or None (``HGET``)."""
        return await DDIS.get(self._ctx, account_id, ddi_id)

    async def get_ddis(self, account_id: str) -> list[Ddi]:
        """Every DDI of the account, sorted by id (``HGETALL``)."""
        return await DDIS.get_all(self._ctx, account_id)

    async def get_ddis_batch(self, account_id: str, ddi_ids: Sequence[str]) -> list[Ddi | None]:
        """DDIs by id in one ``HMGET``; order kept, None where missing."""
        return await DDIS.get_batch(self._ctx, account_id, ddi_ids)

    async def set_ddi(self, account_id: str, ddi: Ddi) -> Ddi:
        """Write a DDI (stored fields this version does not know are kept); return it."""
        return await DDIS.set(self._ctx, account_id, ddi)

    async def delete_ddi(self, account_id: str, ddi_id: str) -> bool:
        """Delete a DDI; True if it existed."""
        return await DDIS.delete(self._ctx, account_id, ddi_id)

    # -- trunks -----------------------------------------------------------------------
    async def get_trunk(self, account_id: str, trunk_id: str) -> Trunk | None:
        """The trunk ``trunk_id`` of the account, or None (``HGET``)."""
        return await TRUNKS.get(self._ctx, account_id, trunk_id)

    async def get_trunks(self, account_id: str) -> list[Trunk]:
        """Every trunk of the account, sorted by id (``HGETALL``)."""
        return await TRUNKS.get_all(self._ctx, account_id)

    async def get_trunks_batch(
        self, account_id: str, trunk_ids: Sequence[str]
    ) -> list[Trunk | None]:
        """Trunks by id in one ``HMGET``; order kept, None where missing."""
        return await TRUNKS.get_batch(self._ctx, account_id, trunk_ids)

    async def set_trunk(self, account_id: str, trunk: Trunk) -> Trunk:
        """Write a trunk (stored fields this version does not know are kept); return it."""
        return await TRUNKS.set(self._ctx, account_id, trunk)

    async def delete_trunk(self, account_id: str, trunk_id: str) -> bool:
        """Delete a trunk; True if it existed."""
        return await TRUNKS.delete(self._ctx, account_id, trunk_id)

    # -- hooks ------------------------------------------------------------------------
    async def get_hook(self, account_id: str, hook_id: str) -> Hook | None:
        """The webhook ``hook_id`` of the account, or None (``HGET``)."""
        return await HOOKS.get(self._ctx, account_id, hook_id)

    async def get_hooks(self, account_id: str) -> list[Hook]:
        """Every webhook of the account, sorted by id (``HGETALL``)."""
        return await HOOKS.get_all(self._ctx, account_id)

    async def get_hooks_batch(self, account_id: str, hook_ids: Sequence[str]) -> list[Hook | None]:
        """Webhooks by id in one ``HMGET``; order kept, None where missing."""
        return await HOOKS.get_batch(self._ctx, account_id, hook_ids)

    async def set_hook(self, account_id: str, hook: Hook) -> Hook:
        """Write a webhook (stored fields this version does not know are kept); return it."""
        return await HOOKS.set(self._ctx, account_id, hook)

    async def delete_hook(self, account_id: str, hook_id: str) -> bool:
        """Delete a webhook; True if it existed."""
        return await HOOKS.delete(self._ctx, account_id, hook_id)

    # -- assets -----------------------------------------------------------------------
    async def get_asset(self, account_id: str, asset_id: str) -> Asset | None:
        """The asset ``asset_id`` of the account, or None (``HGET``)."""
        return await ASSETS.get(self._ctx, account_id, asset_id)

    async def get_assets(self, account_id: str) -> list[Asset]:
        """Every asset of the account, sorted by id (``HGETALL``)."""
        return await ASSETS.get_all(self._ctx, account_id)

    async def get_assets_batch(
        self, account_id: str, asset_ids: Sequence[str]
    ) -> list[Asset | None]:
        """Assets by id in one ``HMGET``; order kept, None where missing."""
        return await ASSETS.get_batch(self._ctx, account_id, asset_ids)

    async def set_asset(self, account_id: str, asset: Asset) -> Asset:
        """Write an asset (stored fields this version does not know are kept); return it."""
        return await ASSETS.set(self._ctx, account_id, asset)

    async def delete_asset(self, account_id: str, asset_id: str) -> bool:
        """Delete an asset; True if it existed."""
        return await ASSETS.delete(self._ctx, account_id, asset_id)

    # -- addresses --------------------------------------------------------------------
    async def get_address(self, account_id: str, address_id: str) -> Address | None:
        """The address ``address_id`` of the account, or None (``HGET``)."""
        return await ADDRESSES.get(self._ctx, account_id, address_id)

    async def get_addresses(self, account_id: str) -> list[Address]:
        """Every address of the account, sorted by id (``HGETALL``)."""
        return await ADDRESSES.get_all(self._ctx, account_id)

    async def get_addresses_batch(
        self, account_id: str, address_ids: Sequence[str]
    ) -> list[Address | None]:
        """Addresses by id in one ``HMGET``; order kept, None where missing."""
        return await ADDRESSES.get_batch(self._ctx, account_id, address_ids)

    async def set_address(self, account_id: str, address: Address) -> Address:
        """Write an address (stored fields this version does not know are kept); return it."""
        return await ADDRESSES.set(self._ctx, account_id, address)

    async def delete_address(self, account_id: str, address_id: str) -> bool:
        """Delete an address; True if it existed."""
        return await ADDRESSES.delete(self._ctx, account_id, address_id)
