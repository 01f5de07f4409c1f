"""A log written with version 1 of `LiveValueObserved` still replays: upcast on read, its rows never rewritten."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from typing import Any, AsyncIterator

import pytest

import vmledger
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.eventstore.backends.common import COLUMNS
from vmledger.eventstore.events import LiveValueObserved
from vmledger.eventstore.hypervisor import DomainSpec
from vmledger.eventstore.transfer import from_line
from vmledger.projections.store import table_rows

MiB, GiB = 2**20, 2**30
LINES = (pathlib.Path(__file__).resolve().parents[1] / "data" / "v1-log.jsonl").read_text(encoding="utf-8").splitlines()
#: The rows `vmledger export` read from the database that wrote the file (data and metadata as stored text).
ROWS = [from_line(line, n) for n, line in enumerate(LINES, 1)]
WEB, DB = ROWS[0][1], ROWS[1][1]
ROWS_OF_EVENTS = f"SELECT {COLUMNS} FROM events ORDER BY position"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Return the URL of an empty ledger database on each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return request.getfixturevalue("pg_database")


@contextlib.asynccontextmanager
async def _imported(url: str, tmp_path: Any) -> AsyncIterator[vmledger.Ledger]:
    """Open the ledger at `url` on a fresh simulator and import the version-1 log into it."""
    async with vmledger.open(url, hypervisor=SimulatedHypervisor(tmp_path / "sim.json")) as ledger:
        await ledger.import_lines(lambda: LINES)
        yield ledger


def test_v1_log_imports_and_verifies(url: str, tmp_path: Any) -> None:
    """The version-1 log imports whole, and verify finds its chain intact and the projections equal to a rebuild."""
    async def go() -> tuple[int, int]:
        async with vmledger.open(url, hypervisor=SimulatedHypervisor(tmp_path / "sim.json")) as ledger:
            return await ledger.import_lines(lambda: LINES), await ledger.verify()

    assert asyncio.run(go()) == (21, 21)


def test_v1_observations_read_as_version_2_with_previous_none(url: str, tmp_path: Any) -> None:
    """Each version-1 `LiveValueObserved` reads back as the current class, with `previous` None."""
    async def go() -> list[tuple[int, str, Any]]:
        async with _imported(url, tmp_path) as ledger:
            return [(r.position, r.stream, r.event) async for r in ledger.events(from_position=0)
                    if r.type == "LiveValueObserved"]

    assert asyncio.run(go()) == [
        (20, DB, LiveValueObserved(property="memory", value=1536 * MiB, previous=None)),
        (21, WEB, LiveValueObserved(property="memory", value=900 * MiB, previous=None)),
    ]


def test_stored_rows_keep_version_1_and_their_text(url: str, tmp_path: Any) -> None:
    """Reading, verifying and rebuilding leave every stored row as the file holds it, version 1 and data text alike."""
    async def go() -> list[tuple]:
        async with _imported(url, tmp_path) as ledger:
            _ = [r async for r in ledger.events(from_position=0)]
            await ledger.verify()
            await ledger.rebuild()
            return await ledger.log.fetch_all(ROWS_OF_EVENTS)

    stored = asyncio.run(go())
    assert (stored, [r[3:6] for r in stored[19:]]) == (ROWS, [
        ("LiveValueObserved", 1, '{"property":"memory","value":1610612736}'),
        ("LiveValueObserved", 1, '{"property":"memory","value":943718400}'),
    ])


def test_drift_shows_the_external_cause_the_file_recorded(url: str, tmp_path: Any) -> None:
    """Drift of the imported log names the out-of-band balloons as `external`, at the positions and times of the file.

    The vCPUs set with `--scope persistent` while running are `persistent_only`, not `requires_restart`: vCPUs are RW (issue 13).
    """
    async def go() -> list[dict[str, Any]]:
        async with _imported(url, tmp_path) as ledger:
            return [d.to_dict() for d in await ledger.drift()]

    recorded_at = {row[0]: row[7] for row in ROWS}
    assert asyncio.run(go()) == [
        {"domain": "db", "property": "memory", "persistent": 2 * GiB, "live": 1536 * MiB, "cause": "external",
         "request_id": None, "since_position": 20, "since": recorded_at[20]},
        {"domain": "db", "property": "vcpus", "persistent": 6, "live": 4, "cause": "persistent_only",
         "request_id": "req-db-vcpus-1", "since_position": 11, "since": recorded_at[11]},
        {"domain": "web", "property": "memory", "persistent": 1224 * MiB, "live": 900 * MiB, "cause": "external",
         "request_id": None, "since_position": 21, "since": recorded_at[21]},
    ]


def test_rebuild_of_the_v1_log_writes_the_same_rows(url: str, tmp_path: Any) -> None:
    """A rebuild of the imported log writes exactly the projection rows the import wrote."""
    async def go() -> tuple[dict, dict]:
        async with _imported(url, tmp_path) as ledger:
            before = await table_rows(ledger.log.fetch_all)
            await ledger.rebuild()
            return before, await table_rows(ledger.log.fetch_all)

    before, after = asyncio.run(go())
    assert (len(before["drift"]), after) == (3, before)


def test_observation_after_the_v1_log_is_version_2_with_previous(url: str, tmp_path: Any) -> None:
    """A balloon observed after the import is stored at version 2 with `previous` the value a version-1 event set."""
    async def go() -> tuple:
        async with _imported(url, tmp_path) as ledger:
            sim = ledger.hypervisor
            # The simulator is new: give it the domain `web` as the log leaves it, running.
            await sim.define(DomainSpec(
                name="web", uuid=WEB, guest_type="pv", capabilities=(),
                config=(("max_memory", 4 * GiB), ("max_vcpus", 4), ("media:hdc", "/iso/install.iso"),
                        ("memory", 1224 * MiB), ("numa_nodes", 1), ("vcpus", 2))))
            await sim.start("web")
            await sim.balloon("web", GiB)
            recorded = [(r.position, r.event) for r in await ledger.observe("web")]
            return recorded, await ledger.log.fetch_all(ROWS_OF_EVENTS), await ledger.verify()

    recorded, stored, head = asyncio.run(go())
    new = stored[21]
    assert (recorded, new[3:6], stored[:21], head) == (
        [(22, LiveValueObserved(property="memory", value=GiB, previous=900 * MiB))],
        ("LiveValueObserved", 2, '{"previous":943718400,"property":"memory","value":1073741824}'),
        ROWS, 22,
    )
