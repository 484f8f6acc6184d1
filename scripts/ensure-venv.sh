#!/usr/bin/env sh
# Create the virtualenv $1 with a Python >= 3.10 and install the project with extras $2.
# REDIS_PY=<version> pins redis-py to that version; REDIS_PY=floor to the oldest one
# pyproject.toml allows (the `redis[hiredis]>=X` dependency).
set -eu
venv="$1"
extras="$2"
pin=""
if [ -n "${REDIS_PY:-}" ]; then
    version="$REDIS_PY"
    if [ "$version" = "floor" ]; then
        version="$(sed -n 's/^ *"redis\[hiredis\]>=\([0-9][0-9.]*\)".*/\1/p' pyproject.toml)"
        [ -n "$version" ] || { echo "no redis[hiredis]>=X dependency in pyproject.toml" >&2; exit 1; }
    fi
    pin="redis[hiredis]==$version"
    echo "redis-py pinned: $pin" >&2
fi
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "cal-redis needs Python 3.10+ (found: $("$python" --version 2>&1)); set PYTHON=..." >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
            echo "python venv module missing: installing python3-venv with apt-get" >&2
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            rm -rf "$venv"
            "$python" -m venv "$venv"
        else
            echo "cannot create a virtualenv: install python3-venv (Debian: apt-get install -y python3-venv)" >&2
            exit 1
        fi
    fi
    "$venv/bin/python" -m pip install -q --upgrade pip
fi
# A fresh, non-editable install each time: what runs is what a wheel would hold.
# setuptools copies modules into build/lib* but never removes one that left src/, so a
# moved or deleted module would still be installed; the copies are cheap to redo.
find build -path 'build/lib*' -name '*.py' -type f -delete 2>/dev/null || true
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps ".[${extras}]"
"$venv/bin/python" -m pip install -q ".[${extras}]" ${pin:+"$pin"}
