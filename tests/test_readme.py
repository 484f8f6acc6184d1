"""The README's usage example runs as written (against the session's redis-server)."""

from __future__ import annotations

import pathlib
import re

from cal_redis.embedded import EmbeddedRedis

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs(redis_server: EmbeddedRedis, redis_url: str) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "README has no python example"
    code = blocks[0]
    assert '"redis://localhost:6379"' in code
    code = code.replace('"redis://localhost:6379"', repr(redis_url))
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(code, str(README), "exec"), namespace)  # the example ends in asyncio.run(...)
