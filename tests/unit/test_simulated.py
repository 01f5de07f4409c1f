"""The simulated hypervisor: live changes, the host pool, trays, faults and the shared file."""

from __future__ import annotations

import asyncio
import json

import pytest

from vmledger.adapters import simulated
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.eventstore.catalogue import Reason
from vmledger.eventstore.errors import (
    HypervisorError, HypervisorRefusedError, InvalidRequestError, UnknownDomainError, UnknownPropertyError,
)
from vmledger.eventstore.hypervisor import DomainSpec, LiveResult, Observation

GiB = 2**30
MiB = 2**20


def _spec(name: str = "web", guest_type: str = "pv", **caps: bool | None) -> DomainSpec:
    config = {
        "memory": 1 * GiB,
        "max_memory": 4 * GiB,
        "vcpus": 2,
        "max_vcpus": 4,
        "numa_nodes": 1,
        "media:hdc": "/iso/a.iso",
    }
    return DomainSpec(
        name=name,
        uuid="00000000-0000-4000-8000-000000000001",
        guest_type=guest_type,
        config=tuple(sorted(config.items())),
        capabilities=tuple(sorted(caps.items())),
    )


async def _running(
    path: object, guest_type: str = "pv", host_free: int = 8 * GiB, **caps: bool | None
) -> SimulatedHypervisor:
    sim = SimulatedHypervisor(path, host_free=host_free)
    await sim.define(_spec(guest_type=guest_type, **caps))
    await sim.start("web")
    return sim


async def _live(sim: SimulatedHypervisor, prop: str) -> object:
    return dict((await sim.observe("web")).live)[prop]


def test_pv_balloon_applies_in_full(tmp_path):
    """A PV memory increase within the free pool is applied and taken from the pool."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json")
        result = await sim.apply_live("web", "memory", 2 * GiB)
        return result, await _live(sim, "memory"), await sim.host_free()

    assert asyncio.run(scenario()) == (LiveResult.applied(2 * GiB), 2 * GiB, 6 * GiB)


def test_memory_increase_beyond_pool_is_partial(tmp_path):
    """A memory increase larger than the free pool obtains exactly current plus free, emptying it."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json", host_free=1 * GiB + 256 * MiB)
        result = await sim.apply_live("web", "memory", 3 * GiB)
        return result, await _live(sim, "memory"), await sim.host_free()

    expected = LiveResult.partial(1 * GiB + 256 * MiB, "host had only 256MiB free")
    assert asyncio.run(scenario()) == (expected, 1 * GiB + 256 * MiB, 0)


def test_memory_increase_with_empty_pool_is_partial_at_current(tmp_path):
    """A memory increase with no free host memory is partial at the current value."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json", host_free=1 * GiB)
        return await sim.apply_live("web", "memory", 2 * GiB), await sim.host_free()

    assert asyncio.run(scenario()) == (LiveResult.partial(1 * GiB, "host had only 0B free"), 0)


def test_hvm_memory_refused_until_hotplug_is_on(tmp_path):
    """An HVM memory change is refused as guest_unsupported, then applied once memory hotplug is on."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json", guest_type="hvm")
        refused = await sim.apply_live("web", "memory", 2 * GiB)
        await sim.set_capability("web", "memory_hotplug", True)
        return refused, await sim.apply_live("web", "memory", 2 * GiB)

    refused = LiveResult.refused(
        1 * GiB, Reason.GUEST_UNSUPPORTED, "guest has neither a balloon driver nor memory hotplug"
    )
    assert asyncio.run(scenario()) == (refused, LiveResult.applied(2 * GiB))


def test_spec_capability_overrides_guest_default(tmp_path):
    """A capability given in the spec replaces the guest type's default, None keeps it."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json", balloon=False, vcpu_hotplug=None)
        return (await sim.observe("web")).capabilities

    expected = (("balloon", False), ("memory_hotplug", False), ("vcpu_hotplug", True))
    assert asyncio.run(scenario()) == expected


def test_locked_tray_refuses_until_unlocked(tmp_path):
    """A media change is refused while the tray is locked and applied after unlocking."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json")
        await sim.lock_tray("web", "hdc")
        refused = await sim.apply_live("web", "media:hdc", "/iso/b.iso")
        await sim.unlock_tray("web", "hdc")
        return refused, await sim.apply_live("web", "media:hdc", "/iso/b.iso")

    refused = LiveResult.refused(
        "/iso/a.iso", Reason.TRAY_LOCKED, "the guest has locked the tray of hdc"
    )
    assert asyncio.run(scenario()) == (refused, LiveResult.applied("/iso/b.iso"))


def test_media_change_on_missing_device_is_not_removable(tmp_path):
    """A media change for a device the domain lacks is refused as not_removable."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json")
        return await sim.apply_live("web", "media:hdd", "/iso/b.iso")

    expected = LiveResult.refused(None, Reason.NOT_REMOVABLE, "no removable device hdd")
    assert asyncio.run(scenario()) == expected


def test_error_fault_fails_once(tmp_path):
    """An injected error fails the next live change of its property only."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json")
        await sim.inject_fault("web", "vcpus", "error")
        first = await sim.apply_live("web", "vcpus", 3)
        return first, await sim.apply_live("web", "vcpus", 3)

    failed = LiveResult.failed(2, Reason.HYPERVISOR_ERROR, "injected hypervisor error")
    assert asyncio.run(scenario()) == (failed, LiveResult.applied(3))


def test_timeout_fault_hangs_without_applying_and_is_consumed(tmp_path):
    """An injected timeout hangs until the caller's timeout, changes nothing and is used up."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json")
        await sim.inject_fault("web", "memory", "timeout")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await sim.apply_live("web", "memory", 2 * GiB)
        unchanged = await _live(sim, "memory")
        async with asyncio.timeout(5):  # a fault left in place would hang for an hour
            return unchanged, await sim.apply_live("web", "memory", 2 * GiB)

    assert asyncio.run(scenario()) == (1 * GiB, LiveResult.applied(2 * GiB))


def test_timeout_fault_fails_after_hanging(tmp_path):
    """An injected timeout that nobody cancels fails with reason timeout after hanging."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json")
        sim.hang_seconds = 0.0
        await sim.inject_fault("web", "vcpus", "timeout")
        return await sim.apply_live("web", "vcpus", 3), await _live(sim, "vcpus")

    failed = LiveResult.failed(2, Reason.TIMEOUT, "hypervisor did not answer")
    assert asyncio.run(scenario()) == (failed, 2)


def test_two_instances_share_the_state_file(tmp_path):
    """Two simulators on the same file see each other's changes."""

    async def scenario():
        first = await _running(tmp_path / "sim.json")
        second = SimulatedHypervisor(tmp_path / "sim.json", host_free=1)
        await second.balloon("web", 3 * GiB)
        await first.apply_live("web", "vcpus", 4)
        return await first.observe("web"), await second.observe("web"), await first.host_free()

    seen_by_first, seen_by_second, free = asyncio.run(scenario())
    assert (seen_by_first, dict(seen_by_second.live)["vcpus"], free) == (
        seen_by_second,
        4,
        5 * GiB,
    )


def test_a_save_cut_off_is_no_change_and_the_next_save_writes_the_file_whole(tmp_path):
    """A change cut off as it was appended (no newline) is left out; the next save replaces the file, and the
    file a whole save died writing (its fixed name beside the state) with it."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json")
        await sim.apply_live("web", "vcpus", 3)
        (tmp_path / ".sim.json.tmp").write_text('{"half a state')
        with open(tmp_path / "sim.json", "a") as f:
            f.write('{"host_free": 1, "domains": {"web": nul')
        fresh = SimulatedHypervisor(tmp_path / "sim.json")  # reads the file, not a cache
        before = dict((await fresh.observe("web")).live)["vcpus"], await fresh.host_free()
        await fresh.apply_live("web", "vcpus", 4)
        again = SimulatedHypervisor(tmp_path / "sim.json")
        return before, dict((await again.observe("web")).live)["vcpus"], (tmp_path / "sim.json").read_text()

    before, after, text = asyncio.run(scenario())
    assert before == (3, 7 * GiB) and after == 4
    assert text.count("\n") == 1 and text.endswith("\n") and "nul" not in text.replace("null", "")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".sim")) == []


def test_a_save_appends_what_it_changed_whatever_the_host_holds(tmp_path):
    """A change appends one line with the domain it changed: its cost does not grow with the domains defined."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json")
        for i in range(200):
            await sim.define(_spec(f"idle{i:03d}"))
        size = (tmp_path / "sim.json").stat().st_size
        await sim.apply_live("web", "vcpus", 3)
        lines = (tmp_path / "sim.json").read_text().splitlines()
        return size, (tmp_path / "sim.json").stat().st_size - size, lines[-1]

    size, grown, line = asyncio.run(scenario())
    assert size > 50_000 and grown == len(line) + 1 < 1_000
    assert json.loads(line)["domains"]["web"]["live"]["vcpus"] == 3


def test_the_changes_appended_are_folded_into_the_file_once_they_outgrow_the_state(tmp_path, monkeypatch):
    """Once the lines appended outgrow the state (and a slack), a save writes the file whole: a file holds at most
    about twice its state."""
    monkeypatch.setattr(simulated, "_SLACK", 0)

    async def scenario():
        sim = await _running(tmp_path / "sim.json")
        sizes = []
        for i in range(40):
            await sim.apply_live("web", "vcpus", 1 + i % 4)
            sizes.append((tmp_path / "sim.json").stat().st_size)
        fresh = SimulatedHypervisor(tmp_path / "sim.json")
        return sizes, await fresh.observe("web"), await sim.observe("web")

    sizes, seen_fresh, seen = asyncio.run(scenario())
    whole = [i for i in range(1, len(sizes)) if sizes[i] < sizes[i - 1]]
    assert len(whole) >= 2 and max(sizes) <= 2 * min(sizes) + 1_000
    assert seen_fresh == seen


def test_a_state_file_written_whole_in_any_layout_is_read_and_then_appended_to(tmp_path):
    """A state file of one JSON document, laid out in any way (by hand, or as earlier versions wrote it with no
    newline), is read; the first save writes it whole, the next appends."""
    path = tmp_path / "sim.json"

    async def scenario():
        await _running(path)
        state, _ = SimulatedHypervisor(path)._load()  # the state, whatever lines the file holds
        state["domains"]["web"]["live"]["vcpus"] = 4
        path.write_text(json.dumps(state, indent=2))
        sim = SimulatedHypervisor(path)
        vcpus = dict((await sim.observe("web")).live)["vcpus"]
        await sim.apply_live("web", "vcpus", 3)
        first = path.read_text()
        await sim.apply_live("web", "vcpus", 2)
        return vcpus, first, path.read_text(), dict((await SimulatedHypervisor(path).observe("web")).live)["vcpus"]

    vcpus, first, second, last = asyncio.run(scenario())
    assert vcpus == 4 and first.count("\n") == 1 and second.startswith(first) and second.count("\n") == 2
    assert last == 2


def test_a_damaged_line_within_the_state_file_is_a_clear_error(tmp_path):
    """A line that does not parse, with saves after it, is damage, not a change cut off: every call says so."""
    path = tmp_path / "sim.json"

    async def scenario():
        sim = await _running(path)
        await sim.apply_live("web", "vcpus", 3)
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join([*lines[:-1], "{oops\n", lines[-1]]))
        with pytest.raises(HypervisorError, match="simulator state .* is damaged"):
            await SimulatedHypervisor(path).observe("web")

    asyncio.run(scenario())


def test_for_database_puts_state_beside_database(tmp_path):
    """The simulator for a database keeps its state in `<db>.sim.json`."""

    async def scenario():
        sim = SimulatedHypervisor.for_database(tmp_path / "ledger.db")
        await sim.define(_spec())
        return sorted(p.name for p in tmp_path.iterdir())

    assert asyncio.run(scenario()) == ["ledger.db.sim.json", "ledger.db.sim.json.lock"]


def test_stop_returns_memory_to_pool(tmp_path):
    """Stopping a domain returns its live memory to the host pool."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json")
        await sim.apply_live("web", "memory", 3 * GiB)
        during = await sim.host_free()
        await sim.stop("web")
        return during, await sim.host_free()

    assert asyncio.run(scenario()) == (5 * GiB, 8 * GiB)


def test_start_without_enough_host_memory_fails(tmp_path):
    """Starting a domain whose memory exceeds the free pool raises HypervisorError."""

    async def scenario():
        sim = SimulatedHypervisor(tmp_path / "sim.json", host_free=512 * MiB)
        await sim.define(_spec())
        with pytest.raises(HypervisorError, match="not enough free host memory"):
            await sim.start("web")
        return (await sim.observe("web")).running, await sim.host_free()

    assert asyncio.run(scenario()) == (False, 512 * MiB)


def test_observe_reports_balloon(tmp_path):
    """Observe reports the live memory that balloon() set behind the ledger's back, beside the persistent config."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json")
        await sim.balloon("web", 512 * MiB)
        await sim.lock_tray("web", "hdc")
        return await sim.observe("web"), await sim.host_free()

    expected = Observation(
        running=True,
        live=(
            ("max_memory", 4 * GiB),
            ("max_vcpus", 4),
            ("media:hdc", "/iso/a.iso"),
            ("memory", 512 * MiB),
            ("numa_nodes", 1),
            ("vcpus", 2),
        ),
        capabilities=(("balloon", True), ("memory_hotplug", False), ("vcpu_hotplug", True)),
        locked_trays=frozenset({"hdc"}),
        persistent=(
            ("max_memory", 4 * GiB),
            ("max_vcpus", 4),
            ("media:hdc", "/iso/a.iso"),
            ("memory", 1 * GiB),
            ("numa_nodes", 1),
            ("vcpus", 2),
        ),
    )
    assert asyncio.run(scenario()) == (expected, 7 * GiB + 512 * MiB)


def test_live_change_of_stopped_domain_is_refused(tmp_path):
    """A live change of a stopped domain is refused as domain_not_running."""

    async def scenario():
        sim = SimulatedHypervisor(tmp_path / "sim.json")
        await sim.define(_spec())
        return await sim.apply_live("web", "memory", 2 * GiB)

    expected = LiveResult.refused(None, Reason.DOMAIN_NOT_RUNNING, "domain is not running")
    assert asyncio.run(scenario()) == expected


def test_fixed_and_computed_properties_are_refused(tmp_path):
    """Live changes of max_memory, power_state and an over-range vcpus are refused with their reasons."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json")
        return (
            (await sim.apply_live("web", "max_memory", 8 * GiB)).reason,
            (await sim.apply_live("web", "power_state", "shutoff")).reason,
            (await sim.apply_live("web", "vcpus", 5)).reason,
        )

    expected = (Reason.REQUIRES_RESTART, Reason.READ_ONLY, Reason.OUT_OF_RANGE)
    assert asyncio.run(scenario()) == expected


def test_bad_fault_kind_and_capability_are_invalid_requests(tmp_path):
    """An unknown fault kind or capability name raises InvalidRequestError."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json")
        with pytest.raises(InvalidRequestError, match="fault kind"):
            await sim.inject_fault("web", "memory", "crash")
        with pytest.raises(InvalidRequestError, match="unknown capability"):
            await sim.set_capability("web", "teleport", True)
        return (await sim.observe("web")).capabilities

    expected = (("balloon", True), ("memory_hotplug", False), ("vcpu_hotplug", True))
    assert asyncio.run(scenario()) == expected


def test_lifecycle_errors_raise_hypervisor_error(tmp_path):
    """Defining twice, undefining a running domain and stopping a stopped one raise HypervisorError."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json")
        with pytest.raises(HypervisorError, match="already defined"):
            await sim.define(_spec())
        with pytest.raises(HypervisorError, match="is running"):
            await sim.undefine("web")
        await sim.stop("web")
        with pytest.raises(HypervisorError, match="not running"):
            await sim.stop("web")
        await sim.undefine("web")
        with pytest.raises(HypervisorError, match="not defined"):
            await sim.observe("web")
        return await sim.host_free()

    assert asyncio.run(scenario()) == 8 * GiB


def test_state_file_that_cannot_be_written_is_a_hypervisor_error(tmp_path):
    """A state file the simulator cannot write (its directory gone, a full disk) raises HypervisorError, not OSError (issue #6)."""
    sim = SimulatedHypervisor(tmp_path / "gone" / "sim.json")
    with pytest.raises(HypervisorError) as caught:
        asyncio.run(sim.define(_spec()))
    assert str(caught.value) == (
        f"the simulator cannot keep its state in {tmp_path / 'gone' / 'sim.json'}: No such file or directory")


@pytest.mark.parametrize("perturb,error", [
    (lambda sim: sim.balloon("nope", GiB), UnknownDomainError),
    (lambda sim: sim.lock_tray("nope", "hdc"), UnknownDomainError),
    (lambda sim: sim.unlock_tray("web", "hdx"), UnknownPropertyError),
    (lambda sim: sim.set_capability("nope", "balloon", True), UnknownDomainError),
    (lambda sim: sim.inject_fault("nope", "memory", "error"), UnknownDomainError),
], ids=["balloon", "lock-tray", "unlock-tray-device", "capability", "fault"])
def test_perturbing_what_the_simulator_lacks_is_a_caller_error(tmp_path, perturb, error):
    """Perturbing an unknown domain or device is an invalid request (the CLI exits 2), not a hypervisor failure (issue #6)."""

    async def scenario():
        sim = await _running(tmp_path / "sim.json")
        with pytest.raises(error) as caught:
            await perturb(sim)
        return type(caught.value)

    assert asyncio.run(scenario()) is error


@pytest.mark.parametrize("prop, value, maximum", [("memory", 3 * GiB, ("max_memory", GiB)),
                                                  ("vcpus", 3, ("max_vcpus", 2)),
                                                  ("max_memory", GiB // 2, ("memory", GiB))])
def test_a_persistent_write_past_a_bound_changed_out_of_band_is_refused(
        tmp_path: object, prop: str, value: int, maximum: tuple[str, int]) -> None:
    """A config the domain could not boot with (memory above a max lowered behind the ledger's back) is refused
    `out_of_range`, and the ledger records the request so."""
    import vmledger

    async def go() -> tuple:
        sim = SimulatedHypervisor(tmp_path / "sim.json")  # type: ignore[operator]
        async with vmledger.open(str(tmp_path / "l.db"), hypervisor=sim) as ledger:  # type: ignore[operator]
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4)
            await sim.configure("web", *maximum)
            before = (await sim.observe("web")).persistent
            with pytest.raises(HypervisorRefusedError, match="outside its bounds") as refused:
                await sim.apply_persistent("web", prop, value)
            outcome = (await ledger.set("web", prop, value, scope="persistent")).outcomes["persistent"]
            return before, (await sim.observe("web")).persistent, refused.value.reason, outcome

    before, after, reason, outcome = asyncio.run(go())
    assert (after, reason) == (before, "out_of_range")
    assert (outcome.status, outcome.reason, outcome.value) == ("refused", "out_of_range", GiB if prop == "memory" else (
        2 if prop == "vcpus" else 4 * GiB))


class _HungConfig(SimulatedHypervisor):
    """A simulator whose config writes never answer: a fault the simulator offers only for live changes (a fake)."""

    async def apply_persistent(self, name: str, prop: str, value: object) -> None:
        await asyncio.sleep(3600)


def test_a_persistent_write_that_never_answers_fails_for_a_timeout(tmp_path: object) -> None:
    import vmledger

    async def go() -> dict:
        async with vmledger.open(str(tmp_path / "l.db"), hypervisor=_HungConfig(tmp_path / "sim.json"),  # type: ignore[operator]
                                 hypervisor_timeout=0.2) as ledger:
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=1, max_vcpus=2)
            record = await ledger.set("web", "vcpus", 2, scope="persistent")
            return record.to_dict()["outcomes"]["persistent"]

    outcome = asyncio.run(go())
    assert (outcome["status"], outcome["reason"], outcome["value"]) == ("failed", "timeout", 1)
