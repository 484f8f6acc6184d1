"""Progress bars of the command line tools (backup, restore, warm).

A bar is drawn with `tqdm <https://tqdm.github.io>`_ only when standard output is a
terminal and tqdm is installed (``pip install 'cal-redis[tools]'``); otherwise
:func:`progress_bar` returns a bar that draws nothing, so scripts, pipes and CI logs
get the plain summary lines alone. The library itself never draws anything.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ("Bar", "progress_bar")


class Bar:
    """A progress bar that draws nothing (the interface of the real one)."""

    drawn = False
    #: Units done so far.
    done = 0

    def update(self, n: int = 1) -> None:
        """Advance by ``n``."""
        self.done += n

    def advance_to(self, done: int) -> None:
        """Advance to ``done`` units in all."""
        if done > self.done:
            self.update(done - self.done)

    def postfix(self, text: str) -> None:
        """Show ``text`` after the bar."""

    def close(self) -> None:
        """Finish the bar (idempotent)."""


class _Tqdm(Bar):
    drawn = True

    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def update(self, n: int = 1) -> None:
        self.done += n
        self._bar.update(n)

    def postfix(self, text: str) -> None:
        self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self._bar.close()


def progress_bar(
    desc: str, total: int | None = None, unit: str = "key", *, stream: TextIO | None = None
) -> Bar:
    """A bar for ``total`` units (None: unknown), drawn on ``stream`` (default: stdout)
    only when it is a terminal and tqdm can be imported."""
    out = stream if stream is not None else sys.stdout
    isatty = getattr(out, "isatty", None)
    if not (callable(isatty) and isatty()):
        return Bar()
    try:
        from tqdm import tqdm
    except ImportError:
        return Bar()
    return _Tqdm(tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=out,
                      dynamic_ncols=True, leave=True))
