#!/usr/bin/env bash
# Install what the tests need, then run the whole suite (arguments go to pytest).
#
# As root on Debian it installs the system packages the real-dependency tests
# use, and starts libvirtd with QEMU for the run (stopping it at the end).
# Elsewhere those tests skip with a reason, except under CI=true, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages, as root on Debian, each only when missing, in one apt-get run:
# - libvirt-dev, to build libvirt-python against;
# - the PostgreSQL 15 server binaries (the tests start a throwaway cluster themselves);
# - libvirtd with QEMU, for tests/e2e/test_qemu.py (with no systemd, scripts/libvirtd.sh runs it);
# - Debian's Chromium and its chromedriver, and npm, for the console's browser tests.
packages=()
pkg-config --exists libvirt 2>/dev/null || packages+=(libvirt-dev pkg-config)
[ -x /usr/lib/postgresql/15/bin/initdb ] || packages+=(postgresql-15)
for package in libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 libvirt-clients genisoimage; do
    dpkg -s "$package" >/dev/null 2>&1 || packages+=("$package")
done
[ -x /usr/bin/chromium ] || packages+=(chromium)
[ -x /usr/bin/chromedriver ] || packages+=(chromium-driver)
command -v npm >/dev/null || packages+=(npm)
if [ ${#packages[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${packages[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    if [[ " ${packages[*]} " == *" postgresql-15 "* ]]; then
        apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null
        # Server binaries only: the tests start their own throwaway cluster, not one on port 5432.
        sed -ri 's/^#?create_main_cluster = .*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
    fi
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

# axe-core, which the console's browser tests inject, from the npm registry into .cache/npm (ignored
# by git).  The tests' screenshots go to .cache/screenshots, printed at the end.
if [ ! -f .cache/npm/node_modules/axe-core/axe.min.js ] && command -v npm >/dev/null; then
    npm install --prefix .cache/npm --no-audit --no-fund --silent axe-core@4 >/dev/null
fi
screenshots="$PWD/.cache/screenshots"

extras=test
if pkg-config --exists libvirt 2>/dev/null; then
    # The Python binding must not be newer than the C library it builds against.
    python3 -m pip install --quiet --disable-pip-version-check \
        "libvirt-python==$(pkg-config --modversion libvirt)"
    extras=test,libvirt
fi
python3 -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
libvirtd_started=
if [ "$(id -u)" = 0 ] && command -v libvirtd >/dev/null && ! virsh -q -c qemu:///system version >/dev/null 2>&1; then
    libvirtd_started=1
    bash scripts/libvirtd.sh start || echo "libvirtd did not start: the QEMU tests fail under CI=true" >&2
fi
# However pytest ends: stop the libvirtd started for this run and say where the screenshots are;
# the exit status stays pytest's.
trap 'status=$?; [ -z "$libvirtd_started" ] || bash scripts/libvirtd.sh stop; echo "console screenshots: $screenshots" >&2; exit $status' EXIT
python3 -m pytest "$@"
