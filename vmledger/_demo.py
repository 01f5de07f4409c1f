"""`vmledger demo`: play the README's story in a fresh ledger and print a report."""

from __future__ import annotations

import os
import tempfile

import vmledger

__all__ = ["run_demo"]

GiB, MiB = 2**30, 2**20


def _say(text: str) -> None:
    print(f"\n$ {text}")


async def _story(ledger: vmledger.Ledger) -> None:
    from vmledger.cli import _print_request

    sim = ledger.hypervisor
    _say("define web --type pv --memory 1GiB --max-memory 4GiB --vcpus 2 --max-vcpus 4 --cdrom hdc")
    await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4,
                        cdroms={"hdc": ""}, principal="alice")
    _say("define db --type hvm --memory 2GiB --max-memory 8GiB --vcpus 4 --max-vcpus 8")
    await ledger.define("db", guest_type="hvm", memory=2 * GiB, max_memory=8 * GiB, vcpus=4, max_vcpus=8,
                        principal="alice")
    _say("start web; start db")
    await ledger.start("web", principal="alice")
    await ledger.start("db", principal="alice")
    _say("sim host-free 100MiB   # the host is short of memory")
    await sim.set_host_free(100 * MiB)
    steps = [
        ("set web memory 1224MiB", ("web", "memory", 1224 * MiB), {"principal": "alice", "reason": "more cache"}),
        ("set db memory 3GiB --scope both", ("db", "memory", 3 * GiB), {"principal": "bob"}),
    ]
    for text, args, kw in steps:
        _say(text)
        _print_request(await ledger.set(*args, **kw))
    _say("sim capability db memory_hotplug on; set db memory 3GiB --scope live")
    await sim.set_capability("db", "memory_hotplug", True)
    await sim.set_host_free(4 * GiB)
    _print_request(await ledger.set("db", "memory", 3 * GiB, scope="live", principal="bob"))
    _say("set web max_memory 8GiB --scope persistent")
    _print_request(await ledger.set("web", "max_memory", 8 * GiB, scope="persistent", principal="carol"))
    _say("sim lock-tray web hdc; set web media:hdc /iso/install.iso")
    await sim.lock_tray("web", "hdc")
    _print_request(await ledger.set("web", "media:hdc", "/iso/install.iso", principal="carol"))
    _say("sim unlock-tray web hdc; set web media:hdc /iso/install.iso")
    await sim.unlock_tray("web", "hdc")
    _print_request(await ledger.set("web", "media:hdc", "/iso/install.iso", principal="carol"))
    _say("set web power_state off")
    _print_request(await ledger.set("web", "power_state", "off", principal="mallory"))
    _say("sim balloon db 2560MiB   # somebody changes the live VM behind the ledger's back; observe db")
    await sim.balloon("db", 2560 * MiB)
    for rec in await ledger.observe("db"):
        print(f"    recorded #{rec.position} {rec.type}")


async def _report(ledger: vmledger.Ledger) -> None:
    from vmledger.cli import _print_drift, _print_show

    print("\n================ report ================")
    for view in await ledger.domains():
        print()
        _print_show(view)
    print("\n-- drift (live differs from persistent) --")
    _print_drift(await ledger.drift())
    print("\n-- history --")
    from vmledger.cli import _print_request

    for record in await ledger.history():
        _print_request(record)
    head = await ledger.verify()
    print(f"\nverify: {head} events, hash chain intact, projections equal a rebuild")


async def run_demo(db: str | None) -> int:
    """Play the story in `db` (or a fresh temporary ledger) and print the report; return 0."""
    with tempfile.TemporaryDirectory(prefix="vmledger-demo-") as tmp:
        url = db or os.path.join(tmp, "demo.db")
        print(f"vmledger demo: ledger {url}, simulated hypervisor")
        async with vmledger.open(url, hypervisor_timeout=5.0) as ledger:
            await _story(ledger)
            await _report(ledger)
    return 0
