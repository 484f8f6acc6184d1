"""Extension list only; all metadata lives in pyproject.toml.

``CAL_REDIS_NO_EXTENSIONS=1`` builds no extension (pure-Python install). When the
compiler or Cython is missing, the build warns and falls back to pure Python
rather than failing, so an sdist installs anywhere.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The same rule as cal_redis._fast.NO_EXTENSIONS (where the package and its tests read
# it), parsed again here because the build cannot import the package it is building.
NO_EXTENSIONS = os.environ.get("CAL_REDIS_NO_EXTENSIONS", "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """Build extensions, but degrade to pure Python with a warning on failure."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as err:  # noqa: BLE001 - any toolchain failure
            self._warn(err)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as err:  # noqa: BLE001
            self._warn(err)

    @staticmethod
    def _warn(err: BaseException) -> None:
        print(
            f"WARNING: cal-redis C extension could not be built ({err!r}); "
            "installing the pure-Python fallback.",
            file=sys.stderr,
        )


def extensions() -> list:  # type: ignore[type-arg]
    if NO_EXTENSIONS:
        print("CAL_REDIS_NO_EXTENSIONS is set: building no extension.", file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("WARNING: Cython is not available; installing pure Python.", file=sys.stderr)
        return []
    from setuptools import Extension

    # Linux: link the module stripped. CPython's CFLAGS carry -g, so an unstripped
    # module holds about 600 kB of debug info and symbols the import never reads
    # (728 kB unstripped, 112 kB stripped on x86_64); only its PyInit_ entry point,
    # a dynamic symbol, must stay, and stripping keeps it. Elsewhere nothing to strip:
    # macOS's linker leaves debug info in the object files, and MSVC release builds
    # link none.
    link_args = ["-Wl,--strip-all"] if sys.platform.startswith("linux") else []
    exts = [
        Extension(
            "cal_redis._fast._lru_c",
            ["src/cal_redis/_fast/_lru_c.pyx"],
            extra_link_args=link_args,
        )
    ]
    return cythonize(
        exts,
        build_dir="build/cython",  # generated C stays out of the package (and the wheel)
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
        },
        annotate=os.environ.get("CAL_REDIS_ANNOTATE", "") not in ("", "0"),
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
