"""Backup and restore of the key layout (``python -m cal_redis backup`` / ``restore``).

:func:`backup` writes every ``cal:`` key (or one tenant's data) to a portable JSON
lines file (:mod:`.fileformat`), reading in bounded pages (:mod:`.dump`);
:func:`restore` recreates the keys in pipelined batches, idempotently, after
checking the whole file (:mod:`.load`). The key families come from
:class:`~cal_redis.keys.KeyBuilder` itself (:mod:`.layout`). Imported only by those
commands (and by whoever imports it): importing ``cal_redis`` does not load it.

Example::

    async with await CallableCache.connect(url) as cache:
        await backup(cache.remote, "cal.jsonl.gz", accounts=["acc42"])
        summary = await restore(cache.remote, "cal.jsonl.gz", dry_run=True)
"""

from __future__ import annotations

from .dump import BackupSummary, FamilyCount, backup
from .fileformat import Reader, Record, Writer
from .layout import Family, Layout, families
from .load import MODES, RestoreCount, RestoreSummary, restore

__all__ = (
    "MODES",
    "BackupSummary",
    "FamilyCount",
    "Family",
    "Layout",
    "Reader",
    "Record",
    "RestoreCount",
    "RestoreSummary",
    "Writer",
    "backup",
    "families",
    "restore",
)
