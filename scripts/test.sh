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

# libvirtd with QEMU guests, for tests/e2e/test_qemu.py; with no systemd, scripts/libvirtd.sh runs it.
qemu=(libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 libvirt-clients genisoimage)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! dpkg -s "${qemu[@]}" >/dev/null 2>&1; then
    echo "installing ${qemu[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${qemu[@]}" >/dev/null
fi

extras=test
if pkg-config --exists libvirt 2>/dev/null; then
    # The Python binding must not be newer than the C library it builds against.
    python3 -m pip install --quiet --disable-pip-version-check \
        "libvirt-python==$(pkg-config --modversion libvirt)"
    extras=test,libvirt
fi
python3 -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
if [ "$(id -u)" = 0 ] && command -v libvirtd >/dev/null && ! virsh -q -c qemu:///system version >/dev/null 2>&1; then
    # Started for this run, and stopped however pytest ends; the exit status stays pytest's.
    trap 'status=$?; bash scripts/libvirtd.sh stop; exit $status' EXIT
    bash scripts/libvirtd.sh start || echo "libvirtd did not start: the QEMU tests fail under CI=true" >&2
fi
python3 -m pytest "$@"
