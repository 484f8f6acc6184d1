"""The loop async tests run on is the one ``--event-loop`` selects (tests/conftest.py),
so the uvloop CI section really exercises uvloop."""

from __future__ import annotations

import asyncio

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
