"""The storage contract every log backend keeps, run through one `store` fixture."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Callable

import pytest

from eventstore.backends.sqlite import SQLiteEventLog
from eventstore.errors import ChainBrokenError, ConcurrencyError, StorageError
from eventstore.events import DomainDefined, DomainStarted, DomainStopped, LiveValueObserved
from eventstore.log import Metadata
from eventstore.catalogue import Outcome
from eventstore.events import change_event
from projections.store import TableProjector, table_rows

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
CONFIG = {"memory": 2**30, "max_memory": 2**32, "vcpus": 1, "max_vcpus": 2, "numa_nodes": 1}


def _defined(name: str) -> DomainDefined:
    return DomainDefined(domain=name, uuid=name, guest_type="pv", config=CONFIG, capabilities={})


@contextlib.asynccontextmanager
async def _sqlite(tmp: str, projector: TableProjector | None = None) -> AsyncIterator[SQLiteEventLog]:
    async with SQLiteEventLog(os.path.join(tmp, "store.db"), projector or TableProjector(), busy_timeout=5) as log:
        yield log


@contextlib.asynccontextmanager
async def _postgres(dsn: str, projector: TableProjector | None = None) -> AsyncIterator[Any]:
    from eventstore.backends.postgres import PostgresEventLog  # only when asyncpg is there

    async with PostgresEventLog(dsn, projector or TableProjector(), busy_timeout=5) as log:
        yield log


BACKENDS: dict[str, Callable[[str], Any]] = {"sqlite": _sqlite, "postgres": _postgres}


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Callable[[], Any]:
    """Return a factory of opened logs on one fresh database of the backend under test."""
    where = request.getfixturevalue("pg_database") if request.param == "postgres" else str(tmp_path)
    return lambda projector=None: BACKENDS[request.param](where, projector)


def run(coro: Any) -> Any:
    """Run one coroutine on a fresh event loop."""
    return asyncio.run(coro)


def test_append_assigns_gap_free_positions_and_versions(store: Callable[[], Any]) -> None:
    """Appends to several streams get consecutive global positions and per-stream versions."""
    async def go() -> list[tuple]:
        async with store() as log:
            await log.append("a", 0, [_defined("a"), DomainStarted(config=CONFIG)], Metadata(), now=T0)
            await log.append("b", 0, [_defined("b")], Metadata(), now=T0)
            await log.append("a", 2, [DomainStopped()], Metadata(principal="p"), now=T0)
            return [(r.position, r.stream, r.version, r.type) async for r in log.read_all()]

    assert run(go()) == [(1, "a", 1, "DomainDefined"), (2, "a", 2, "DomainStarted"),
                         (3, "b", 1, "DomainDefined"), (4, "a", 3, "DomainStopped")]


def test_rebuild_in_small_chunks_writes_the_rows_the_appends_wrote(store: Callable[..., Any]) -> None:
    """A rebuild reading two events at a time writes exactly the incremental rows, late and open requests too."""
    def change(outcome: Outcome, request_id: str, **fields: Any) -> Any:
        return change_event("memory", outcome)(request_id=request_id, property="memory", **fields)

    async def go() -> tuple[dict, dict]:
        async with store() as log:
            for name in ("a", "b"):
                await log.append(name, 0, [_defined(name), DomainStarted(config=CONFIG)], Metadata(), now=T0)
            versions = {"a": 2, "b": 2}
            for i in range(4):
                for name in ("a", "b"):
                    rid, size = f"{name}{i}", 2**29 + i
                    steps = [change(Outcome.REQUESTED, rid, value=size, scope="both", principal="p"),
                             change(Outcome.APPLIED, rid, scope="persistent", requested=size, value=size),
                             change(Outcome.PARTIALLY_APPLIED, rid, scope="live", requested=size, value=size - 1)]
                    for event in steps[:3 if i < 3 else 1]:  # the last requests stay in flight
                        versions[name] += 1
                        await log.append(name, versions[name] - 1, [event], Metadata(), now=T0 + timedelta(i))
            # A second live outcome of a request completed long before.
            await log.append("a", versions["a"], [change(Outcome.APPLIED, "a0", scope="live", requested=2**29,
                                                         value=2**29)], Metadata(), now=T0 + timedelta(9))
            incremental = await table_rows(log.fetch_all)
        async with store(TableProjector(chunk=2)) as log:
            position = await log.rebuild()
            return incremental, {**await table_rows(log.fetch_all), "position": position}

    incremental, rebuilt = run(go())
    assert (rebuilt, len(incremental["history"])) == ({**incremental, "position": 25}, 8)


def test_expected_version_conflict_writes_nothing(store: Callable[[], Any]) -> None:
    """An append at a stale version raises ConcurrencyError and leaves the log unchanged."""
    async def go() -> tuple:
        async with store() as log:
            await log.append("a", 0, [_defined("a")], Metadata(), now=T0)
            with pytest.raises(ConcurrencyError) as caught:
                await log.append("a", 0, [DomainStarted(config=CONFIG)], Metadata(), now=T0)
            return caught.value.expected, caught.value.actual, await log.head()

    assert run(go()) == (0, 1, 1)


def test_concurrent_appends_are_serialised_without_gaps(store: Callable[[], Any]) -> None:
    """Many tasks appending at once produce positions 1..N with no gap or duplicate."""
    async def go() -> list[int]:
        async with store() as log:
            await asyncio.gather(*(log.append(f"d{i}", 0, [_defined(f"d{i}")], Metadata(), now=T0)
                                   for i in range(64)))
            return [r.position async for r in log.read_all()]

    assert run(go()) == list(range(1, 65))


def test_read_stream_and_as_of(store: Callable[[], Any]) -> None:
    """A stream reads oldest first, and up to a position or a time when asked."""
    async def go() -> tuple:
        async with store() as log:
            await log.append("a", 0, [_defined("a")], Metadata(), now=T0)
            await log.append("b", 0, [_defined("b")], Metadata(), now=T0 + timedelta(seconds=1))
            await log.append("a", 1, [DomainStarted(config=CONFIG)], Metadata(), now=T0 + timedelta(seconds=2))
            whole = [r.version for r in await log.read_stream("a")]
            early = [r.version for r in await log.read_stream("a", to_position=2)]
            at = await log.position_at(T0 + timedelta(seconds=1, milliseconds=500))
            return whole, early, at

    assert run(go()) == ([1, 2], [1], 2)


def test_subscribe_catches_up_then_follows(store: Callable[[], Any]) -> None:
    """A subscriber gets the existing events, then each new append, exactly once and in order."""
    async def go() -> list[int]:
        async with store() as log:
            await log.append("a", 0, [_defined("a")], Metadata(), now=T0)
            seen: list[int] = []

            async def follow() -> None:
                async for rec in log.subscribe(from_position=0):
                    seen.append(rec.position)
                    if len(seen) == 4:
                        return

            task = asyncio.create_task(follow())
            await asyncio.sleep(0.05)
            await log.append("a", 1, [DomainStarted(config=CONFIG)], Metadata(), now=T0)
            await log.append("b", 0, [_defined("b"), LiveValueObserved(property="memory", value=1)],
                             Metadata(), now=T0)
            await asyncio.wait_for(task, 5)
            return seen

    assert run(go()) == [1, 2, 3, 4]


def _tamper(path: str, sql: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(sql)


@pytest.mark.parametrize("sql,position", [
    ("UPDATE events SET data = replace(data, '1073741824', '1073741825') WHERE position = 2", 2),
    ("UPDATE events SET metadata = '{\"principal\":\"eve\",\"request_id\":null,\"correlation_id\":null}' WHERE position = 3", 3),
    ("UPDATE events SET recorded_at = '2030-01-01T00:00:00+00:00' WHERE position = 1", 1),
    ("DELETE FROM events WHERE position = 2", 2),
    ("UPDATE events SET position = 10 WHERE position = 3", 3),
], ids=["data", "metadata", "time", "delete", "move"])
def test_verify_names_the_first_damaged_position(tmp_path: Any, sql: str, position: int) -> None:
    """Editing, deleting or moving a stored event breaks the chain at that event's position."""
    path = str(tmp_path / "store.db")

    async def write() -> int:
        async with SQLiteEventLog(path, TableProjector()) as log:
            await log.append("a", 0, [_defined("a"), DomainStarted(config=CONFIG)], Metadata(), now=T0)
            await log.append("a", 2, [DomainStopped(), DomainStarted(config=CONFIG)], Metadata(), now=T0)
            return await log.verify_chain()

    async def verify() -> int:
        async with SQLiteEventLog(path, TableProjector()) as log:
            with pytest.raises(ChainBrokenError) as caught:
                await log.verify_chain()
            return caught.value.position

    assert run(write()) == 4
    _tamper(path, sql)
    assert run(verify()) == position


def test_closed_or_unwritable_store_raises_storage_error(tmp_path: Any) -> None:
    """A closed log and a database file in a missing directory raise StorageError, not a driver error."""
    async def go() -> None:
        async with SQLiteEventLog(str(tmp_path / "s.db"), TableProjector()) as log:
            pass
        with pytest.raises(StorageError):
            await log.append("a", 0, [_defined("a")], Metadata(), now=T0)
        with pytest.raises(StorageError):
            async with SQLiteEventLog(str(tmp_path / "missing" / "s.db"), TableProjector()):
                pass

    run(go())


def test_opening_an_existing_sqlite_ledger_takes_no_write_lock(tmp_path: Any) -> None:
    """Another process's open write transaction does not stop an existing SQLite ledger from opening and reading."""
    path = os.path.join(tmp_path, "store.db")

    async def go() -> int:
        async with SQLiteEventLog(path, TableProjector()) as log:
            await log.append("a", 0, [_defined("a")], Metadata(), now=T0)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            async with SQLiteEventLog(path, TableProjector(), busy_timeout=0.2) as log:
                return await log.head()
        finally:
            other.execute("ROLLBACK")
            other.close()

    assert run(go()) == 1
