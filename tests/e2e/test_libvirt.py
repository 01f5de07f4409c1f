"""The ledger in front of real libvirt, through libvirt's built-in test driver (no daemon, no mocks).

Each test opens its own `test:///…/libvirt-node.xml` connection, and so gets a
fresh in-memory copy of that node: `web` runs with CD-ROM `hdc`, `db` runs with
two NUMA cells and no balloon, `batch` is shut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import pathlib
import re
import sys
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from tests.e2e.libvirt_support import require_libvirt, until, watching

libvirt = require_libvirt("the libvirt tests")

import vmledger
from vmledger.adapters.libvirt import INSTALL_HINT, LibvirtHypervisor
from vmledger.eventstore.catalogue import Reason
from vmledger.eventstore.errors import HypervisorError, InvalidRequestError
from vmledger.eventstore.events import LiveValueObserved, MediaTrayLocked
from vmledger.eventstore.hypervisor import DomainSpec, LiveResult, Observation
from vmledger.eventstore.log import Metadata
from vmledger import Ledger
from vmledger.ledger import default_principal

KiB, MiB, GiB = 2**10, 2**20, 2**30
NODE = pathlib.Path(__file__).resolve().parent.parent / "data" / "libvirt-node.xml"
URI = "test://" + str(NODE)
LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG
INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE

WEB = {"max_memory": 4 * GiB, "max_vcpus": 4, "media:hdc": "/srv/iso/install.iso",
       "memory": 1 * GiB, "numa_nodes": 1, "vcpus": 2}
DB = {"max_memory": 8 * GiB, "max_vcpus": 4, "memory": 2 * GiB, "numa_nodes": 2, "vcpus": 2}
BATCH = {"max_memory": 2 * GiB, "max_vcpus": 2, "memory": 1 * GiB, "numa_nodes": 1, "vcpus": 2}


@contextlib.asynccontextmanager
async def session(tmp_path: pathlib.Path, uri: str) -> AsyncIterator[tuple[Ledger, LibvirtHypervisor, Any]]:
    """Yield a fresh ledger in front of libvirt at `uri`, every domain adopted, and the connection."""
    hv = LibvirtHypervisor(uri, timeout=10.0, settle=0.5)
    async with vmledger.open(f"sqlite:///{tmp_path}/ledger.db", hypervisor=hv) as ledger:
        await ledger.adopt_all()
        yield ledger, hv, await hv.connection()


def run(tmp_path: pathlib.Path, scenario: Callable[[Ledger, LibvirtHypervisor, Any], Awaitable[None]],
        uri: str = URI) -> None:
    """Run one scenario on a fresh session, then check that the ledger mirrors libvirt."""

    async def main() -> None:
        async with session(tmp_path, uri) as (ledger, hv, conn):
            await scenario(ledger, hv, conn)
            await assert_mirrors(ledger, hv)

    asyncio.run(main())


async def assert_mirrors(ledger: Ledger, hv: LibvirtHypervisor) -> None:
    """Assert that every domain's persistent projection is libvirt's inactive config and its live one the live state."""
    for view in await ledger.domains():
        name = view["domain"]
        persistent = {p["property"]: p["persistent"] for p in view["properties"] if p["persistent"] is not None}
        live = {p["property"]: p["live"] for p in view["properties"] if p["live"] is not None}
        observation = await hv.observe(name)
        assert (name, persistent) == (name, dict(await hv.inactive_config(name)))
        assert (name, view["power_state"], live) == (
            name, "running" if observation.running else "shut off", dict(observation.live))


def kib_in(xml: str, element: str) -> int:
    """Return the number in `<element unit='KiB'>N</element>` of a domain XML."""
    found = re.search(rf"<{element} unit='KiB'>(\d+)</{element}>", xml)
    assert found is not None, xml
    return int(found.group(1))


def outcome(record: dict[str, Any], scope: str) -> tuple:
    """Return (status, value, reason, message) of one scope of a history record."""
    o = record["outcomes"][scope]
    return o["status"], o["value"], o["reason"], o["message"]


def drift(rows: list[dict[str, Any]]) -> list[tuple]:
    """Return (domain, property, persistent, live, cause) of drift rows."""
    return [(d["domain"], d["property"], d["persistent"], d["live"], d["cause"]) for d in rows]


def test_adopt_records_libvirt_domains(tmp_path: pathlib.Path) -> None:
    """Adopting the node records each domain's inactive config, and the live config of those that run."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        views = {v["domain"]: v for v in await ledger.domains()}
        assert sorted(views) == ["batch", "db", "web"]
        got = {n: ({p["property"]: p["persistent"] for p in v["properties"]},
                   {p["property"]: p["live"] for p in v["properties"] if p["live"] is not None},
                   v["power_state"], v["guest_type"], v["capabilities"]) for n, v in views.items()}
        unknown = {"memory_hotplug": None, "vcpu_hotplug": None}
        assert got == {
            "web": (WEB, WEB, "running", "hvm", {"balloon": True, **unknown}),
            "db": (DB, DB, "running", "hvm", {"balloon": False, **unknown}),
            "batch": (BATCH, {}, "shut off", "hvm", {"balloon": None, **unknown}),
        }
        assert views["web"]["uuid"] == "e1c5b6a23d4f4a8b9c0d1e2f3a4b5c6d"
        assert await ledger.drift() == []

    run(tmp_path, scenario)


def test_two_ledgers_adopting_all_at_once_adopt_each_domain_once(tmp_path: pathlib.Path) -> None:
    """Two `adopt --all` at once on one ledger: each domain is adopted by one of them, and neither fails.

    The two connections are two copies of one test node: the same domains, by name and UUID, as two
    processes in front of one libvirtd see.
    """
    async def main() -> tuple[list[str], list[str]]:
        url = f"sqlite:///{tmp_path}/ledger.db"
        async with (vmledger.open(url, hypervisor=LibvirtHypervisor(URI, timeout=10.0)) as one,
                    vmledger.open(url, hypervisor=LibvirtHypervisor(URI, timeout=10.0)) as two):
            adopted = await asyncio.gather(one.adopt_all(), two.adopt_all())
            defined = [rec.stream async for rec in one.log.read_all() if type(rec.event).__name__ == "DomainDefined"]
            return sorted(v["domain"] for views in adopted for v in views), defined

    adopted, defined = asyncio.run(main())
    assert adopted == ["batch", "db", "web"] and len(defined) == len(set(defined)) == 3


def test_default_test_driver_domain_is_adopted(tmp_path: pathlib.Path) -> None:
    """The stock `test:///default` node's one domain is adopted running, with libvirt's values."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        view = await ledger.show("test")
        assert (view["uuid"], view["guest_type"], view["power_state"]) == (
            "6695eb01f6a4830479aa97f2502e193f", "hvm", "running")
        assert {p["property"]: (p["persistent"], p["live"]) for p in view["properties"]} == {
            "max_memory": (8 * GiB, 8 * GiB), "max_vcpus": (2, 2), "memory": (2 * GiB, 2 * GiB),
            "numa_nodes": (1, 1), "vcpus": (2, 2)}

    run(tmp_path, scenario, "test:///default")


def test_persistent_max_memory_reaches_inactive_xml(tmp_path: pathlib.Path) -> None:
    """A persistent max_memory change lands in libvirt's inactive XML and drifts requires_restart until a restart."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        record = await ledger.set("web", "max_memory", 6 * GiB, scope="persistent")
        assert outcome(record, "persistent") == ("applied", 6 * GiB, None, None)
        web = conn.lookupByName("web")
        assert (kib_in(web.XMLDesc(INACTIVE), "memory"), kib_in(web.XMLDesc(0), "memory")) == (
            6 * GiB // KiB, 4 * GiB // KiB)
        assert drift(await ledger.drift("web")) == [("web", "max_memory", 6 * GiB, 4 * GiB, "requires_restart")]
        await ledger.stop("web")
        await ledger.start("web")
        assert (kib_in(web.XMLDesc(0), "memory"), await ledger.drift("web")) == (6 * GiB // KiB, [])

    run(tmp_path, scenario)


def test_persistent_maxima_and_vcpus_reach_inactive_xml(tmp_path: pathlib.Path) -> None:
    """Persistent max_vcpus, vcpus and memory changes on a stopped domain land in libvirt's inactive XML."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        for prop, value in (("max_vcpus", 6), ("vcpus", 5), ("max_memory", 3 * GiB), ("memory", 3 * GiB)):
            record = await ledger.set("batch", prop, value)
            assert (prop, list(record["outcomes"]), outcome(record, "persistent")) == (
                prop, ["persistent"], ("applied", value, None, None))
        xml = conn.lookupByName("batch").XMLDesc(INACTIVE)
        assert (re.search(r"<vcpu[^>]*>", xml).group(0), kib_in(xml, "memory"), kib_in(xml, "currentMemory")) == (
            "<vcpu placement='static' current='5'>", 3 * GiB // KiB, 3 * GiB // KiB)
        assert re.search(r"<vcpu[^>]*>(\d+)</vcpu>", xml).group(1) == "6"

    run(tmp_path, scenario)


def test_persistent_change_libvirt_refuses_is_recorded_failed(tmp_path: pathlib.Path) -> None:
    """libvirt's refusal to resize a NUMA domain's memory is recorded as a failed persistent change with its message."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        record = await ledger.set("db", "max_memory", 10 * GiB, scope="persistent")
        assert outcome(record, "persistent") == (
            "failed", 8 * GiB, "hypervisor_error",
            "Requested operation is not valid: initial memory size of a domain with NUMA nodes "
            "cannot be modified with this API (VIR_ERR_OPERATION_INVALID, code 55)")
        assert kib_in(conn.lookupByName("db").XMLDesc(INACTIVE), "memory") == 8 * GiB // KiB

    run(tmp_path, scenario)


def test_persistent_change_out_of_libvirts_range_is_recorded_refused(tmp_path: pathlib.Path) -> None:
    """A size not in whole KiB, or a value past a bound lowered behind the ledger's back, is refused out_of_range,
    as the same live change is, and libvirt's config keeps its value."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        record = await ledger.set("batch", "memory", GiB + 1, scope="persistent")
        assert outcome(record, "persistent") == ("refused", 1 * GiB, "out_of_range",
                                                 f"libvirt sizes memory in KiB; {GiB + 1} bytes is not a whole number of KiB")
        conn.lookupByName("batch").setVcpusFlags(1, CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
        record = await ledger.set("batch", "vcpus", 2, scope="persistent")
        assert outcome(record, "persistent")[:3] == ("refused", 2, "out_of_range")
        assert "VIR_ERR_INVALID_ARG" in outcome(record, "persistent")[3]
        xml = conn.lookupByName("batch").XMLDesc(INACTIVE)
        assert (kib_in(xml, "currentMemory"), re.search(r"<vcpu[^>]*>", xml).group(0)) == (
            GiB // KiB, "<vcpu placement='static'>")
        await ledger.observe("batch")  # the maximum lowered behind the ledger's back, for assert_mirrors

    run(tmp_path, scenario)


def test_persistent_numa_nodes_redefine_the_topology(tmp_path: pathlib.Path) -> None:
    """A persistent numa_nodes change redefines the inactive XML with that many even cells."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        record = await ledger.set("web", "numa_nodes", 2, scope="persistent")
        assert outcome(record, "persistent") == ("applied", 2, None, None)
        cells = re.findall(r"<cell [^>]*>", conn.lookupByName("web").XMLDesc(INACTIVE))
        assert cells == ["<cell id='0' cpus='0-1' memory='2097152' unit='KiB'/>",
                         "<cell id='1' cpus='2-3' memory='2097152' unit='KiB'/>"]
        record = await ledger.set("db", "numa_nodes", 1, scope="persistent")
        assert (outcome(record, "persistent"), "<numa>" in conn.lookupByName("db").XMLDesc(INACTIVE)) == (
            ("applied", 1, None, None), False)

    run(tmp_path, scenario)


def test_live_max_memory_refused_requires_restart(tmp_path: pathlib.Path) -> None:
    """A live max_memory change is recorded refused requires_restart with libvirt's own message."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        record = await ledger.set("web", "max_memory", 8 * GiB, scope="live")
        assert outcome(record, "live") == (
            "refused", 4 * GiB, "requires_restart",
            "Requested operation is not valid: cannot resize the maximum memory on an active domain "
            "(VIR_ERR_OPERATION_INVALID, code 55)")
        assert await hv.apply_live("web", "max_memory", 8 * GiB) == LiveResult.refused(
            4 * GiB, Reason.REQUIRES_RESTART,
            "Requested operation is not valid: cannot resize the maximum memory on an active domain "
            "(VIR_ERR_OPERATION_INVALID, code 55)")
        assert await hv.apply_live("web", "max_vcpus", 8) == LiveResult.refused(
            4, Reason.REQUIRES_RESTART,
            "Flag 'VIR_DOMAIN_AFFECT_CONFIG' is required by flag 'VIR_DOMAIN_VCPU_MAXIMUM' "
            "(VIR_ERR_INVALID_ARG, code 8)")
        assert kib_in(conn.lookupByName("web").XMLDesc(0), "memory") == 4 * GiB // KiB

    run(tmp_path, scenario)


def test_live_memory_above_max_refused_out_of_range(tmp_path: pathlib.Path) -> None:
    """Live memory above the maximum is refused out_of_range: by the ledger, and by libvirt with its own message."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        record = await ledger.set("web", "memory", 5 * GiB, scope="live")
        assert outcome(record, "live") == ("refused", 1 * GiB, "out_of_range", "memory 5GiB exceeds max_memory 4GiB")
        assert await hv.apply_live("web", "memory", 5 * GiB) == LiveResult.refused(
            1 * GiB, Reason.OUT_OF_RANGE,
            "invalid argument: cannot set memory higher than max memory (VIR_ERR_INVALID_ARG, code 8)")
        assert await hv.apply_live("web", "vcpus", 5) == LiveResult.refused(
            2, Reason.OUT_OF_RANGE,
            "invalid argument: requested cpu amount exceeds maximum (5 > 4) (VIR_ERR_INVALID_ARG, code 8)")
        assert conn.lookupByName("web").info()[2:4] == [1 * GiB // KiB, 2]

    run(tmp_path, scenario)


def test_live_change_on_stopped_domain_refused(tmp_path: pathlib.Path) -> None:
    """A live change on a stopped domain is refused domain_not_running, with libvirt's message when stopped behind the ledger's back."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        record = await ledger.set("batch", "memory", 2 * GiB, scope="live")
        assert outcome(record, "live") == ("refused", None, "domain_not_running", "domain 'batch' is not running")
        conn.lookupByName("web").destroy()
        record = await ledger.set("web", "vcpus", 3, scope="live")
        assert outcome(record, "live") == (
            "refused", 2, "domain_not_running",
            "Requested operation is not valid: domain is not running (VIR_ERR_OPERATION_INVALID, code 55)")
        assert [r.event.name for r in await ledger.observe("web")] == ["DomainStopped"]

    run(tmp_path, scenario)


def test_cdrom_media_change_refused_with_driver_message(tmp_path: pathlib.Path) -> None:
    """A media change the test driver cannot make live is recorded refused with its message; the inactive XML takes it."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        record = await ledger.set("web", "media:hdc", "/srv/iso/rescue.iso")
        assert outcome(record, "persistent") == ("applied", "/srv/iso/rescue.iso", None, None)
        assert outcome(record, "live") == (
            "refused", "/srv/iso/install.iso", "guest_unsupported",
            "this function is not supported by the connection driver: virDomainUpdateDeviceFlags "
            "(VIR_ERR_NO_SUPPORT, code 3)")
        web = conn.lookupByName("web")
        assert ("<source file='/srv/iso/install.iso'/>" in web.XMLDesc(0),
                "<source file='/srv/iso/rescue.iso'/>" in web.XMLDesc(INACTIVE)) == (True, True)
        assert drift(await ledger.drift("web")) == [
            ("web", "media:hdc", "/srv/iso/rescue.iso", "/srv/iso/install.iso", "refused")]
        record = await ledger.set("web", "media:hdc", "", scope="persistent")
        assert outcome(record, "persistent") == ("applied", "", None, None)
        assert "<source" not in re.search(r"<disk type='file' device='cdrom'>.*?</disk>",
                                          web.XMLDesc(INACTIVE), re.S).group(0)

    run(tmp_path, scenario)


def test_live_vcpus_and_memory_apply(tmp_path: pathlib.Path) -> None:
    """Live vCPU and memory changes apply, and libvirt reports the new values live and in the inactive XML."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        record = await ledger.set("web", "vcpus", 3)
        assert (outcome(record, "persistent"), outcome(record, "live")) == (
            ("applied", 3, None, None), ("applied", 3, None, None))
        record = await ledger.set("web", "memory", 2 * GiB, scope="live")
        assert outcome(record, "live") == ("applied", 2 * GiB, None, None)
        web = conn.lookupByName("web")
        assert (web.vcpusFlags(LIVE), web.info()[2:4], web.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG)) == (
            3, [2 * GiB // KiB, 3], 3)
        assert drift(await ledger.drift("web")) == [("web", "memory", 1 * GiB, 2 * GiB, "live_only")]

    run(tmp_path, scenario)


def test_external_memory_change_observed_as_drift(tmp_path: pathlib.Path) -> None:
    """Memory changed through libvirt behind the ledger's back shows as external drift after observe."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        conn.lookupByName("web").setMemoryFlags(1536 * MiB // KiB, LIVE)
        recorded = await ledger.observe()
        assert [(r.event.name, r.event.property, r.event.value) for r in recorded] == [
            ("LiveValueObserved", "memory", 1536 * MiB)]
        assert drift(await ledger.drift()) == [("web", "memory", 1 * GiB, 1536 * MiB, "external")]
        assert await ledger.observe() == []

    run(tmp_path, scenario)


def test_a_driver_that_cannot_tell_tray_locks_leaves_the_locks_the_log_has(tmp_path: pathlib.Path) -> None:
    """libvirt's test driver says nothing of tray locks: its observation says so, and observe keeps a lock the log has."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        seen = await hv.observe("web")
        assert (seen.running, seen.locked_trays, seen.trays_known) == (True, frozenset(), False)
        state = await ledger._state("web")  # a lock recorded as a QEMU guest's would be
        await ledger.log.append(state.uuid, state.version, [MediaTrayLocked(device="hdc")], Metadata(principal="test"),
                                now=datetime.now(timezone.utc))
        assert await ledger.observe("web") == []
        assert (await ledger.show("web"))["locked_trays"] == ["hdc"]

    run(tmp_path, scenario)


def test_external_config_change_observed_into_the_persistent_projection(tmp_path: pathlib.Path) -> None:
    """Inactive config changed through libvirt behind the ledger's back is recorded by observe, drifts external while running, and boots."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        web, batch = conn.lookupByName("web"), conn.lookupByName("batch")
        web.setMemoryFlags(6 * GiB // KiB, CONFIG | libvirt.VIR_DOMAIN_MEM_MAXIMUM)
        web.setMemoryFlags(3 * GiB // KiB, CONFIG)
        web.setVcpusFlags(3, CONFIG)
        batch.setMaxMemory(3 * GiB // KiB)
        batch.setVcpusFlags(4, CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
        recorded = await ledger.observe()
        assert [(r.event.name, r.event.property, r.event.value) for r in recorded] == [
            ("PersistentValueObserved", "max_memory", 3 * GiB), ("PersistentValueObserved", "max_vcpus", 4),
            ("PersistentValueObserved", "max_memory", 6 * GiB), ("PersistentValueObserved", "memory", 3 * GiB),
            ("PersistentValueObserved", "vcpus", 3)]
        assert drift(await ledger.drift()) == [
            ("web", "max_memory", 6 * GiB, 4 * GiB, "external"), ("web", "memory", 3 * GiB, 1 * GiB, "external"),
            ("web", "vcpus", 3, 2, "external")]
        assert await ledger.observe() == []
        await assert_mirrors(ledger, hv)
        await ledger.stop("web")
        await ledger.start("web")
        assert (drift(await ledger.drift()), web.info()[1:4]) == ([], [6 * GiB // KiB, 3 * GiB // KiB, 3])

    run(tmp_path, scenario)


def test_lifecycle_notification_reaches_the_ledger(tmp_path: pathlib.Path) -> None:
    """A domain stopped behind the ledger's back arrives as a lifecycle notification; the test driver sends no balloon one."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        async with hv.notifications() as events:
            web = conn.lookupByName("web")
            await asyncio.to_thread(web.setMemoryFlags, 1536 * MiB // KiB, LIVE)
            await asyncio.to_thread(web.destroy)
            async with asyncio.timeout(5):
                domain, kind, detail = await anext(events)
        assert (domain, kind, detail) == ("web", "lifecycle", "stopped")
        assert [r.event.name for r in await ledger.observe(domain)] == ["DomainStopped"]

    run(tmp_path, scenario)


async def watch_began(ledger: Ledger, conn: Any) -> None:
    """Change web's live vCPUs behind the ledger's back and wait until the watch's start pass records it.

    `web` sorts last, so once it is recorded the start pass is over; the test
    driver announces no vCPU change, so only an observation can record it.
    """
    await asyncio.to_thread(conn.lookupByName("web").setVcpusFlags, 3, LIVE)
    await until(lambda: _drift_of(ledger, "web"), [("web", "vcpus", 2, 3, "external")])


async def _drift_of(ledger: Ledger, name: str) -> list[tuple]:
    return drift(await ledger.drift(name))


def test_watch_start_pass_records_a_change_made_before_it(tmp_path: pathlib.Path) -> None:
    """A memory change made through libvirt before watch starts is recorded by watch's start pass, with no sweep due."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        conn.lookupByName("web").setMemoryFlags(1536 * MiB // KiB, LIVE)
        async with watching(ledger, interval=3600):
            await until(lambda: _drift_of(ledger, "web"), [("web", "memory", 1 * GiB, 1536 * MiB, "external")])
        assert [(r.type, r.metadata.principal) async for r in ledger.events(from_position=5)] == [
            ("LiveValueObserved", default_principal())]

    run(tmp_path, scenario)


def test_watch_sweep_records_a_change_the_driver_never_announces(tmp_path: pathlib.Path) -> None:
    """Memory changed through libvirt while watch runs shows as external drift with libvirt's value, without observe (issue 3)."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        async with watching(ledger, interval=0.2):
            await watch_began(ledger, conn)
            await asyncio.to_thread(conn.lookupByName("web").setMemoryFlags, 1536 * MiB // KiB, LIVE)
            took = await until(lambda: _drift_of(ledger, "web"), [
                ("web", "memory", 1 * GiB, 1536 * MiB, "external"), ("web", "vcpus", 2, 3, "external")])
        assert took < 2.0
        assert [r.event async for r in ledger.events(from_position=5)] == [
            LiveValueObserved(property="vcpus", value=3, previous=2),
            LiveValueObserved(property="memory", value=1536 * MiB, previous=1 * GiB)]

    run(tmp_path, scenario)


def test_watch_records_a_domain_stopped_outside_as_announced(tmp_path: pathlib.Path) -> None:
    """A domain destroyed through libvirt while watch runs is recorded stopped from libvirt's lifecycle event, with no sweep due."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        async with watching(ledger, interval=3600):
            await watch_began(ledger, conn)
            await asyncio.to_thread(conn.lookupByName("web").destroy)
            await until(lambda: _power_state(ledger, "web"), "shut off")
        assert [r.type async for r in ledger.events(from_position=5)] == ["LiveValueObserved", "DomainStopped"]

    run(tmp_path, scenario)


async def _power_state(ledger: Ledger, name: str) -> str:
    return (await ledger.show(name))["power_state"]


def test_watch_records_a_domain_undefined_outside_and_goes_on(tmp_path: pathlib.Path) -> None:
    """A domain undefined behind the ledger's back is recorded undefined once, and the sweeps go on recording others (issue 16)."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        batch = conn.lookupByName("batch")
        xml = batch.XMLDesc(INACTIVE)
        async with watching(ledger, interval=0.1):
            await watch_began(ledger, conn)
            await asyncio.to_thread(batch.undefine)
            await until(lambda: _names(ledger), ["db", "web"])
            await asyncio.to_thread(conn.lookupByName("web").setMemoryFlags, 1536 * MiB // KiB, LIVE)
            await until(lambda: _drift_of(ledger, "web"), [
                ("web", "memory", 1 * GiB, 1536 * MiB, "external"), ("web", "vcpus", 2, 3, "external")])
        await asyncio.to_thread(conn.defineXML, xml)  # back, so that the node is as it was
        assert [r.type async for r in ledger.events(from_position=5)] == [
            "LiveValueObserved", "DomainUndefined", "LiveValueObserved"]

    run(tmp_path, scenario)


async def _names(ledger: Ledger) -> list[str]:
    return [v["domain"] for v in await ledger.domains()]


def test_watch_refuses_an_interval_that_is_not_a_positive_number_of_seconds(tmp_path: pathlib.Path) -> None:
    """watch raises InvalidRequestError for an interval of 0, -1, nan or inf, or one that is no number, before watching."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        messages = []
        for interval in (0, -1.0, math.nan, math.inf, "60", True):
            with pytest.raises(InvalidRequestError) as raised:
                await ledger.watch(interval=interval)  # type: ignore[arg-type]
            messages.append(str(raised.value))
        assert messages == [f"the watch interval must be a finite number of seconds above 0, not {v}"
                            for v in ("0", "-1.0", "nan", "inf", "'60'", "True")]

    run(tmp_path, scenario)


def test_define_start_stop_undefine(tmp_path: pathlib.Path) -> None:
    """A domain defined through the ledger exists in libvirt with that config, and starts, stops and goes."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        await ledger.define("app", guest_type="pv", memory=512 * MiB, max_memory=2 * GiB, vcpus=1,
                            max_vcpus=2, numa_nodes=2, cdroms={"hdc": "", "hdd": "/srv/iso/tools.iso"})
        expected = {"max_memory": 2 * GiB, "max_vcpus": 2, "media:hdc": "", "media:hdd": "/srv/iso/tools.iso",
                    "memory": 512 * MiB, "numa_nodes": 2, "vcpus": 1}
        assert (dict(await hv.inactive_config("app")), await hv.guest_type("app")) == (expected, "pv")
        view = await ledger.start("app")
        assert (view["power_state"], {p["property"]: p["live"] for p in view["properties"]}) == ("running", expected)
        await assert_mirrors(ledger, hv)
        await ledger.stop("app")
        assert conn.lookupByName("app").isActive() == 0
        await ledger.undefine("app")
        assert await hv.list_domains() == ["batch", "db", "web"]

    run(tmp_path, scenario)


def test_lifecycle_errors_raise_hypervisor_error(tmp_path: pathlib.Path) -> None:
    """A lifecycle call libvirt refuses raises HypervisorError carrying libvirt's message and code; observe reports an unknown domain undefined."""

    async def scenario(ledger: Ledger, hv: LibvirtHypervisor, conn: Any) -> None:
        with pytest.raises(HypervisorError) as raised:
            await hv.stop("batch")
        assert str(raised.value) == "Requested operation is not valid: domain is not running (VIR_ERR_OPERATION_INVALID, code 55)"
        with pytest.raises(HypervisorError) as raised:
            await hv.start("nope")
        assert str(raised.value) == (
            f"libvirt at {URI} has no domain 'nope': Domain not found (VIR_ERR_NO_DOMAIN, code 42)")
        assert await hv.observe("nope") == Observation(defined=False, running=False, live=(), capabilities=())
        with pytest.raises(HypervisorError) as raised:
            await hv.define(DomainSpec(name="odd", uuid="x", guest_type="hvm", capabilities=(),
                                       config=(("max_memory", 1000), ("memory", 1000), ("max_vcpus", 1), ("vcpus", 1))))
        assert str(raised.value) == "libvirt sizes memory in KiB; 1000 bytes is not a whole number of KiB"

    run(tmp_path, scenario)


def test_ping_answers_while_libvirt_answers_and_raises_when_it_cannot_be_reached(tmp_path: pathlib.Path) -> None:
    """`ping` (the readiness probe) returns on a reachable libvirt and raises HypervisorError on one it cannot open."""
    async def main() -> str:
        reachable, missing = LibvirtHypervisor(URI, timeout=10.0), LibvirtHypervisor(
            f"test://{tmp_path}/no-such-node.xml", timeout=10.0)
        try:
            assert await reachable.ping() is None
            with pytest.raises(HypervisorError) as raised:
                await missing.ping()
            return str(raised.value)
        finally:
            await reachable.aclose()
            await missing.aclose()

    assert "no-such-node.xml" in asyncio.run(main())


def test_missing_libvirt_python_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without libvirt-python the adapter raises HypervisorError naming the install commands."""
    monkeypatch.setitem(sys.modules, "libvirt", None)
    with pytest.raises(HypervisorError) as raised:
        LibvirtHypervisor(URI)
    assert str(raised.value) == f"the libvirt hypervisor needs libvirt-python; {INSTALL_HINT}"
