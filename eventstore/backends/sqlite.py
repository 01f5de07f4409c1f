"""The SQLite backend of the log: one file, WAL, durable commits.

One writer per database per process: `SQLiteEventLog` owns the only writing
connection, a plain `sqlite3` connection used from one thread of its own.
Appends that arrive together are committed together (group commit): the
whole batch — events, hash links, projection rows — runs as one synchronous
function in that thread, one `BEGIN IMMEDIATE` transaction committed with
`synchronous=FULL`, so a batch costs one thread hop and one `fsync`; its
appends are checked, chained and folded in memory, then written with one
statement per table, so it costs a few statements however many appends.
The writer remembers the rows its batches read and wrote (`WriterMemory`)
for as long as no other connection commits to the file (`PRAGMA
data_version`), which spares a batch its reads.
Reads use a second connection, through aiosqlite; WAL lets them run beside
the writer, and a busy timeout lets several processes share the file.
A third connection, in a thread of its own, copies committed pages from the
WAL back into the database (checkpoints) beside the writer, rather than in
the commit that happens to fill the WAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import sqlite3
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, AsyncContextManager, AsyncIterator, Callable, Generator, Iterable, Iterator, Sequence, TypeVar

import aiosqlite
import attrs

from vmledger.eventstore.backends.common import (
    COLUMNS, FILTER_INDEXES, SCAN_COLUMNS, GroupCommit, LogReads, Outcome, PendingAppend, WriterMemory, batch_steps,
    check_ledger_tables, cpus,
)
from vmledger.eventstore.backends.locks import FileLocks, KeyLocks
from vmledger.eventstore.errors import LedgerNotFoundError, StorageError
from vmledger.eventstore.events import Event
from vmledger.eventstore.log import Metadata, Projector, RecordedEvent, Step, run_steps_sync, stopping, uncancelled

__all__ = ["SQLiteEventLog", "SyncTx"]

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
    *FILTER_INDEXES,
)
_POLL_SECONDS = 0.2
#: How long the checkpointer lets commits gather before it copies their pages into the database.
_CHECKPOINT_SECONDS = 0.1
#: WAL pages past which the writer checkpoints itself, should the checkpointer fall behind or fail
#: (SQLite's default, 1000, would make it take over from the checkpointer under load).
_WRITER_CHECKPOINT_PAGES = 10_000

T = TypeVar("T")


# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_READONLY, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 8, 13, 14, 26


def _storage_error(e: sqlite3.Error) -> StorageError:
    """Return the one-line `StorageError` that says what went wrong in words a user acts on, caused by `e`."""
    error = _translate(e)
    error.__cause__ = e  # also where the error crosses from the writer thread without a `raise ... from`
    return error


def _open_error(path: str, e: sqlite3.Error) -> StorageError:
    """Return the error of an open that failed with `e`, naming the file."""
    error = StorageError(f"{path} is a directory, not a ledger's file" if os.path.isdir(path)
                         else f"{path}: {_translate(e)}")
    error.__cause__ = e
    return error


def _translate(e: sqlite3.Error) -> StorageError:
    text = str(e)
    code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
    if "locked" in text or "busy" in text:
        return StorageError(f"the database stayed locked by another writer past the busy timeout ({text})")
    if code == _SQLITE_FULL:
        return StorageError(f"the disk is full, or the database reached its size limit; "
                            f"the failed write was not stored ({text})")
    if code == _SQLITE_READONLY:
        return StorageError(f"the database is read-only for this process: check the permissions of the file "
                            f"and its directory, and the mount ({text})")
    if code == _SQLITE_NOTADB:
        return StorageError(f"the file is not an SQLite database, so not a vmledger ledger ({text})")
    if code == _SQLITE_CANTOPEN:
        return StorageError(f"cannot open the database file: the path must name a file in an existing, "
                            f"writable directory ({text})")
    return StorageError(f"SQLite: {text}")


def _check_ledger(conn: sqlite3.Connection, path: str, *, create: bool) -> None:
    """Refuse a database that is not a vmledger ledger, and a missing ledger unless `create`.

    Raises:
        NotALedgerError: the database holds tables but not the log's.
        LedgerNotFoundError: it holds no tables and `create` is false.
    """
    tables = [name for name, in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")] if "events" in tables else []
    check_ledger_tables(tables, columns, create=create,
                        foreign=f"{path} is an SQLite database but not a vmledger ledger",
                        missing=f"no ledger at {path}: the file holds no ledger")


def _in_process() -> KeyLocks:
    """Return locks that order this process's tasks alone: an in-memory database has no other process."""
    async def held(key: int) -> bool:
        return True

    async def freed(key: int) -> None:
        return None
    return KeyLocks(held, freed)


def _file_locks(path: str) -> FileLocks:
    try:
        return FileLocks(path)
    except OSError as e:
        raise StorageError(f"cannot open the lock file {path}: {e.strerror}") from e


class SyncTx:
    """The `SyncTransaction` a projector writes through, on a plain sqlite3 connection (the writer thread's)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def fetch_many(self, queries: Sequence[tuple[str, Sequence[Any]]],
                   params: Sequence[Any] = ()) -> list[list[tuple[Any, ...]]]:
        return [self._conn.execute(sql, ps).fetchall() for sql, ps in queries]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(sql, params)

    def write_all(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]],
                  params: Sequence[Any] = ()) -> None:
        for sql, rows in statements:
            self._conn.executemany(sql, rows)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


# A part of the log, for a rebuild's worker process: the streams whose last character's code point
# modulo the parts is the part's number (`projections._parts.part_of`).
_PART_ROWS = (f"SELECT {SCAN_COLUMNS} FROM events WHERE position > ? AND position <= ? "
              "AND coalesce(unicode(substr(stream, -1)), 0) % ? = ? ORDER BY position LIMIT ?")


@attrs.frozen
class _PartRows:
    """Reads a part of the log through a connection of its own: picklable, for a worker process.

    A rebuild's workers read while the rebuilding writer holds the write
    lock, so every chunk read sees the log it folds; `verify`'s read the
    events up to the head it checks, which no append changes.  `uri` is the
    file's, as the log's reader opens it.
    """

    uri: str
    busy_ms: int

    def __call__(self, part: int, parts: int, head: int, chunk: int, hashes: bool = False
                 ) -> Iterator[list[tuple[Any, ...]]]:
        conn = sqlite3.connect(self.uri, uri=True, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {self.busy_ms}")
            conn.execute("PRAGMA query_only = 1")
            last, query = 0, _PART_ROWS.replace(SCAN_COLUMNS, COLUMNS, 1) if hashes else _PART_ROWS
            while rows := conn.execute(query, (last, head, parts, part, chunk)).fetchall():
                yield rows
                last = rows[-1][0]
        finally:
            conn.close()


def _retrieved(done: asyncio.Future[Any]) -> None:
    """Mark what a write ended with as seen: a cancelled caller's write that then fails is not logged as lost."""
    if not done.cancelled():
        done.exception()


class _Checkpointer:
    """Checkpoints the WAL from a thread and connection of its own, a while after commits.

    A checkpoint copies committed pages from the WAL into the database file
    and syncs it; SQLite would otherwise run one inside whichever commit
    fills the WAL past 1,000 pages, which then costs that commit as much
    again.  Here the writer only nudges (`nudge`), and a passive checkpoint
    runs beside it (sqlite3 releases the GIL meanwhile), waiting for no
    reader or writer.  Durability is unchanged: a commit is durable once
    the WAL holding it is synced, and a checkpoint never moves an
    uncommitted page.  Should this fall behind, the writer checkpoints
    itself past `_WRITER_CHECKPOINT_PAGES`.
    """

    def __init__(self, path: str, busy_ms: int) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
        self._due = threading.Event()
        self._stop = threading.Event()
        #: The last error a checkpoint raised (the writer's own checkpoints cover for it), or None.
        self.error: sqlite3.Error | None = None
        self._thread = threading.Thread(target=self._run, name="vmledger-sqlite-checkpointer", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """Say that a commit added pages to the WAL."""
        self._due.set()

    def _run(self) -> None:
        try:
            while True:
                self._due.wait()
                # One checkpoint for the commits of a while, not one each; `close` ends the while at once,
                # rather than keep a command that just committed waiting for it.
                if self._stop.wait(_CHECKPOINT_SECONDS):
                    return
                self._due.clear()
                if self._stop.is_set():  # `close` came before its nudge, which the line above may have cleared
                    return
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.error = None
                except sqlite3.Error as e:
                    # A full disk, say: kept, and tried again on the next nudge; the writer's own
                    # checkpoints bound the WAL meanwhile.
                    self.error = e
        finally:
            self._conn.close()

    def close(self) -> None:
        """Stop the thread, after the checkpoint under way if any, and close its connection."""
        self._stop.set()
        self._due.set()
        self._thread.join()


class SQLiteEventLog(LogReads):
    """An event log in one SQLite file, with projection tables beside it.

    Use it as an async context manager.  `busy_timeout` bounds how long a
    writer waits for another process's transaction before `StorageError`.
    `max_pages` caps the file at that many pages (SQLite's `max_page_count`,
    which holds per connection): a write past it fails with `StorageError`
    as on a full disk.  The tests use it to run out of space.

    With `create` false, a missing file, or one without the log's tables, is
    a `LedgerNotFoundError` rather than a new ledger.  With `read_only` the
    log opens no writing connection and needs only read permission on the
    file: it reads through SQLite's read-only mode, and where the WAL's
    shared-memory file cannot be set up (a directory the process cannot
    write), as an immutable file; it never creates a ledger.  A database
    that holds tables but not the log's is a `NotALedgerError` either way.
    """

    def __init__(self, path: str, projector: Projector, *, busy_timeout: float = 30.0,
                 max_pages: int | None = None, create: bool = True, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._create = create and not read_only
        self._projector = projector
        self._busy_ms = int(busy_timeout * 1000)
        self._max_pages = None if max_pages is None else int(max_pages)
        self._thread: ThreadPoolExecutor | None = None
        self._checkpointer: _Checkpointer | None = None
        #: The locks by stream every writing process honours (`exclusive`), made on first use, and their file.
        self._locks: KeyLocks | None = None
        self._locks_path = ""
        self._writer: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._appended = asyncio.Event()
        self._group = GroupCommit(self._commit_batch)
        #: The writer thread's memory of the rows, with the `data_version` it holds for (see `_batch`).
        self._memory: tuple[WriterMemory, int] | None = None
        #: Write transactions committed by this log: appends per commit shows group commit at work.
        self.commits = 0
        #: Whether opening rebuilt the projections, their rows made by another version's fold rules.
        self.rebuilt_on_open = False
        #: Reads a part of the log in a worker process (`projections._parts`), for a rebuild or `verify`; None in memory.
        self.part_rows: _PartRows | None = None

    async def __aenter__(self) -> "SQLiteEventLog":
        # The file the connections open, for worker processes, whatever the working directory becomes.
        if self.path != ":memory:":
            self.part_rows = _PartRows(self._uri(), self._busy_ms)
            self._locks_path = os.path.abspath(self.path) + "-locks"  # whatever the working directory becomes
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="vmledger-sqlite-writer")
        try:
            if self.path != ":memory:" and not self._create and not os.path.exists(self.path):
                raise LedgerNotFoundError(f"no ledger at {self.path}: the file does not exist")
            if self.read_only:
                # Checked in the thread with a plain connection, for the same reason as the writer below.
                uri = await self._run(self._read_only_uri)
                self.part_rows = _PartRows(uri, self._busy_ms)
                self._reader = await aiosqlite.connect(uri, uri=True, isolation_level=None)
                await self._reader.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
                await self._reader.execute("PRAGMA query_only = 1")
                return self
            # The writer first: a plain connect turns the common failures
            # (missing directory, no permission) into a clean error, where a
            # failed aiosqlite connect leaves its worker thread behind.
            # An open that rebuilds the rows older rules made stops as a rebuild does.
            self._writer = await stopping(lambda stop: self._run(self._open_writer, stop))
            if self.path != ":memory:":
                self._checkpointer = await self._run(_Checkpointer, self.path, self._busy_ms)
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            for pragma in self._pragmas():
                await self._reader.execute(pragma)
        except sqlite3.Error as e:
            await self.aclose()
            raise _open_error(self.path, e) from e
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _pragmas(self) -> tuple[str, ...]:
        cap = () if self._max_pages is None else (f"PRAGMA max_page_count = {self._max_pages}",)
        return (f"PRAGMA busy_timeout = {self._busy_ms}", "PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL",
                *cap)

    def _uri(self) -> str:
        """Return the URI of the file, absolute: the same file whatever the working directory becomes."""
        return "file:" + urllib.parse.quote(os.path.abspath(self.path))

    def _read_only_uri(self) -> str:
        """Return the URI a read-only reader opens: the first of these that can read the file.

        A plain open, which SQLite makes read-only by itself when the file is
        not writable, and which can clear the WAL files it made when it
        closes; read-only mode; and an immutable open, for a WAL file whose
        shared-memory index cannot be made (a directory the process cannot
        write).  The reader runs with `query_only` whichever it is.
        """
        base = self._uri()
        for uri in (base, base + "?mode=ro", base + "?mode=ro&immutable=1"):
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
            try:
                # A WAL file needs its shared-memory index, which a reader makes
                # beside the file: where it cannot, only an immutable open reads.
                _check_ledger(conn, self.path, create=False)
                return uri
            except sqlite3.OperationalError as e:
                if (e.sqlite_errorcode & 0xFF) not in (_SQLITE_CANTOPEN, _SQLITE_READONLY):
                    raise
                if "immutable" in uri:
                    raise StorageError(f"cannot read the database file {self.path}: check its permissions "
                                       f"and its directory's ({e})") from e
            finally:
                conn.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _open_writer(self, stop: threading.Event) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            _check_ledger(conn, self.path, create=self._create)
            for pragma in self._pragmas():
                conn.execute(pragma)
            conn.execute(f"PRAGMA wal_autocheckpoint = {_WRITER_CHECKPOINT_PAGES}")  # see _Checkpointer
            # A large sort (a rebuild's index builds) may use the other CPUs, a helper thread each.
            conn.execute(f"PRAGMA threads = {cpus() - 1}")
            schema = (*_SCHEMA, *self._projector.schema)
            # The schema's digest, kept in the file's user_version, tells whether
            # the tables are there already: then opening writes nothing and takes
            # no lock, so it never waits for another process's writer.
            # The projector's rules are part of it: rows another version's rules made are rebuilt.
            text = "\n".join((*schema, f"rules {self._projector.rules}"))
            stamp = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 1
            if conn.execute("PRAGMA user_version").fetchone()[0] != stamp:
                conn.execute("BEGIN IMMEDIATE")
                for statement in schema:
                    conn.execute(statement)
                # The events are committed, so a long log's worker processes can read it meanwhile.
                self.rebuilt_on_open = run_steps_sync(
                    SyncTx(conn), self._projector.upgrade(self.part_rows, bulk=True), stop)
                conn.execute(f"PRAGMA user_version = {stamp}")
                conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in the writer thread."""
        if self._thread is None:
            raise StorageError("the ledger is closed")
        return await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(fn, *args))

    async def aclose(self) -> None:
        """Finish the appends under way, then close both connections, even if the caller is cancelled meanwhile."""
        await uncancelled(self._close())

    async def _close(self) -> None:
        await self._group.drain()
        if isinstance(self._locks, FileLocks):
            self._locks.close()
        self._locks = None
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.close)
            self._checkpointer = None
        if self._reader is not None:
            await self._reader.close()
        if self._writer is not None:
            await self._run(self._writer.close)
        if self._thread is not None:
            self._thread.shutdown(wait=False)
        self._writer = self._reader = self._thread = None

    def _need_reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StorageError("the ledger is closed")
        return self._reader

    def _need_writer(self) -> sqlite3.Connection:
        if self.read_only:
            raise StorageError(f"the ledger {self.path} is open read-only")
        if self._writer is None:
            raise StorageError("the ledger is closed")
        return self._writer

    # Writing.

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(connection, *args)` in one durable write transaction, in the writer thread.

        Raises:
            StorageError: SQLite failed; nothing of `fn`'s writes was kept.
        """
        return await self._in_writer(self._atomically, fn, *args)

    async def _in_writer(self, job: Callable[..., T], *args: Any) -> T:
        """Run `job(*args)`, which commits one write transaction or none, in the writer thread (see `_write`)."""
        async with self._lock:
            # Shielded: once the thread runs it, the transaction commits or rolls back whole.  Should the
            # caller be cancelled meanwhile, nobody is left to tell how it ended (see `_retrieved`).
            done = asyncio.ensure_future(self._run(job, *args))
            done.add_done_callback(_retrieved)
            try:
                result = await asyncio.shield(done)
            except sqlite3.Error as e:
                raise _storage_error(e) from e
            self.commits += 1
        if self._checkpointer is not None:
            self._checkpointer.nudge()
        self._wake()
        return result

    async def _write_steps(self, steps: Generator[Step, Any, T]) -> T:
        """Run `steps` in one durable write transaction in the writer thread (see `_write`).

        Cancelled, they stop at their next statement, and the transaction rolls back.
        """
        return await stopping(lambda stop: self._write(lambda conn: run_steps_sync(SyncTx(conn), steps, stop)))

    def _atomically(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._need_writer()
        self._memory = None  # kept only by the batches that commit (`_batch`)
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

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
        is checked and folded in memory before anything is written, so a
        refused append does not fail its neighbours, and each caller returns
        only after the commit that holds its events.  A cancelled caller's
        append may still be committed: treat cancellation as an unknown
        outcome and re-read.

        Raises:
            ConcurrencyError: the stream is at another version; nothing was written.
            StorageError: SQLite failed (locked past the timeout, disk full, read-only).
        """
        self._need_writer()
        return await self._group.append(stream, expected_version, events, metadata, now)

    def exclusive(self, name: str, *, work: float = 0.0) -> AsyncContextManager[None]:
        """Hold the lock of `name` that every process writing this file honours, for the block (see `locks`).

        Another process's holder is waited for `work` seconds plus the busy timeout at most.

        Raises:
            LockTimeoutError: another process held it longer.
            StorageError: the ledger is closed or read-only, or the lock file cannot be locked.
        """
        self._need_writer()
        if self._locks is None:  # made on first use: a ledger no `set` writes to, or read-only, needs none
            self._locks = _in_process() if self.path == ":memory:" else _file_locks(self._locks_path)
        return self._locks.hold(name, self._busy_ms / 1000 + work)

    async def _commit_batch(self, take: Callable[[], list[PendingAppend]]) -> list[Outcome]:
        """Write the appends `take` gives in one transaction, in the writer thread (see `_batch`)."""
        return await self._in_writer(self._batch, take())

    def _batch(self, batch: list[PendingAppend]) -> list[Outcome]:
        """Commit a batch of appends (see `batch_steps`), seeded from the writer's memory where it still holds.

        The memory holds while no other connection has committed since it
        was kept: SQLite's `data_version` moves with any other connection's
        commit (a checkpoint's too, harmlessly), never with this one's.  It
        is kept once the batch commits, and dropped by any other write.
        """
        kept, box = self._memory, []

        def write(conn: sqlite3.Connection) -> list[Outcome]:  # box: the memory the batch used, and its version
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            box[:] = [kept[0] if kept is not None and kept[1] == version else WriterMemory(), version]
            try:
                return run_steps_sync(SyncTx(conn), batch_steps(self._projector.batch(), batch, box[0]))
            except sqlite3.IntegrityError:
                if not box[0].recalled:
                    raise
            # The batch, written from memory without reads, inserted a new request's id the file already
            # held, one the memory had let go: it runs again, from the start, with reads.
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            box[:] = [WriterMemory(), conn.execute("PRAGMA data_version").fetchone()[0]]
            return run_steps_sync(SyncTx(conn), batch_steps(self._projector.batch(), batch, box[0]))

        outcomes = self._atomically(write)
        self._memory = (box[0], box[1])
        return outcomes

    async def import_rows(self, chunks: Iterable[Sequence[Sequence[Any]]]) -> None:
        """Insert already-chained rows verbatim into the empty log, with their projections, in one transaction.

        `chunks` gives the rows a chunk at a time and is read in the writer
        thread; the caller checks the chain (see `transfer.checked_chunks`),
        this checks only that the rows follow each other (see
        `TableProjector.imported`).  Whatever reading or folding a chunk
        raises rolls back every chunk, as does cancelling the call, at its
        next statement.

        Raises:
            InvalidRequestError: the log holds events, or the rows do not follow each other.
            StorageError: SQLite failed; nothing was written.
        """
        # Readers read the committed tables and indexes meanwhile (WAL): the projector may drop indexes.
        await self._write_steps(self._projector.imported(chunks, bulk=True))

    def _wake(self) -> None:
        """Wake this process's subscribers after a commit."""
        self._appended.set()
        self._appended = asyncio.Event()

    async def rebuild(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Replace every projection row with a fold of the whole log, in one write transaction.

        Appends wait meanwhile (other processes up to their busy timeout), so
        nothing is missed.  `progress(position, head)` is called from the
        writer thread.  Returns the last position folded.  A long log is
        folded by worker processes that read the file themselves.  Cancelled,
        it rolls back at its next statement, leaving the projections as they
        were.

        Raises:
            StorageError: SQLite failed; the projections are unchanged.
        """
        return await self._write_steps(self._projector.rebuild(progress, self.part_rows, bulk=True))

    # Reading.

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Return every row of a read query on the reading connection.

        Raises:
            StorageError: SQLite failed.
        """
        conn = self._need_reader()
        try:
            return list(await conn.execute_fetchall(sql, params))
        except sqlite3.Error as e:
            raise _storage_error(e) from e

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator["SQLiteEventLog"]:
        """Hold one read transaction so that several queries see the same log position."""
        conn = self._need_reader()
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
