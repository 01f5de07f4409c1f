"""Requests whose caller died between `…Requested` and an outcome are resolved, never left in flight (issue #6)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import vmledger
from vmledger.eventstore.decisions import SetRequest, decide_set
from vmledger.eventstore.log import Metadata

GiB = 2**30


async def _ledger_with(ledger: vmledger.Ledger, *, running: bool) -> None:
    await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=1, max_vcpus=4)
    if running:
        await ledger.start("web")


async def _orphan(ledger: vmledger.Ledger, request_id: str, prop: str, value: Any, scope: str) -> None:
    """Record what a caller killed right after `…Requested` leaves behind, five seconds ago."""
    state = await ledger._state("web")
    request = SetRequest(request_id=request_id, domain="web", property=prop, value=value, scope=scope,
                         principal="alice")
    await ledger.log.append(state.uuid, state.version, decide_set(request, state).events,
                            Metadata(principal="alice"), now=datetime.now(timezone.utc) - timedelta(seconds=5))


def _outcomes(record: dict[str, Any]) -> dict[str, tuple]:
    return {s: (o["status"], o["value"], o["reason"], o["message"]) for s, o in record["outcomes"].items()}


GONE = "the domain stopped before this request's live outcome was recorded; its live value is gone"


def test_stop_fails_the_live_outcome_of_an_abandoned_request(tmp_path: Any) -> None:
    """Stopping a domain records `…Failed` (domain_not_running) for a live outcome its caller never recorded (issue #6)."""

    async def go() -> tuple:
        async with vmledger.open(str(tmp_path / "l.db"), hypervisor_timeout=0.1) as ledger:
            await _ledger_with(ledger, running=True)
            await _orphan(ledger, "orphan", "vcpus", 2, "live")
            await ledger.stop("web")
            types = [r.type async for r in ledger.events(from_position=3)]
            return _outcomes(await ledger.request("orphan")), types, (await ledger.show("web"))["pending"]

    assert asyncio.run(go()) == (
        {"live": ("failed", None, "domain_not_running", GONE)},
        ["VcpusChangeRequested", "VcpusChangeFailed", "DomainStopped"], [])


def test_observe_fails_pending_live_outcomes_of_a_domain_stopped_outside(tmp_path: Any) -> None:
    """Observing a domain stopped behind the ledger's back fails its pending live outcomes, however young (issue #6)."""

    async def go() -> tuple:
        async with vmledger.open(str(tmp_path / "l.db"), hypervisor_timeout=60) as ledger:
            await _ledger_with(ledger, running=True)
            await _orphan(ledger, "orphan", "vcpus", 2, "live")
            await ledger.hypervisor.stop("web")
            await ledger.observe("web")
            return _outcomes(await ledger.request("orphan")), (await ledger.show("web"))["power_state"]

    assert asyncio.run(go()) == ({"live": ("failed", None, "domain_not_running", GONE)}, "shut off")


@pytest.mark.parametrize("reached,expected", [
    (True, ("applied", 3, None, None)),
    (False, ("failed", 1, "hypervisor_error",
             "the request's outcome was never recorded; the persistent config kept its value")),
], ids=["write-reached-the-hypervisor", "write-never-made"])
def test_observe_resolves_an_abandoned_persistent_outcome_from_the_config(
        tmp_path: Any, reached: bool, expected: tuple) -> None:
    """Observe decides an abandoned persistent outcome from the hypervisor's persistent config, on a stopped domain too (issue #6)."""

    async def go() -> tuple:
        async with vmledger.open(str(tmp_path / "l.db"), hypervisor_timeout=0.1) as ledger:
            await _ledger_with(ledger, running=False)
            await _orphan(ledger, "orphan", "vcpus", 3, "persistent")
            if reached:
                await ledger.hypervisor.apply_persistent("web", "vcpus", 3)
            await ledger.observe("web")
            return _outcomes(await ledger.request("orphan")), await ledger.get("web", "vcpus", scope="persistent")

    outcomes, persistent = asyncio.run(go())
    assert (outcomes, persistent["value"]) == ({"persistent": expected}, expected[1])


def test_undefine_fails_an_abandoned_persistent_outcome(tmp_path: Any) -> None:
    """Undefining a domain records `…Failed` for a persistent outcome its caller never recorded (issue #6)."""

    async def go() -> dict[str, tuple]:
        async with vmledger.open(str(tmp_path / "l.db"), hypervisor_timeout=0.1) as ledger:
            await _ledger_with(ledger, running=False)
            await _orphan(ledger, "orphan", "vcpus", 3, "persistent")
            await ledger.undefine("web")
            return _outcomes(await ledger.request("orphan"))

    assert asyncio.run(go()) == {"persistent": (
        "failed", None, "hypervisor_error",
        "the domain was undefined before this request's persistent outcome was recorded")}


def test_a_caller_answered_after_a_stop_records_no_second_outcome(tmp_path: Any) -> None:
    """A caller whose live change outlasts a stop of its domain leaves the stop's outcome as the only one (issue #6)."""

    async def go() -> tuple:
        async with vmledger.open(str(tmp_path / "l.db"), hypervisor_timeout=0.5) as ledger:
            await _ledger_with(ledger, running=True)
            await ledger.hypervisor.inject_fault("web", "vcpus", "timeout")
            caller = asyncio.create_task(ledger.set("web", "vcpus", 2, scope="live", request_id="slow"))
            while not (await ledger.show("web"))["pending"]:
                await asyncio.sleep(0.01)
            await ledger.stop("web")
            record = await caller
            types = [r.type async for r in ledger.events(from_position=3)]
            return _outcomes(record), types

    assert asyncio.run(go()) == (
        {"live": ("failed", None, "domain_not_running", GONE)},
        ["VcpusChangeRequested", "VcpusChangeFailed", "DomainStopped"])


async def _until_memory(ledger: vmledger.Ledger, size: int) -> None:
    """Wait, at most ten seconds, until the ledger records `size` as web's live memory."""
    async with asyncio.timeout(10):
        while (await ledger.get("web", "memory", scope="live"))["value"] != size:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("timeout,expected,types", [
    (60, ("in_flight", None, None, None), ["LiveValueObserved", "LiveValueObserved"]),
    (0.1, ("applied", 2, None, None), ["VcpusChangeApplied", "LiveValueObserved", "LiveValueObserved"]),
], ids=["young-left-to-its-caller", "abandoned-resolved"])
def test_watch_resolves_only_a_request_older_than_twice_the_timeout(
        tmp_path: Any, timeout: float, expected: tuple, types: list[str]) -> None:
    """watch's start pass and sweeps resolve a request five seconds old only when twice the hypervisor timeout is shorter (issue #6)."""

    async def go() -> tuple:
        async with vmledger.open(str(tmp_path / "l.db"), hypervisor_timeout=timeout) as ledger:
            await _ledger_with(ledger, running=True)
            await _orphan(ledger, "orphan", "vcpus", 2, "live")
            await ledger.hypervisor.apply_live("web", "vcpus", 2)  # the call did reach the hypervisor
            await ledger.hypervisor.balloon("web", 2 * GiB)
            watch = asyncio.create_task(ledger.watch(interval=0.05))
            await _until_memory(ledger, 2 * GiB)  # the start pass is over
            await ledger.hypervisor.balloon("web", 3 * GiB)
            await _until_memory(ledger, 3 * GiB)  # and a sweep after it
            watch.cancel()
            await asyncio.wait((watch,))
            return (_outcomes(await ledger.request("orphan")), [r.type async for r in ledger.events(from_position=3)],
                    watch.cancelled())

    assert asyncio.run(go()) == ({"live": expected}, ["VcpusChangeRequested", *types], True)
