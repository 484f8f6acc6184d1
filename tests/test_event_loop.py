"""The loop async tests run on is the one ``--event-loop`` selects (tests/conftest.py),
so the uvloop CI section really exercises uvloop."""

from __future__ import annotations

import asyncio
import pathlib
import re
from typing import Any

import pytest

from cal_redis import CallableCache


def _is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.split(".", 1)[0] == "uvloop"


async def test_async_tests_run_on_the_selected_loop(request: pytest.FixtureRequest) -> None:
    selected = request.config.getoption("event_loop")
    assert _is_uvloop(asyncio.get_running_loop()) == (selected == "uvloop")


async def test_a_cache_on_the_selected_loop(cache: CallableCache,
                                            request: pytest.FixtureRequest) -> None:
    # The fixture's cache was connected on the test's own loop: one loop for both.
    selected = request.config.getoption("event_loop")
    assert _is_uvloop(asyncio.get_running_loop()) == (selected == "uvloop")
    assert await cache.get_user_by_id("nobody") is None


def test_readme_example_runs_on_uvloop(redis_url: str) -> None:
    """The README's usage example, started as its uvloop paragraph says (uvloop.run in
    place of asyncio.run), with nothing else changed."""
    uvloop = pytest.importorskip("uvloop")
    readme = pathlib.Path(__file__).resolve().parent.parent / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)
    example = next(b for b in blocks if "CallableCache.connect" in b)
    paragraph = next(b for b in blocks if "uvloop.run(main())" in b)
    assert "asyncio.run(main())" in example
    code = example.replace('"redis://localhost:6379"', repr(redis_url))
    code = code.replace("asyncio.run(main())", "seen.append(uvloop.run(probe(main)))")
    seen: list[bool] = []

    async def probe(main: Any) -> bool:
        await main()
        return _is_uvloop(asyncio.get_running_loop())

    namespace: dict[str, object] = {"__name__": "readme_example", "uvloop": uvloop,
                                    "probe": probe, "seen": seen}
    exec(compile(code, str(readme), "exec"), namespace)
    assert seen == [True] and "import uvloop" in paragraph
