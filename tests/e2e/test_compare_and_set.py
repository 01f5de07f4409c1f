"""`set(expected_version=...)` is a compare-and-set against the stored stream, whoever wrote it last (issue 14)."""

from __future__ import annotations

import asyncio
from typing import Any

import vmledger
from vmledger.adapters.simulated import SimulatedHypervisor


def test_a_set_expecting_a_version_another_writer_moved_past_writes_nothing(tmp_path: Any) -> None:
    """A ledger that remembers its own last append still compares with the version another writer left."""
    path, sim = str(tmp_path / "l.db"), tmp_path / "sim.json"

    async def go() -> tuple[Any, ...]:
        async with vmledger.open(path, hypervisor=SimulatedHypervisor(sim)) as mine, \
                vmledger.open(path, hypervisor=SimulatedHypervisor(sim)) as other:
            await mine.define("web", guest_type="hvm", memory=2**30, max_memory=2**31, vcpus=1, max_vcpus=4)
            before = (await mine.log.fetch_all("SELECT version FROM domains WHERE name = 'web'"))[0][0]
            await other.set("web", "vcpus", 2, scope="persistent")  # another writer moves the stream
            head = await mine.log.head()
            try:
                await mine.set("web", "vcpus", 3, scope="persistent", expected_version=before)
                refused = None
            except vmledger.ConcurrencyError as e:
                refused = (e.expected, e.actual)
            unchanged = await mine.log.head() == head
            now = (await mine.log.fetch_all("SELECT version FROM domains WHERE name = 'web'"))[0][0]
            record = await mine.set("web", "vcpus", 3, scope="persistent", expected_version=now)
            return refused == (before, before + 2), unchanged, record.outcomes["persistent"].status

    assert asyncio.run(go()) == (True, True, "applied")
