#!/usr/bin/env bash
# Make redis-server available for the SQLite/Redis parity tests: install Debian's package
# with apt-get when it is missing. The tests start their own server on a free loopback port.
# Where it cannot be installed (no root), the Redis tests skip and say why; under CI they fail.
set -u
command -v redis-server >/dev/null 2>&1 && exit 0
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "redis-server missing and no root to install it: Redis tests will be skipped" >&2
    exit 0
  fi
fi
echo "installing redis-server with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q redis-server >/dev/null 2>&1 \
  || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q redis-server >/dev/null 2>&1; } \
  || echo "apt-get could not install redis-server: Redis tests will be skipped" >&2
exit 0
