"""The storage contract every log backend keeps, run through one `store` fixture."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Callable

import pytest

from vmledger.eventstore.backends.common import COLUMNS
from vmledger.eventstore.backends.sqlite import SQLiteEventLog
from vmledger.eventstore.errors import ChainBrokenError, ConcurrencyError, StorageError
from vmledger.eventstore.events import DomainDefined, DomainStarted, DomainStopped, LiveValueObserved
from vmledger.eventstore.log import GENESIS_HASH, Metadata, chain_hash
from vmledger.eventstore.catalogue import Outcome
from vmledger.eventstore.events import change_event
from vmledger.projections.store import DuplicateRequestError, TableProjector, table_rows

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
    from vmledger.eventstore.backends.postgres import PostgresEventLog  # only when asyncpg is there

    async with PostgresEventLog(dsn, projector or TableProjector(), busy_timeout=5) as log:
        yield log


BACKENDS: dict[str, Callable[..., Any]] = {"sqlite": _sqlite, "postgres": _postgres}
Row = list[Any]  # a stored event: position, stream, version, type, schema_version, data, metadata, recorded_at, hash


class Store:
    """Opens logs on one fresh database of a backend, and edits its events table behind their back."""

    def __init__(self, backend: str, where: str) -> None:
        self.backend = backend
        self.where = where

    def __call__(self, projector: TableProjector | None = None) -> Any:
        """Return an async context manager of an opened log (with a projector other than the default)."""
        return BACKENDS[self.backend](self.where, projector)

    def rewrite(self, change: Callable[[list[Row]], list[Row]]) -> None:
        """Replace the stored events by `change(rows)`, straight through the driver (sqlite3 or asyncpg)."""
        if self.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(os.path.join(self.where, "store.db"))) as conn, conn:
                rows = [list(r) for r in conn.execute(f"SELECT {COLUMNS} FROM events ORDER BY position")]
                conn.execute("DELETE FROM events")
                conn.executemany(f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", change(rows))
        else:
            run(self._rewrite_postgres(change))

    def execute(self, sql: str) -> None:
        """Run one statement straight through the driver (sqlite3 or asyncpg), behind the logs' back."""
        if self.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(os.path.join(self.where, "store.db"))) as conn, conn:
                conn.execute(sql)
        else:
            run(self._execute_postgres(sql))

    async def _execute_postgres(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.where)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def _rewrite_postgres(self, change: Callable[[list[Row]], list[Row]]) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.where)
        try:
            async with conn.transaction():
                rows = [list(r) for r in await conn.fetch(f"SELECT {COLUMNS} FROM events ORDER BY position")]
                await conn.execute("DELETE FROM events")
                await conn.executemany(
                    f"INSERT INTO events ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", change(rows))
        finally:
            await conn.close()


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Store:
    """Return a factory of opened logs on one fresh database of the backend under test."""
    where = request.getfixturevalue("pg_database") if request.param == "postgres" else str(tmp_path)
    return Store(request.param, where)


def run(coro: Any) -> Any:
    """Run one coroutine on a fresh event loop."""
    return asyncio.run(coro)


def test_append_assigns_gap_free_positions_and_versions(store: Store) -> None:
    """Appends to several streams get consecutive global positions and per-stream versions."""
    async def go() -> list[tuple]:
        async with store() as log:
            await log.append("a", 0, [_defined("a"), DomainStarted(config=CONFIG)], Metadata(), now=T0)
            await log.append("b", 0, [_defined("b")], Metadata(), now=T0)
            await log.append("a", 2, [DomainStopped()], Metadata(principal="p"), now=T0)
            return [(r.position, r.stream, r.version, r.type) async for r in log.read_all()]

    assert run(go()) == [(1, "a", 1, "DomainDefined"), (2, "a", 2, "DomainStarted"),
                         (3, "b", 1, "DomainDefined"), (4, "a", 3, "DomainStopped")]


async def _requests(log: Any) -> None:
    """Append two running domains' requests: completed, late (a second outcome long after) and in flight."""
    def change(outcome: Outcome, request_id: str, **fields: Any) -> Any:
        return change_event("memory", outcome)(request_id=request_id, property="memory", **fields)

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


def test_rebuild_in_small_chunks_writes_the_rows_the_appends_wrote(store: Store) -> None:
    """A rebuild reading two events at a time writes exactly the incremental rows, late and open requests too."""
    async def go() -> tuple[dict, dict]:
        async with store() as log:
            await _requests(log)
            incremental = await table_rows(log.fetch_all)
        async with store(TableProjector(chunk=2)) as log:
            position = await log.rebuild()
            return incremental, {**await table_rows(log.fetch_all), "position": position}

    incremental, rebuilt = run(go())
    assert (rebuilt, len(incremental["history"])) == ({**incremental, "position": 25}, 8)


def test_a_cancelled_rebuild_leaves_the_rows_as_they_were(store: Store) -> None:
    """A rebuild cancelled (Ctrl-C) after its first chunk rolls back rather than run on unseen: the rows it would replace stay, and a rebuild after it replaces them."""
    async def written() -> dict:
        async with store() as log:
            await _requests(log)
            return await table_rows(log.fetch_all)

    seen: list[int] = []

    async def go() -> tuple[Any, ...]:
        cancelled = threading.Event()
        async with store(TableProjector(chunk=2)) as log:
            loop = asyncio.get_running_loop()

            def progress(at: int, head: int) -> None:
                seen.append(at)
                if len(seen) == 1:
                    loop.call_soon_threadsafe(rebuilding.cancel)
                    if threading.current_thread() is not threading.main_thread():
                        cancelled.wait(30)  # SQLite's writer thread: on once the cancellation has landed

            rebuilding = asyncio.ensure_future(log.rebuild(progress))
            with pytest.raises(asyncio.CancelledError):
                await rebuilding
            cancelled.set()
        async with store() as log:  # the first log, closed, waited for its writer thread
            left = await table_rows(log.fetch_all)
            await log.rebuild()
            return left, await table_rows(log.fetch_all)

    incremental = run(written())
    store.execute("DELETE FROM history")  # what a rebuild puts back
    left, rebuilt = run(go())
    assert (seen, left, rebuilt) == ([2], {**incremental, "history": []}, incremental)


#: Text that a writer quoting or encoding by hand would get wrong: quotes, escapes, placeholders, JSON,
#: SQL, line and paragraph separators, text outside the BMP, and a long run.
HOSTILE = ["it's", 'say "hi"', "back\\slash \\u0041 \\n", "$1 ? :name %s", '{"a": [1, null]}', "[1,2]",
           "x'); DROP TABLE events; --", "line\nbreak\ttab\r", "sep\u2028\u2029", "ünïcødé 雪 🚀", "", " ",
           "null", "-7", "1e400", "x" * 5000]


@pytest.mark.parametrize("text", HOSTILE)
def test_any_text_comes_back_as_written_and_as_a_rebuild_writes_it(store: Store, text: str) -> None:
    """Text in every field a caller writes reads back unchanged, and the rows an append wrote equal a rebuild's."""
    def change(outcome: Outcome, **fields: Any) -> Any:
        return change_event("media:hdc", outcome)(request_id=text + "!", property="media:hdc", **fields)

    async def go() -> tuple[list, list, dict, dict]:
        config = {**CONFIG, "media:hdc": ""}
        written = [DomainDefined(domain=text + "?", uuid="u", guest_type="hvm", config=config, capabilities={}),
                   DomainStarted(config=config),
                   change(Outcome.REQUESTED, value=text, scope="both", principal=text, reason=text),
                   change(Outcome.APPLIED, scope="persistent", requested=text, value=text),
                   change(Outcome.FAILED, scope="live", requested=text, value="", message=text)]
        async with store() as log:
            for version, event in enumerate(written):
                await log.append("u", version, [event], Metadata(principal=text, correlation_id=text), now=T0)
            read = [(r.event, r.metadata) async for r in log.read_all()]
            incremental = await table_rows(log.fetch_all)
            await log.rebuild()
            return written, read, incremental, await table_rows(log.fetch_all)

    written, read, incremental, rebuilt = run(go())
    assert read == [(e, Metadata(principal=text, correlation_id=text)) for e in written]
    assert incremental == rebuilt
    (history,) = incremental["history"]
    assert (history[1:3], history[6:8]) == (("u", text + "?"), (text, text))
    media = [row[2] for row in incremental["persistent"] if row[1] == "media:hdc"]
    assert media == [json.dumps(text, ensure_ascii=False)]


def test_two_logs_taking_turns_on_one_stream_write_the_rows_a_rebuild_writes(store: Store) -> None:
    """Each log remembers the domain states it wrote: the other's writes and a refused append make it read again."""
    def change(outcome: Outcome, request_id: str, **fields: Any) -> Any:
        return change_event("memory", outcome)(request_id=request_id, property="memory", **fields)

    async def go() -> tuple[dict, dict]:
        async with store() as first, store() as second:
            await first.append("a", 0, [_defined("a"), DomainStarted(config=CONFIG)], Metadata(), now=T0)
            version = 2
            for i in range(6):
                asks, answers = (first, second) if i % 2 else (second, first)
                rid, size = f"r{i}", 2**29 + i
                await asks.append("a", version, [change(Outcome.REQUESTED, rid, value=size, scope="both",
                                                        principal="p")], Metadata(), now=T0 + timedelta(i))
                with pytest.raises(DuplicateRequestError):  # rolled back after the projector folded it
                    await answers.append("a", version + 1, [change(Outcome.REQUESTED, rid, value=size,
                                                                   scope="both", principal="p")],
                                         Metadata(), now=T0)
                await answers.append("a", version + 1, [
                    change(Outcome.APPLIED, rid, scope="persistent", requested=size, value=size),
                    change(Outcome.PARTIALLY_APPLIED, rid, scope="live", requested=size, value=size - i),
                ], Metadata(), now=T0 + timedelta(i, 1))
                version += 3
            incremental = await table_rows(first.fetch_all)
            await second.rebuild()
            return incremental, await table_rows(first.fetch_all)

    incremental, rebuilt = run(go())
    assert incremental == rebuilt
    assert len(incremental["history"]) == 6 and len(incremental["drift"]) == 1


#: Columns an append never changes in a stored row, some of them indexed: writing one rewrites the row's index entries.
_KEPT_COLUMNS = {"domains": "guest_type", "history": "domain, property, position, requested_at, principal"}


async def _refuse_writes_of_kept_columns(store: Store) -> None:
    """Add triggers that fail any statement setting a `_KEPT_COLUMNS` column of a stored row (as an upsert does)."""
    if store.backend == "sqlite":
        with contextlib.closing(sqlite3.connect(os.path.join(store.where, "store.db"))) as conn, conn:
            for table, columns in _KEPT_COLUMNS.items():
                conn.execute(f"CREATE TRIGGER kept_{table} BEFORE UPDATE OF {columns} ON {table} "
                             f"BEGIN SELECT RAISE(ABORT, '{table} rewritten'); END")
        return
    import asyncpg

    conn = await asyncpg.connect(store.where)
    try:
        await conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                           "$$ BEGIN RAISE EXCEPTION '% rewritten', TG_TABLE_NAME; END $$")
        for table, columns in _KEPT_COLUMNS.items():
            await conn.execute(f"CREATE TRIGGER kept_{table} BEFORE UPDATE OF {columns} ON {table} "
                               "FOR EACH ROW EXECUTE FUNCTION refuse()")
    finally:
        await conn.close()


def test_an_append_updates_only_the_columns_that_changed_in_the_rows_it_read(store: Store) -> None:
    """Settling a request rewrites no key or indexed column of its domain and history rows.

    The triggers fail a statement that sets one, as an upsert of the whole row
    does; the rows still equal a rebuild's.
    """
    def change(outcome: Outcome, request_id: str, **fields: Any) -> Any:
        return change_event("memory", outcome)(request_id=request_id, property="memory", **fields)

    async def go() -> tuple[dict, dict]:
        async with store() as log:
            await log.append("a", 0, [_defined("a")], Metadata(), now=T0)
            await _refuse_writes_of_kept_columns(store)
            await log.append("a", 1, [DomainStarted(config=CONFIG)], Metadata(), now=T0)
            version = 2
            for i, live in enumerate((Outcome.APPLIED, Outcome.PARTIALLY_APPLIED, Outcome.REFUSED)):
                rid, size = f"r{i}", 2**29 + i
                for event in (change(Outcome.REQUESTED, rid, value=size, scope="both", principal="p"),
                              change(Outcome.APPLIED, rid, scope="persistent", requested=size, value=size),
                              change(live, rid, scope="live", requested=size, value=size - i)):
                    await log.append("a", version, [event], Metadata(), now=T0 + timedelta(i))
                    version += 1
            await log.append("a", version, [DomainStopped()], Metadata(), now=T0 + timedelta(5))
            incremental = await table_rows(log.fetch_all)
            await log.rebuild()
            return incremental, await table_rows(log.fetch_all)

    incremental, rebuilt = run(go())
    assert incremental == rebuilt
    assert [row[-1] is not None for row in incremental["history"]] == [True] * 3


def test_expected_version_conflict_writes_nothing(store: Store) -> None:
    """An append at a stale version raises ConcurrencyError and leaves the log unchanged."""
    async def go() -> tuple:
        async with store() as log:
            await log.append("a", 0, [_defined("a")], Metadata(), now=T0)
            with pytest.raises(ConcurrencyError) as caught:
                await log.append("a", 0, [DomainStarted(config=CONFIG)], Metadata(), now=T0)
            return caught.value.expected, caught.value.actual, await log.head()

    assert run(go()) == (0, 1, 1)


def test_concurrent_appends_are_serialised_without_gaps(store: Store) -> None:
    """Many tasks appending at once produce positions 1..N with no gap or duplicate."""
    async def go() -> list[int]:
        async with store() as log:
            await asyncio.gather(*(log.append(f"d{i}", 0, [_defined(f"d{i}")], Metadata(), now=T0)
                                   for i in range(64)))
            return [r.position async for r in log.read_all()]

    assert run(go()) == list(range(1, 65))


def test_read_stream_and_as_of(store: Store) -> None:
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


def test_subscribe_catches_up_then_follows(store: Store) -> None:
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
            await log.append("b", 0, [_defined("b"), LiveValueObserved(property="memory", value=1, previous=None)],
                             Metadata(), now=T0)
            await asyncio.wait_for(task, 5)
            return seen

    assert run(go()) == [1, 2, 3, 4]


POSITION, STREAM, VERSION, TYPE, SCHEMA_VERSION, DATA, METADATA, RECORDED_AT, HASH = range(9)
Tampering = Callable[[list[Row]], list[Row]]


async def _tamper_story(store: Store) -> int:
    """Append six events to streams `a` and `b`, interleaved; return the verified head."""
    async with store() as log:
        await log.append("a", 0, [_defined("a")], Metadata(principal="alice"), now=T0)
        await log.append("b", 0, [_defined("b")], Metadata(principal="bob"), now=T0 + timedelta(seconds=1))
        await log.append("a", 1, [DomainStarted(config=CONFIG), LiveValueObserved(property="memory", value=2**29, previous=2**30)],
                         Metadata(), now=T0 + timedelta(seconds=2))
        await log.append("b", 1, [DomainStarted(config=CONFIG)], Metadata(), now=T0 + timedelta(seconds=3))
        await log.append("a", 3, [DomainStopped()], Metadata(principal="alice"), now=T0 + timedelta(seconds=4))
        return await log.verify_chain()


def _relinked(prev: str, row: Row) -> Row:
    """Return `row` with the hash a forger computes: right for its own fields, linked to `prev`."""
    p, stream, version, type_, schema_version, data, metadata, recorded_at = row[:8]
    return [*row[:8], chain_hash(prev, position=p, stream=stream, version=version, type=type_,
                                 schema_version=schema_version, data=data, metadata=metadata,
                                 recorded_at=recorded_at)]


def _forged(position: int, prev: str = GENESIS_HASH) -> Row:
    """Return a forged `DomainStopped` of a new stream `x` at `position`, hashed over its own fields."""
    return _relinked(prev, [position, "x", 1, "DomainStopped", 1, "{}",
                            '{"correlation_id":null,"principal":"mallory","request_id":null}',
                            "2026-01-01T00:00:09.000000+00:00", ""])


def _edit(position: int, column: int, value: Any) -> Tampering:
    """Return a tampering that sets one stored field of the event at `position`."""
    def change(rows: list[Row]) -> list[Row]:
        rows[position - 1][column] = value
        return rows
    return change


def _swap(rows: list[Row]) -> list[Row]:
    rows[2][POSITION], rows[4][POSITION] = 5, 3  # a's DomainStarted and b's: stream versions still fit
    return rows


def _insert_linked(rows: list[Row]) -> list[Row]:
    shifted = [[r[0] + 1, *r[1:]] for r in rows[3:]]
    return [*rows[:3], _forged(4, rows[2][HASH]), *shifted]


def _insert_unlinked(rows: list[Row]) -> list[Row]:
    return [*rows[:3], _forged(4), *[[r[0] + 1, *r[1:]] for r in rows[3:]]]


# (tampering, first bad position, what verify says about it)
TAMPERINGS: dict[str, tuple[Tampering, int, str]] = {
    # Each stored field of an event, edited in turn.
    "position": (_edit(3, POSITION, 10), 3, "event missing (next stored position is 4)"),
    "stream": (_edit(2, STREAM, "c"), 2, "hash does not match the stored event"),
    "version": (_edit(5, VERSION, 3), 5, "stream b version 3 out of order"),
    "type": (_edit(6, TYPE, "DomainUndefined"), 6, "hash does not match the stored event"),
    "schema_version": (_edit(4, SCHEMA_VERSION, 0), 4, "hash does not match the stored event"),
    "data": (lambda rows: _edit(3, DATA, rows[2][DATA].replace("1073741824", "1073741825"))(rows),
             3, "hash does not match the stored event"),
    "metadata": (_edit(2, METADATA, '{"correlation_id":null,"principal":"eve","request_id":null}'),
                 2, "hash does not match the stored event"),
    "recorded_at": (_edit(1, RECORDED_AT, "2030-01-01T00:00:00.000000+00:00"),
                    1, "hash does not match the stored event"),
    "hash": (_edit(4, HASH, "f" * 64), 4, "hash does not match the stored event"),
    # Whole events removed, added or moved.
    "delete": (lambda rows: [r for r in rows if r[POSITION] != 2], 2, "event missing (next stored position is 3)"),
    "reorder": (_swap, 3, "hash does not match the stored event"),
    # A forged event linked to its predecessor: the link of the event after it breaks.
    "insert_linked": (_insert_linked, 5, "hash does not match the stored event"),
    # A forged event whose hash fits its own fields but not the chain.
    "insert_unlinked": (_insert_unlinked, 4, "hash does not match the stored event"),
    "append_unlinked": (lambda rows: [*rows, _forged(7)], 7, "hash does not match the stored event"),
    # Regression (issue #6): verify read only positions 1 to 2**62, so events stored outside passed unseen.
    "before_first": (lambda rows: [_forged(0), *rows], 0, "an event is stored at position 0, before position 1"),
    "far_past_head": (lambda rows: [*rows, _forged(2**62 + 1, rows[-1][HASH])],
                      7, f"event missing (next stored position is {2**62 + 1})"),
    # Regression (issue #6): a linked event whose data, metadata or time does not decode raised a bare
    # TypeError or ValueError instead of naming its position.
    "undecodable_metadata": (lambda rows: [*rows, _relinked(rows[-1][HASH], [*_forged(7)[:6], '{"role":"admin"}', *_forged(7)[7:]])],
                             7, "stored metadata does not decode: unexpected field role"),
    "undecodable_time": (lambda rows: [*rows, _relinked(rows[-1][HASH], [*_forged(7)[:7], "yesterday", ""])],
                         7, "stored time does not decode: 'yesterday'"),
    "undecodable_data": (lambda rows: [*rows, _relinked(rows[-1][HASH], [*_forged(7)[:5], "{", *_forged(7)[6:]])],
                         7, "stored DomainStopped does not decode: Expecting property name enclosed in double quotes: "
                         "line 1 column 2 (char 1)"),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_verify_names_the_first_damaged_position(store: Store, tampering: str) -> None:
    """Editing any stored field, or deleting, forging or reordering events, fails verify at the first bad position."""
    change, position, detail = TAMPERINGS[tampering]

    async def verify() -> tuple[int, str]:
        async with store() as log:
            with pytest.raises(ChainBrokenError) as caught:
                await log.verify_chain()
            return caught.value.position, caught.value.detail

    assert run(_tamper_story(store)) == 6
    store.rewrite(change)
    assert run(verify()) == (position, detail)


def test_reads_reach_an_event_stored_far_past_the_head(store: Store) -> None:
    """read_all and read_stream return an event stored past position 2**62, which they once cut off (issue #6)."""
    async def read() -> tuple[list[int], list[int]]:
        async with store() as log:
            return [r.position async for r in log.read_all()], [r.position for r in await log.read_stream("x")]

    run(_tamper_story(store))
    store.rewrite(lambda rows: [*rows, _forged(2**62 + 1, rows[-1][HASH])])
    assert run(read()) == ([1, 2, 3, 4, 5, 6, 2**62 + 1], [2**62 + 1])


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
