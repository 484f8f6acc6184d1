"""The package's layout holds: every module imports on its own in a fresh interpreter
(no import cycles), and only ``cal_redis.remote`` imports redis-py."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

SRC = pathlib.Path(__file__).resolve().parent.parent / "src" / "cal_redis"


def _installed_package() -> pathlib.Path:
    import cal_redis

    return pathlib.Path(cal_redis.__file__).resolve().parent


def _modules(root: pathlib.Path) -> list[str]:
    names = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    modules = _modules(_installed_package())
    assert "cal_redis.engine.writes" in modules and len(modules) > 30
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", f"import {name}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for name in modules
    }
    failed = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            failed[name] = err.decode(errors="replace")[-500:]
    assert not failed, failed


def _imports_redis(path: pathlib.Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "redis" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(
                ".")[0] == "redis":
            return True
    return False


@pytest.mark.skipif(not SRC.is_dir(), reason="needs the source tree")
def test_only_remote_imports_redis_py() -> None:
    offenders = [
        str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
        if "remote" not in p.relative_to(SRC).parts and _imports_redis(p)
    ]
    assert offenders == []
