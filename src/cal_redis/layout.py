"""The key style recorded in Redis, its check at connect, and the migration between styles.

The data's key style (``standalone`` or ``cluster``, see :mod:`cal_redis.keys`) is
stored under :data:`~cal_redis.keys.LAYOUT_KEY` by the first cache that connects to
an empty layout. Every later :meth:`~cal_redis.CallableCache.connect` compares it with
its own style and raises :class:`~cal_redis.errors.ConfigurationError` on a mismatch,
so a cache never silently reads ``None`` from keys written in the other style.

:func:`migrate_to_cluster` (``python -m cal_redis migrate-keys``) moves a standalone
layout to the cluster style: the ident hashes and every account key get their cluster
names. It copies each key with ``DUMP``/``RESTORE`` (keeping its TTL; this also
works across cluster nodes) and then deletes the old name, so an interrupted run is
finished by running it again. Writers must be stopped while it runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import CalRedisError, ConfigurationError
from .errors import ConnectionError as CalConnectionError
from .errors import TimeoutError as CalTimeoutError
from .keys import LAYOUT_KEY, KeyBuilder

if TYPE_CHECKING:
    from .remote import Remote

__all__ = ("MigrationReport", "check_key_style", "migrate_to_cluster")

log = logging.getLogger("cal_redis")


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def check_key_style(remote: Remote, keys: KeyBuilder) -> str:
    """Compare the style recorded in Redis with ``keys.style``; record it on first use.

    Raises :class:`~cal_redis.errors.ConfigurationError` when the recorded style
    differs, or when nothing is recorded but the other style's ident hashes hold
    data. Returns the style.
    """
    other = KeyBuilder(cluster=not keys.cluster)
    probes = other.global_ident_hashes()

    def build(pipe: Any) -> None:
        pipe.get(LAYOUT_KEY)
        for key in probes:
            pipe.exists(key)

    stored, *found = await remote.pipeline("GET " + LAYOUT_KEY, build, read=True)
    stored = _text(stored)
    if stored is None:
        present = [key for key, n in zip(probes, found, strict=True) if n]
        if present:
            raise ConfigurationError(
                f"the data in Redis is in the {other.style} key style ({present[0]} exists, "
                f"no {LAYOUT_KEY} recorded) but this cache uses the {keys.style} style: set "
                f"CacheConfig(cluster={other.cluster}) or migrate the data "
                "(python -m cal_redis migrate-keys)"
            )
        try:
            done = await remote.write("SET " + LAYOUT_KEY, remote.cmd.set, LAYOUT_KEY,
                                      keys.style, None, None, True)  # ex, px, nx
        except (CalConnectionError, CalTimeoutError):
            raise
        except CalRedisError as err:  # e.g. an ACL without SET: checked, not recorded
            log.warning("cannot record the key style under %s: %s", LAYOUT_KEY, err)
            return keys.style
        if done:
            return keys.style
        stored = _text(await remote.read("GET " + LAYOUT_KEY, remote.cmd.get, LAYOUT_KEY))
    if stored != keys.style:
        raise ConfigurationError(
            f"the data in Redis is in the {stored} key style ({LAYOUT_KEY}) but this cache "
            f"uses the {keys.style} style: set CacheConfig(cluster={stored == 'cluster'})"
            + (" or migrate the data (python -m cal_redis migrate-keys)"
               if stored == "standalone" else "")
        )
    return keys.style


@dataclass(slots=True)
class MigrationReport:
    """What :func:`migrate_to_cluster` did (or, with ``dry_run``, would do)."""

    #: Keys given their cluster name.
    moved: int = 0
    #: Keys already in the cluster style (nothing to do).
    already: int = 0
    #: Old names whose copy already existed with the same value (an interrupted run).
    finished: int = 0
    #: Old names whose new name holds a different value: left alone, to be resolved.
    conflicts: list[str] = field(default_factory=list)


def cluster_name(key: str) -> str | None:
    """The cluster-style name of a standalone-style key, or None if it has none."""
    plain, tagged = KeyBuilder(), KeyBuilder(cluster=True)
    for old, new in zip(plain.global_ident_hashes(), tagged.global_ident_hashes(), strict=True):
        if key == old:
            return new
    if not key.startswith("cal:account:") or "{" in key:
        return None
    account, sep, rest = key[len("cal:account:"):].partition(":")
    if not sep or not rest:
        return None  # cal:account:idents, the account ident hash
    return tagged.account(account) + rest


async def migrate_to_cluster(remote: Remote, *, dry_run: bool = False) -> MigrationReport:
    """Give every standalone-style key its cluster-style name (module docstring), then
    record the cluster style. Safe to run again; stop writers while it runs."""
    report = MigrationReport()
    keys = [k for k in KeyBuilder().global_ident_hashes()]
    async for key in remote.scan_keys("cal:account:*"):
        keys.append(key)
    for key in keys:
        new = cluster_name(key)
        if new is None:
            if key.startswith("cal:account:{"):
                report.already += 1
            continue
        payload = await remote.read("DUMP " + key, remote.cmd.dump, key)
        if payload is None:
            continue  # absent (an ident hash never written)
        existing = await remote.read("DUMP " + new, remote.cmd.dump, new)
        if existing is not None:
            if existing != payload:
                report.conflicts.append(key)
                continue
            report.finished += 1
        else:
            report.moved += 1
        if dry_run:
            continue
        if existing is None:
            ttl = await remote.read("PTTL " + key, remote.cmd.pttl, key)
            await remote.write("RESTORE " + new, remote.cmd.restore, new,
                               max(int(ttl), 0), payload)
        await remote.write("DEL " + key, remote.cmd.delete, key)
    if not dry_run and not report.conflicts:
        await remote.write("SET " + LAYOUT_KEY, remote.cmd.set, LAYOUT_KEY, "cluster")
    return report
