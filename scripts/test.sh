#!/usr/bin/env bash
# Install what the tests need, then run the whole suite (arguments go to pytest).
#
# As root on Debian it installs the system packages the real-dependency tests
# use: libvirt-dev (to build libvirt-python against; the tests use libvirt's
# built-in test driver, no daemon) and the PostgreSQL 15 server (the tests
# start a throwaway cluster themselves).  Elsewhere those tests skip with a
# reason, except under CI=true, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
pkg-config --exists libvirt 2>/dev/null || packages+=(libvirt-dev pkg-config)
[ -x /usr/lib/postgresql/15/bin/initdb ] || packages+=(postgresql-15)
if [ ${#packages[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${packages[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null
    # Server binaries only: the tests start their own throwaway cluster, not one on port 5432.
    sed -ri 's/^#?create_main_cluster = .*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

# The console's browser tests: Debian's Chromium and its chromedriver, and axe-core from the npm registry
# into .cache/npm (ignored by git).  Their screenshots go to .cache/screenshots, printed at the end.
browser=()
[ -x /usr/bin/chromium ] || browser+=(chromium)
[ -x /usr/bin/chromedriver ] || browser+=(chromium-driver)
[ -x /usr/bin/npm ] || browser+=(npm)
if [ ${#browser[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${browser[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${browser[@]}" >/dev/null
fi
if [ ! -f .cache/npm/node_modules/axe-core/axe.min.js ] && command -v npm >/dev/null; then
    npm install --prefix .cache/npm --no-audit --no-fund --silent axe-core@4 >/dev/null
fi
screenshots="$PWD/.cache/screenshots"
trap 'echo "console screenshots: $screenshots" >&2' EXIT

extras=test
if pkg-config --exists libvirt 2>/dev/null; then
    # The Python binding must not be newer than the C library it builds against.
    python3 -m pip install --quiet --disable-pip-version-check \
        "libvirt-python==$(pkg-config --modversion libvirt)"
    extras=test,libvirt
fi
python3 -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
python3 -m pytest "$@"
