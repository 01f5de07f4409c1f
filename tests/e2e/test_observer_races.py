"""An observer (`observe`, `watch`) racing a lifecycle change never records it twice, nor undoes it.

The races are made deterministic with the simulator plus one hook: a fake for
an interleaving that real timing produces only now and then.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import vmledger
from vmledger.adapters.simulated import SimulatedHypervisor

GiB = 2**30
Hook = Callable[[], Awaitable[Any]]


class Interleaving(SimulatedHypervisor):
    """The simulator, running a hook once right after its next `observe` read, `start` or `stop`."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.hooks: dict[str, Hook] = {}

    async def _then(self, operation: str) -> None:
        hook = self.hooks.pop(operation, None)
        if hook is not None:
            await hook()

    async def observe(self, name: str) -> Any:
        seen = await super().observe(name)
        await self._then("observe")
        return seen

    async def start(self, name: str) -> tuple:
        live = await super().start(name)
        await self._then("start")
        return live

    async def stop(self, name: str) -> None:
        await super().stop(name)
        await self._then("stop")


async def _types(ledger: vmledger.Ledger) -> list[str]:
    return [r.type async for r in ledger.events()]


def test_an_observation_read_before_a_stop_does_not_restart_the_domain(tmp_path: Any) -> None:
    """A stop recorded while `observe` read the hypervisor is not undone by the older reading."""

    async def go() -> tuple:
        sim = Interleaving(str(tmp_path / "sim.json"))
        async with vmledger.open(str(tmp_path / "l.db"), hypervisor=sim) as ledger:
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=1, max_vcpus=4)
            await ledger.start("web")
            sim.hooks = {"observe": lambda: ledger.stop("web")}
            recorded = await ledger.observe("web")
            return [r.type for r in recorded], await _types(ledger), (await ledger.show("web"))["power_state"]

    assert asyncio.run(go()) == ([], ["DomainDefined", "DomainStarted", "GuestCapabilitiesObserved", "DomainStopped"], "shut off")


def test_a_start_an_observer_recorded_first_is_recorded_once(tmp_path: Any) -> None:
    """When `observe` records a start before `start` does, `start` records nothing more."""

    async def go() -> tuple:
        sim = Interleaving(str(tmp_path / "sim.json"))
        async with vmledger.open(str(tmp_path / "l.db"), hypervisor=sim) as ledger:
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=1, max_vcpus=4)
            sim.hooks = {"start": lambda: ledger.observe("web")}
            view = await ledger.start("web")
            return await _types(ledger), view["power_state"]

    assert asyncio.run(go()) == (["DomainDefined", "DomainStarted", "GuestCapabilitiesObserved"], "running")


def test_a_stop_an_observer_recorded_first_is_recorded_once(tmp_path: Any) -> None:
    """When `observe` records a stop before `stop` does, `stop` records nothing more."""

    async def go() -> tuple:
        sim = Interleaving(str(tmp_path / "sim.json"))
        async with vmledger.open(str(tmp_path / "l.db"), hypervisor=sim) as ledger:
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=1, max_vcpus=4)
            await ledger.start("web")
            sim.hooks = {"stop": lambda: ledger.observe("web")}
            view = await ledger.stop("web")
            return await _types(ledger), view["power_state"]

    assert asyncio.run(go()) == (["DomainDefined", "DomainStarted", "GuestCapabilitiesObserved", "DomainStopped"], "shut off")
