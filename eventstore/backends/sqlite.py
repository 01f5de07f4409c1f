"""The SQLite backend of the log, on aiosqlite: one file, WAL, durable commits.

One writer per database per process: `SQLiteEventLog` owns the only writing
connection and serialises appends with a lock.  Each append is one
`BEGIN IMMEDIATE` transaction holding the events, their hash links and the
projection rows, committed with `synchronous=FULL`.  Reads use a second
connection; WAL lets them run beside the writer, and a busy timeout lets
several processes share the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import datetime
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import aiosqlite
import attrs

from eventstore.backends._common import COLUMNS, LogReads, chained_rows, record
from eventstore.errors import ConcurrencyError, InvalidRequestError, StorageError, VmledgerError
from eventstore.events import Event
from eventstore.log import Metadata, Projector, RecordedEvent

__all__ = ["SQLiteEventLog"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        position INTEGER PRIMARY KEY,
        stream TEXT NOT NULL,
        version INTEGER NOT NULL,
        type TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        data TEXT NOT NULL,
        metadata TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        hash TEXT NOT NULL,
        UNIQUE (stream, version))""",
    "CREATE INDEX IF NOT EXISTS events_recorded_at ON events (recorded_at)",
)
_POLL_SECONDS = 0.2


def _storage_error(e: sqlite3.Error) -> StorageError:
    text = str(e)
    if "locked" in text or "busy" in text:
        return StorageError(f"the database stayed locked by another writer past the busy timeout ({text})")
    return StorageError(f"SQLite: {text}")


_MAX_BATCH = 256


@attrs.define
class _Append:
    """One caller's append, waiting for the next group commit."""

    stream: str
    expected: int
    events: tuple[Event, ...]
    metadata: Metadata
    now: datetime
    future: "asyncio.Future[list[RecordedEvent]]"


class _Tx:
    """The `Transaction` a projector writes through: the writer's open connection."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self._conn.execute(sql, params)

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)


class SQLiteEventLog(LogReads):
    """An event log in one SQLite file, with projection tables beside it.

    Use it as an async context manager.  `busy_timeout` bounds how long a
    writer waits for another process's transaction before `StorageError`.
    """

    def __init__(self, path: str, projector: Projector, *, busy_timeout: float = 30.0) -> None:
        self.path = path
        self._projector = projector
        self._busy_ms = int(busy_timeout * 1000)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._appended = asyncio.Event()
        self._waiting: list[_Append] = []
        #: Write transactions committed by this log: appends per commit shows group commit at work.
        self.commits = 0
        self._flusher: asyncio.Task[None] | None = None

    def _probe(self) -> None:
        # aiosqlite leaves its worker thread signalling the event loop after a
        # failed connect; opening once with sqlite3 first turns the common
        # failures (missing directory, no permission) into a clean error.
        sqlite3.connect(self.path).close()

    async def __aenter__(self) -> "SQLiteEventLog":
        try:
            await asyncio.to_thread(self._probe)
            self._writer = await self._connect()
            await self._writer.execute("BEGIN IMMEDIATE")
            for statement in (*_SCHEMA, *self._projector.schema):
                await self._writer.execute(statement)
            await self._writer.commit()
            self._reader = await self._connect()
        except sqlite3.Error as e:
            await self.aclose()
            raise _storage_error(e) from e
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def aclose(self) -> None:
        """Finish the appends under way, then close both connections."""
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        for conn in (self._writer, self._reader):
            if conn is not None:
                await conn.close()
        self._writer = self._reader = None

    def _need(self, conn: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if conn is None:
            raise StorageError("the ledger is closed")
        return conn

    # Writing.

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Hold the writer lock and one `BEGIN IMMEDIATE` transaction, committed durably."""
        conn = self._need(self._writer)
        async with self._lock:
            try:
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    # A cancelled caller must not leave a commit half-awaited.
                    await asyncio.shield(conn.commit())
                    self.commits += 1
                except BaseException:
                    if conn.in_transaction:
                        await asyncio.shield(conn.rollback())
                    raise
            except sqlite3.Error as e:
                raise _storage_error(e) from e

    async def append(
        self,
        stream: str,
        expected_version: int,
        events: Sequence[Event],
        metadata: Metadata,
        *,
        now: datetime,
    ) -> list[RecordedEvent]:
        """Append `events` to `stream` at `expected_version`, with projections; return them once durable.

        Appends that arrive while a commit is under way are gathered into the
        next transaction (group commit): one `fsync` serves them all, each
        keeps its own version check inside a savepoint, so a refused append
        does not fail its neighbours, and each caller returns only after the
        commit that holds its events.  A cancelled caller's append may still
        be committed: treat cancellation as an unknown outcome and re-read.

        Raises:
            ConcurrencyError: the stream is at another version; nothing was written.
            StorageError: SQLite failed (locked past the timeout, disk full, read-only).
        """
        if not events:
            raise ValueError("append needs at least one event")
        self._need(self._writer)
        item = _Append(stream=stream, expected=expected_version, events=tuple(events), metadata=metadata,
                       now=now, future=asyncio.get_running_loop().create_future())
        self._waiting.append(item)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await item.future

    async def _flush(self) -> None:
        """Commit waiting appends, a batch per transaction, until none wait."""
        while self._waiting:
            batch = [a for a in self._waiting[:_MAX_BATCH] if not a.future.done()]
            del self._waiting[:_MAX_BATCH]
            outcomes: list[list[RecordedEvent] | Exception] = []
            try:
                async with self._transaction() as conn:
                    for a in batch:
                        outcomes.append(await self._append_one(conn, a))
            except BaseException as e:
                failure = e if isinstance(e, Exception) else StorageError("the append was interrupted")
                for a in batch:
                    if not a.future.done():
                        a.future.set_exception(failure)
                if not isinstance(e, Exception):
                    raise
                continue
            self._wake()
            for a, outcome in zip(batch, outcomes):
                if a.future.done():
                    continue
                if isinstance(outcome, Exception):
                    a.future.set_exception(outcome)
                else:
                    a.future.set_result(outcome)

    async def _append_one(self, conn: aiosqlite.Connection, a: "_Append") -> list[RecordedEvent] | Exception:
        """Write one append inside the batch's transaction, undone alone if it is refused."""
        await conn.execute("SAVEPOINT append")
        try:
            records = await self._append_in_tx(conn, a.stream, a.expected, a.events, a.metadata, a.now)
            await self._projector.project(_Tx(conn), records)
        except (VmledgerError, ValueError, TypeError) as e:
            await conn.execute("ROLLBACK TO append")
            return e
        finally:
            await conn.execute("RELEASE append")
        return records

    async def _append_in_tx(
        self, conn: aiosqlite.Connection, stream: str, expected: int,
        events: Sequence[Event], metadata: Metadata, now: datetime,
    ) -> list[RecordedEvent]:
        async with conn.execute("SELECT max(version) FROM events WHERE stream = ?", (stream,)) as cur:
            actual = (await cur.fetchone())[0] or 0  # type: ignore[index]
        if actual != expected:
            raise ConcurrencyError(stream, expected, actual)
        async with conn.execute("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1") as cur:
            last = await cur.fetchone()
        position, prev = (last[0], last[1]) if last else (0, None)
        rows, records = chained_rows(stream, expected, events, metadata, now, position, prev)
        await conn.executemany(f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return records

    async def import_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        """Insert already-chained rows verbatim after the last event, with their projections.

        The caller checks the chain (see `ChainChecker`); this checks only
        that the rows continue the stored log.

        Raises:
            InvalidRequestError: the rows do not start right after the last stored event.
            StorageError: SQLite failed; nothing of these rows was written.
        """
        async with self._transaction() as conn:
            async with conn.execute("SELECT max(position) FROM events") as cur:
                head = (await cur.fetchone())[0] or 0  # type: ignore[index]
            if rows[0][0] != head + 1:
                raise InvalidRequestError(f"the import starts at position {rows[0][0]}, the log ends at {head}")
            await conn.executemany(f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            await self._projector.project(_Tx(conn), [record(r) for r in rows])
        self._wake()

    def _wake(self) -> None:
        """Wake this process's subscribers after a commit."""
        self._appended.set()
        self._appended = asyncio.Event()

    async def rebuild(self, feed: Callable[[RecordedEvent], None],
                      write: Callable[[Any], Awaitable[None]]) -> int:
        """Feed every event to `feed`, then run `write(tx)` in one write transaction.

        The bulk of the log is read before the transaction; events appended
        meanwhile (by any process) are fed inside it, so nothing is missed.
        Returns the last position fed.

        Raises:
            StorageError: SQLite failed; the projections are unchanged.
        """
        last = 0
        async for rec in self.read_all():
            feed(rec)
            last = rec.position
        async with self._transaction() as conn:
            async with conn.execute(
                f"SELECT {COLUMNS} FROM events WHERE position > ? ORDER BY position", (last,)
            ) as cur:
                for row in await cur.fetchall():
                    feed(record(row))
                    last = row[0]
            await write(_Tx(conn))
        return last

    # Reading.

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Return every row of a read query on the reading connection.

        Raises:
            StorageError: SQLite failed.
        """
        conn = self._need(self._reader)
        try:
            async with conn.execute(sql, params) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as e:
            raise _storage_error(e) from e

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator["SQLiteEventLog"]:
        """Hold one read transaction so that several queries see the same log position."""
        conn = self._need(self._reader)
        async with self._read_lock:
            await conn.execute("BEGIN")
            try:
                yield self
            finally:
                await conn.execute("COMMIT")

    async def subscribe(self, *, from_position: int = 0) -> AsyncIterator[RecordedEvent]:
        """Yield every event after `from_position`, then follow new appends (from any process)."""
        last = from_position
        while True:
            woken = self._appended
            async for rec in self.read_all(from_position=last):
                yield rec
                last = rec.position
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL_SECONDS):  # other processes append too
                    await woken.wait()
