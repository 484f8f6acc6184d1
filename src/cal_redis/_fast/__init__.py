"""Pick the compiled L1 module or its pure-Python twin.

The twin (``_lru_py``) is the type source for both: the compiled module has the
same names and the same observable behaviour. ``CAL_REDIS_NO_EXTENSIONS=1`` in the
environment forces the twin at import time, as it disables the build in setup.py.

When the compiled module was expected (``CAL_REDIS_NO_EXTENSIONS`` unset) but does not
import, typically an sdist installed where no C compiler was found, the twin is used
and :func:`warn_if_unexpectedly_pure` logs one WARNING per process, from the first
cache made; :data:`L1_REASON` says why (``python -m cal_redis doctor`` prints it).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

#: ``CAL_REDIS_NO_EXTENSIONS`` parsed once for the package and its tests (setup.py parses
#: the same rule itself at build time).
NO_EXTENSIONS: bool = os.environ.get("CAL_REDIS_NO_EXTENSIONS", "") not in ("", "0")

EXTENSION_ACTIVE: bool
#: Why the active L1 is the one it is, in words (for ``doctor`` and the warning).
L1_REASON: str
if TYPE_CHECKING:
    from ._lru_py import LRUCache as LRUCache
    EXTENSION_ACTIVE = False
    L1_REASON = ""
else:
    if NO_EXTENSIONS:
        from ._lru_py import LRUCache

        EXTENSION_ACTIVE = False
        L1_REASON = "CAL_REDIS_NO_EXTENSIONS is set: the pure-Python L1 was asked for"
    else:
        try:
            from ._lru_c import LRUCache

            EXTENSION_ACTIVE = True
            L1_REASON = "the compiled module cal_redis._fast._lru_c is installed"
        except ImportError as err:
            from ._lru_py import LRUCache

            EXTENSION_ACTIVE = False
            if isinstance(err, ModuleNotFoundError) and err.name == f"{__name__}._lru_c":
                L1_REASON = (
                    "the compiled module cal_redis._fast._lru_c is not installed (an sdist "
                    "installed where no C compiler was found installs none)"
                )
            else:
                L1_REASON = (
                    f"the compiled module cal_redis._fast._lru_c does not import ({err}): "
                    "was it built for another interpreter or platform?"
                )

_log = logging.getLogger("cal_redis")
_warned = False


def warn_if_unexpectedly_pure() -> bool:
    """Log one WARNING per process if the pure-Python L1 is active though the compiled
    one was expected (``CAL_REDIS_NO_EXTENSIONS`` unset); True when it logged now."""
    global _warned
    if EXTENSION_ACTIVE or NO_EXTENSIONS or _warned:
        return False
    _warned = True
    _log.warning(
        "cal-redis is using its pure-Python L1, whose hits are several times slower "
        "than the compiled one's: %s. Install a wheel built for this interpreter, or "
        "reinstall from the sdist with a C compiler present; set "
        "CAL_REDIS_NO_EXTENSIONS=1 to choose the pure-Python L1 and silence this warning. "
        "`python -m cal_redis doctor` shows which L1 is active.",
        L1_REASON,
    )
    return True


__all__ = ("EXTENSION_ACTIVE", "L1_REASON", "NO_EXTENSIONS", "LRUCache", "warn_if_unexpectedly_pure")
