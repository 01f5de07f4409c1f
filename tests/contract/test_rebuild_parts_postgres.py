"""A PostgreSQL rebuild and `verify` fold in worker processes, a part of the streams each, as one process folds."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import vmledger.projections.verify
from tests.contract.test_rebuild_parts import _ACROSS, _ACROSS_LATE, _append_fleet, _refuse, _row
from tests.pg import create_database
from tests.strategies import LOG_START, any_logs
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.eventstore.backends.common import COLUMNS
from vmledger.eventstore.errors import StorageError, VmledgerError
from vmledger.eventstore.log import RecordedEvent
from vmledger.ledger import Ledger
from vmledger.projections.store import TableProjector, table_rows

# Without the driver the `pg_dsn` fixture of test_store.py[postgres] skips, or fails under CI=true.
asyncpg = pytest.importorskip("asyncpg", reason="the asyncpg driver is not installed (pip install -e '.[test]')")

from vmledger.eventstore.backends.postgres import PostgresEventLog  # noqa: E402


async def _emptied(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    """Make the database at `dsn` a ledger whose events table holds `rows` alone, and whose projections are empty."""
    async with PostgresEventLog(dsn, TableProjector()):
        pass
    conn = await asyncpg.connect(dsn)
    try:
        tables = [r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
        await conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables if t != "projection_position"))
        await conn.execute("DELETE FROM projection_position WHERE name <> 'rules'")
        await conn.copy_records_to_table("events", records=rows, columns=COLUMNS.split(", "))
    finally:
        await conn.close()


async def _rebuilt(dsn: str, projector: TableProjector,
                   progress: Callable[[int, int], None] | None = None) -> tuple[Any, ...]:
    """Rebuild the database's projections; return the position and every row, or the error's type and text."""
    async with PostgresEventLog(dsn, projector) as log:
        try:
            position = await log.rebuild(progress)
        except (ValueError, StorageError) as e:
            return ("raised", type(e), str(e), await table_rows(log.fetch_all))
        return ("rebuilt", position, await table_rows(log.fetch_all))


def test_a_postgres_rebuild_in_parts_writes_the_rows_of_one_process_or_raises_its_error(pg_database: str) -> None:
    """On any log, PostgreSQL's rebuild in worker processes writes the rows, and raises the error, of its rebuild in one process."""
    dsn = pg_database  # emptied for each example

    @settings(database=None, deadline=None, max_examples=10)
    @given(any_logs(), st.integers(1, 4) | st.integers(1, 60))
    @example(records=_ACROSS, chunk=1)
    @example(records=_ACROSS_LATE, chunk=1)
    def check(records: list[RecordedEvent], chunk: int) -> None:
        async def both() -> tuple[tuple[Any, ...], tuple[Any, ...]]:
            await _emptied(dsn, [_row(r) for r in records])
            alone = await _rebuilt(dsn, TableProjector(chunk=chunk, parts=1))
            return alone, await _rebuilt(dsn, TableProjector(chunk=chunk, parts=2, parts_from=0))

        alone, split = asyncio.run(both())
        assert split == alone

    check()


def test_a_postgres_rebuild_in_parts_leaves_the_event_loop_and_the_readers_free(pg_database: str) -> None:
    """While its workers fold, a PostgreSQL rebuild leaves its event loop free and its readers reading the rows committed before it (it drops no index, which would make them wait for its end); it then writes the rows the appends wrote."""
    read: list[Any] = []

    async def go() -> tuple[dict, tuple[Any, ...]]:
        incremental = await _append_fleet(pg_database, PostgresEventLog)
        loop = asyncio.get_running_loop()

        async def reader() -> Any:
            conn = await asyncpg.connect(pg_database, server_settings={"lock_timeout": "2s"})
            try:
                return [await conn.fetchval(f"SELECT count(*) FROM {t}") for t in ("history", "episodes", "domains")]
            finally:
                await conn.close()

        def progress(at: int, head: int) -> None:
            if not read:  # on this event loop, from the rebuild's own thread: it must be free meanwhile
                read.append(asyncio.run_coroutine_threadsafe(reader(), loop).result(timeout=20))

        return incremental, await _rebuilt(pg_database, TableProjector(chunk=4, parts=3, parts_from=0), progress)

    incremental, rebuilt = asyncio.run(go())
    assert rebuilt == ("rebuilt", 60, incremental)
    assert read == [[len(incremental["history"]), len(incremental["episodes"]), len(incremental["domains"])]]


async def _verified(dsn: str, sim: str, projector: TableProjector, tamper: str = "") -> tuple[Any, ...]:
    """Verify the ledger at `dsn`, its log on `projector`, after the statement `tamper`; return its checkpoint, or the error."""
    async with PostgresEventLog(dsn, projector) as log:
        if tamper:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(tamper)
            finally:
                await conn.close()
        ledger = Ledger(log, SimulatedHypervisor(sim), clock=lambda: LOG_START, new_id=str)
        try:
            return ("verified", await ledger.checkpoint())
        except (ValueError, VmledgerError) as e:
            return ("raised", type(e), str(e))


@pytest.mark.parametrize("tamper", [
    "",
    "UPDATE live SET value = '1' WHERE domain = 'domain-c' AND property = 'memory'",
    "UPDATE outcome_days SET count = count + 1",
    "UPDATE events SET data = data || ' ' WHERE position = 30",
])
def test_a_postgres_verify_in_parts_finds_what_one_process_finds(
    pg_database: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, tamper: str,
) -> None:
    """`verify` of a PostgreSQL ledger folds it, and checks its chain, in worker processes, not in its own, and passes, or names the row or event changed behind the log's back as one process does."""
    asyncio.run(_append_fleet(pg_database, PostgresEventLog))
    sim = str(tmp_path / "sim.json")
    alone = asyncio.run(_verified(pg_database, sim, TableProjector(parts=1), tamper))
    monkeypatch.setattr(vmledger.projections.verify, "_fold", _refuse)  # the fold in this process fails the test
    split = asyncio.run(_verified(pg_database, sim, TableProjector(parts=2, parts_from=0)))
    assert split == alone
    assert alone[0] == ("raised" if tamper else "verified")


def test_a_postgres_rebuild_whose_workers_cannot_connect_folds_in_one_process(
    pg_database: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """A rebuild whose worker processes cannot reach the server (a port nothing listens on: a full server's refusal, say) writes the rows the appends wrote all the same, folded in its own process, and logs why."""
    async def go() -> tuple[dict, tuple[Any, ...]]:
        incremental = await _append_fleet(pg_database, PostgresEventLog)
        async with PostgresEventLog(pg_database, TableProjector(chunk=4, parts=2, parts_from=0)) as log:
            log.part_rows = type(log.part_rows)("postgresql://vmledger@127.0.0.1:1/none", 5.0)
            position = await log.rebuild()
            return incremental, ("rebuilt", position, await table_rows(log.fetch_all))

    with caplog.at_level(logging.WARNING, logger="vmledger"):
        incremental, rebuilt = asyncio.run(go())
    assert (rebuilt, [r.message.split(" (")[0] for r in caplog.records]) == (
        ("rebuilt", 60, incremental), ["rebuild: the worker processes failed"])


def test_a_postgres_rebuild_in_a_database_not_in_utf8_folds_in_one_process(
    pg_dsn: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """In a database whose encoding is not UTF-8 (SQL_ASCII), the server's `ascii` of a stream's last character is a byte, not the code point this process splits the streams by: the rebuild folds in its own process, writes the rows the appends wrote, and logs why."""
    dsn = create_database(pg_dsn, "not_utf8", encoding="SQL_ASCII")

    async def go() -> tuple[dict, tuple[Any, ...]]:
        incremental = await _append_fleet(dsn, PostgresEventLog)
        async with PostgresEventLog(dsn, TableProjector(chunk=4, parts=2, parts_from=0)) as log:
            position = await log.rebuild()
            return incremental, ("rebuilt", position, await table_rows(log.fetch_all))

    with caplog.at_level(logging.WARNING, logger="vmledger"):
        incremental, rebuilt = asyncio.run(go())
    assert rebuilt == ("rebuilt", 60, incremental)
    assert [r.message.split(" (")[0] for r in caplog.records] == ["rebuild: the worker processes failed"]
    assert "SQL_ASCII, not UTF8" in caplog.records[0].message
