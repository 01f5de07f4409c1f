"""Hypervisor faults: errors, timeouts and late answers leave a usable, consistent ledger."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import vmledger

MiB, GiB = 2**20, 2**30


async def _web(ledger: Any) -> None:
    await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=1, max_vcpus=2)
    await ledger.start("web")


@pytest.mark.parametrize(("kind", "reason"), [("error", "hypervisor_error"), ("timeout", "timeout")])
def test_failed_live_change_is_recorded_and_the_ledger_goes_on(tmp_path: Any, kind: str, reason: str) -> None:
    """An injected error or timeout records a failed live outcome with its reason; the next request applies."""
    async def go() -> tuple:
        async with vmledger.open(f"sqlite:///{tmp_path}/ledger.db", hypervisor_timeout=0.2) as ledger:
            await _web(ledger)
            ledger.hypervisor.hang_seconds = 5.0
            await ledger.hypervisor.inject_fault("web", "memory", kind)
            failed = (await ledger.set("web", "memory", 2 * GiB, scope="live"))["outcomes"]["live"]
            applied = (await ledger.set("web", "memory", 3 * GiB, scope="live"))["outcomes"]["live"]
            types = [r.type async for r in ledger.events(from_position=3)]
            return (failed["status"], failed["reason"], failed["value"], applied["status"],
                    (await ledger.get("web", "memory", scope="live"))["value"], types,
                    await ledger.verify() == await ledger.log.head())

    assert asyncio.run(go()) == ("failed", reason, GiB, "applied", 3 * GiB, [
        "MemoryChangeRequested", "MemoryChangeFailed", "MemoryChangeRequested", "MemoryChangeApplied"], True)


def test_late_answer_is_observed_as_external_and_never_rewrites_the_outcome(tmp_path: Any) -> None:
    """A change the hypervisor applies after the ledger gave up stays failed in history and shows as external drift."""
    async def go() -> tuple:
        async with vmledger.open(f"sqlite:///{tmp_path}/ledger.db", hypervisor_timeout=0.2) as ledger:
            await _web(ledger)
            ledger.hypervisor.hang_seconds = 0.6
            await ledger.hypervisor.inject_fault("web", "memory", "late")
            record = await ledger.set("web", "memory", 2 * GiB, scope="live")
            deadline = time.monotonic() + 30
            while dict((await ledger.hypervisor.observe("web")).live)["memory"] != 2 * GiB:
                assert time.monotonic() < deadline, "the late answer never reached the hypervisor"
                await asyncio.sleep(0.05)
            observed = [r.type for r in await ledger.observe("web")]
            drift = [(d["property"], d["cause"], d["live"]) for d in await ledger.drift("web")]
            outcomes = [r.event.outcome.status async for r in ledger.events()
                        if getattr(r.event, "request_id", None) == record["request_id"]]
            return (record["outcomes"]["live"]["reason"], observed, drift, outcomes,
                    (await ledger.request(record["request_id"]))["outcomes"]["live"]["status"],
                    await ledger.verify() == await ledger.log.head())

    assert asyncio.run(go()) == ("timeout", ["LiveValueObserved"], [("memory", "external", 2 * GiB)],
                                 ["in_flight", "failed"], "failed", True)


def test_domain_locks_do_not_pile_up(tmp_path: Any) -> None:
    """The per-domain locks of requests that have finished, unknown domains included, are not kept."""
    async def go() -> tuple[int, int]:
        async with vmledger.open(f"sqlite:///{tmp_path}/ledger.db") as ledger:
            await _web(ledger)
            unknown = 0
            for i in range(50):
                try:
                    await ledger.set(f"nope{i}", "memory", GiB)
                except vmledger.UnknownDomainError:
                    unknown += 1
            await ledger.set("web", "vcpus", 2)
            return unknown, len(ledger._locks)

    assert asyncio.run(go()) == (50, 0)
