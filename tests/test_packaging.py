"""What an installation ships and says about itself: the installed distribution's
metadata (license file, classifiers, project URLs), a stripped compiled L1, and the
one-time WARNING when the pure-Python L1 is active though the compiled one was expected.

The pure-L1 cases run a copy of the installed package without its compiled module,
which is what an sdist installed where no C compiler was found leaves behind, in a
fresh interpreter against the session's real server.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import shutil
import struct
import subprocess
import sys

import pytest

import cal_redis
from cal_redis.embedded import EmbeddedRedis

PACKAGE = pathlib.Path(cal_redis.__file__).resolve().parent
WARNING_TEXT = "cal-redis is using its pure-Python L1"


def test_distribution_metadata() -> None:
    dist = importlib.metadata.distribution("cal-redis")
    if dist.read_text("SOURCES.txt") is not None:  # an .egg-info, which wheels never hold
        pytest.skip("cal-redis runs from a source tree (egg-info), not an installed wheel")
    meta = dist.metadata
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    licenses = [f for f in dist.files or () if f.name == "LICENSE"]
    assert licenses, "LICENSE is not in the installed distribution"
    assert "MIT License" in licenses[0].read_text()
    classifiers = set(meta.get_all("Classifier") or ())
    for minor in (10, 11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert {"Typing :: Typed", "Framework :: AsyncIO"} <= classifiers
    assert not any(c.startswith("License ::") for c in classifiers)
    assert meta["Requires-Python"] == ">=3.10"


def _elf_sections(path: str) -> set[str]:
    """Names of the sections of an ELF64 little-endian file."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not an ELF64 LE file"
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_off, strtab_size = headers[shstrndx][4], headers[shstrndx][5]
    strtab = data[strtab_off : strtab_off + strtab_size]
    return {strtab[h[0] : strtab.index(b"\0", h[0])].decode() for h in headers}


@pytest.mark.c_extension
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF: Linux builds are stripped")
def test_compiled_l1_is_stripped() -> None:
    from cal_redis._fast import _lru_c

    sections = _elf_sections(_lru_c.__file__)
    assert ".dynsym" in sections  # PyInit__lru_c, which the import needs, is kept
    assert ".symtab" not in sections and not any(s.startswith(".debug") for s in sections), (
        _lru_c.__file__, sorted(sections))
    assert os.path.getsize(_lru_c.__file__) < 300_000


_TWO_CACHES = """
import asyncio, sys
from cal_redis import CallableCache, _fast

async def main():
    for _ in range(2):
        async with await CallableCache.connect(sys.argv[1]) as cache:
            await cache.get_user_by_id("nobody")
    print("ACTIVE", _fast.EXTENSION_ACTIVE)

asyncio.run(main())
"""


def _run(code: str, *args: str, pythonpath: pathlib.Path | None = None,
         no_extensions: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("CAL_REDIS_NO_EXTENSIONS", None)
    if no_extensions:
        env["CAL_REDIS_NO_EXTENSIONS"] = "1"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120, env=env, check=True)


@pytest.fixture(scope="module")
def without_compiled_l1(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A directory holding a copy of the installed package minus its compiled module."""
    root = tmp_path_factory.mktemp("no-extension")
    shutil.copytree(PACKAGE, root / "cal_redis",
                    ignore=shutil.ignore_patterns("_lru_c*.so", "_lru_c*.pyd", "__pycache__"))
    return root


def test_pure_l1_warns_once_when_the_compiled_one_is_missing(
    redis_url: str, without_compiled_l1: pathlib.Path
) -> None:
    proc = _run(_TWO_CACHES, redis_url, pythonpath=without_compiled_l1)
    assert "ACTIVE False" in proc.stdout
    assert proc.stderr.count(WARNING_TEXT) == 1, proc.stderr
    assert "cal_redis._fast._lru_c is not installed" in proc.stderr
    assert "CAL_REDIS_NO_EXTENSIONS=1" in proc.stderr  # how to choose it and silence it


def test_pure_l1_asked_for_does_not_warn(redis_url: str, without_compiled_l1: pathlib.Path) -> None:
    proc = _run(_TWO_CACHES, redis_url, pythonpath=without_compiled_l1, no_extensions=True)
    assert "ACTIVE False" in proc.stdout
    assert WARNING_TEXT not in proc.stderr


@pytest.mark.c_extension
def test_compiled_l1_does_not_warn(redis_url: str) -> None:
    proc = _run(_TWO_CACHES, redis_url, pythonpath=PACKAGE.parent)
    assert "ACTIVE True" in proc.stdout
    assert WARNING_TEXT not in proc.stderr


_DOCTOR = "import sys; from cal_redis.__main__ import main; sys.exit(main(sys.argv[1:]))"


def test_doctor_says_which_l1_and_why(
    redis_server: EmbeddedRedis, without_compiled_l1: pathlib.Path
) -> None:
    missing = _run(_DOCTOR, "doctor", "--url", redis_server.url, pythonpath=without_compiled_l1)
    assert "L1 extension     INACTIVE (pure Python)" in missing.stdout
    assert "L1 reason        the compiled module cal_redis._fast._lru_c is not installed" in (
        missing.stdout)
    asked = _run(_DOCTOR, "doctor", "--url", redis_server.url, pythonpath=without_compiled_l1,
                 no_extensions=True)
    assert "L1 reason        CAL_REDIS_NO_EXTENSIONS is set" in asked.stdout
    assert WARNING_TEXT not in asked.stderr
