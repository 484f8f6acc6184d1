"""The command line's progress bars: drawn with tqdm only on a terminal, and only when
tqdm is installed; otherwise nothing at all is written."""

from __future__ import annotations

import io
import sys

import pytest

from cal_redis._progress import Bar, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_when_stdout_is_not_a_terminal() -> None:
    out = io.StringIO()
    bar = progress_bar("backup", 10, stream=out)
    assert type(bar) is Bar and not bar.drawn
    bar.update(3)
    bar.advance_to(7)
    bar.postfix("x")
    bar.close()
    assert bar.done == 7 and out.getvalue() == ""


def test_no_bar_without_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    out = Terminal()
    bar = progress_bar("backup", 10, stream=out)
    assert not bar.drawn
    bar.update(5)
    bar.close()
    assert out.getvalue() == ""


def test_a_bar_on_a_terminal_with_tqdm() -> None:
    pytest.importorskip("tqdm")
    out = Terminal()
    bar = progress_bar("backup", 10, "key", stream=out)
    assert bar.drawn
    bar.update(4)
    bar.advance_to(10)
    bar.postfix("users 10")
    bar.close()
    assert bar.done == 10
    assert "backup" in out.getvalue() and "100%" in out.getvalue()
