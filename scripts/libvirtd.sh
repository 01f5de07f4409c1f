#!/usr/bin/env bash
# Start or stop a libvirtd with the QEMU driver for the tests: `libvirtd.sh start|stop`.
#
# There is no systemd here, so this does what the Debian units would: it creates
# the log folder, the kvm and libvirt-qemu groups and the libvirt-qemu user
# (libvirtd refuses to start without it), lets the kvm group open /dev/kvm when
# the machine has one (else every guest start probes QEMU again, 4 s instead of
# 0.3 s), then runs virtlogd and libvirtd as daemons and waits until
# `qemu:///system` answers.  `stop` ends the two daemons by their pid files.
# As root only; elsewhere `start` says why and exits 1.
set -euo pipefail

pids=(/run/libvirtd.pid /run/virtlogd.pid)

stop() {
    local pidfile pid
    for pidfile in "${pids[@]}"; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$pidfile"
    done
}

start() {
    if [ "$(id -u)" != 0 ]; then
        echo "libvirtd.sh: starting libvirtd needs root" >&2
        exit 1
    fi
    mkdir -p /var/log/libvirt /run/libvirt
    getent group kvm >/dev/null || groupadd --system kvm
    getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
    getent passwd libvirt-qemu >/dev/null || useradd --system --gid libvirt-qemu --groups kvm \
        --home-dir /var/lib/libvirt --no-create-home --shell /usr/sbin/nologin libvirt-qemu
    if [ -e /dev/kvm ]; then
        chgrp kvm /dev/kvm && chmod 660 /dev/kvm
    fi
    [ -f /run/virtlogd.pid ] && kill -0 "$(cat /run/virtlogd.pid)" 2>/dev/null || virtlogd -d
    [ -f /run/libvirtd.pid ] && kill -0 "$(cat /run/libvirtd.pid)" 2>/dev/null || libvirtd -d
    # The first connection probes QEMU's capabilities: several seconds.
    for _ in $(seq 120); do
        virsh -q -c qemu:///system version >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "libvirtd.sh: libvirtd did not answer at qemu:///system within 60 s" >&2
    exit 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
