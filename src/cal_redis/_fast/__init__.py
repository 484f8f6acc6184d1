"""Pick the compiled L1 module or its pure-Python twin.

The twin (``_lru_py``) is the type source for both: the compiled module has the
same names and the same observable behaviour. ``CAL_REDIS_NO_EXTENSIONS=1`` in the
environment forces the twin at import time, as it disables the build in setup.py.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

#: ``CAL_REDIS_NO_EXTENSIONS`` parsed once for the package and its tests (setup.py parses
#: the same rule itself at build time).
NO_EXTENSIONS: bool = os.environ.get("CAL_REDIS_NO_EXTENSIONS", "") not in ("", "0")

EXTENSION_ACTIVE: bool
if TYPE_CHECKING:
    from ._lru_py import LRUCache as LRUCache
    EXTENSION_ACTIVE = False
else:
    if NO_EXTENSIONS:
        from ._lru_py import LRUCache

        EXTENSION_ACTIVE = False
    else:
        try:
            from ._lru_c import LRUCache

            EXTENSION_ACTIVE = True
        except ImportError:  # pragma: no cover - depends on how it was installed
            from ._lru_py import LRUCache

            EXTENSION_ACTIVE = False

__all__ = ("EXTENSION_ACTIVE", "NO_EXTENSIONS", "LRUCache")
