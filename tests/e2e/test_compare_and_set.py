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


def test_a_version_or_correlation_id_that_is_no_such_thing_is_an_invalid_request(tmp_path: Any) -> None:
    """`expected_version` must be a whole number from 0 (not a conflict when it is none), a correlation id text."""
    path = str(tmp_path / "l.db")

    async def go() -> tuple[list[str], bool]:
        async with vmledger.open(path, hypervisor=SimulatedHypervisor(tmp_path / "sim.json")) as ledger:
            await ledger.define("web", guest_type="hvm", memory=2**30, max_memory=2**31, vcpus=1, max_vcpus=4)
            head = await ledger.log.head()
            said = []
            for bad in ({"expected_version": "x"}, {"expected_version": -1}, {"expected_version": True},
                        {"correlation_id": ""}, {"correlation_id": 5}):
                try:
                    await ledger.set("web", "vcpus", 2, scope="persistent", **bad)
                    said.append("accepted")
                except vmledger.ConcurrencyError:
                    said.append("conflict")
                except vmledger.InvalidRequestError as e:
                    said.append(str(e).split(" ")[0] + " " + str(e).split(" ")[1])
            return said, await ledger.log.head() == head

    assert asyncio.run(go()) == (["expected_version must", "expected_version must", "expected_version must",
                                  "correlation id", "correlation id"], True)
