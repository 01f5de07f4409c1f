"""The PostgreSQL backend of the log, on asyncpg: several processes and hosts share one database.

It mirrors `SQLiteEventLog`: one writing connection per log, serialised by a
lock, and reads beside it (a small pool, since an asyncpg connection runs one
statement at a time).  Appends that arrive together are committed together
(group commit, see `common.GroupCommit`): one statement writes a batch's
events, their hash links, the projection rows and its `NOTIFY`, and commits
them, a transaction of its own (see `_BatchTx`).  Appends from every process
are serialised by an advisory lock (see `APPEND_LOCK`), so positions are
gap-free and become visible in order; a writer keeps it for its session while
its appends keep coming, so that a batch costs two round trips however many
appends it holds: the reads (see `_Tx.fetch_many`) and the write.  While it
keeps the lock, nobody else writes, and it remembers what its batches read
and wrote (see `common.WriterMemory`): a batch whose rows it remembers is
the write alone, one round trip.  Taking the lock and giving it back cost
one each, when appends start and stop.
Subscribers wake on `LISTEN` through a dedicated connection.

Projection SQL is written with `?` placeholders, as for SQLite; this module
turns them into `$1..$n`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import re
import urllib.parse
from datetime import datetime
from typing import Any, AsyncContextManager, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence

import asyncpg
import attrs
from asyncpg import exceptions as pg

from vmledger.eventstore.backends.common import (
    COLUMNS, FILTER_INDEXES, INSERT, SCAN_COLUMNS, GroupCommit, LogReads, Outcome, PendingAppend, WriterMemory,
    batch_steps, check_ledger_tables,
)
from vmledger.eventstore.backends.locks import KeyLocks
from vmledger.eventstore.codec import dumps_plain
from vmledger.eventstore.errors import InvalidRequestError, StorageError
from vmledger.eventstore.events import Event
from vmledger.eventstore.log import Metadata, Projector, RecordedEvent, run_steps

__all__ = ["PostgresEventLog", "CHANNEL", "APPEND_LOCK"]

# The schema of the SQLite backend.  Text columns are `COLLATE "C"`, so they
# compare and sort bytewise (by code point in UTF-8) as in SQLite and Python,
# whatever the database's default collation: under a locale such as en-US,
# `ORDER BY name` would put "alpha" before "Zed", listings would differ from
# SQLite, and `verify` would find the stored projection rows out of the order a
# rebuild produces.  The projector's portable DDL gets the same treatment.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        position BIGINT PRIMARY KEY,
        stream TEXT COLLATE "C" NOT NULL,
        version INTEGER NOT NULL,
        type TEXT COLLATE "C" NOT NULL,
        schema_version INTEGER NOT NULL,
        data TEXT COLLATE "C" NOT NULL,
        metadata TEXT COLLATE "C" NOT NULL,
        recorded_at TEXT COLLATE "C" NOT NULL,
        hash TEXT COLLATE "C" NOT NULL,
        UNIQUE (stream, version))""",
    "CREATE INDEX IF NOT EXISTS events_recorded_at ON events (recorded_at)",
    *FILTER_INDEXES,
)

#: The channel every append notifies, with its last position as the payload.
CHANNEL = "vmledger_events"

# Why appends are serialised, and not merely numbered by a sequence (issue 4).
#
# A position drawn from a sequence becomes visible in commit order, not in
# draw order: T1 draws 7, T2 draws 8 and commits first, a follower reading
# "position > 6" sees 8, moves past 7, and never sees 7 when T1 commits.  Two
# proven cures exist:
#
# * Serialise appends with an advisory lock (chosen).  Under it an append
#   reads the last row, numbers its events last+1.. and commits; the lock
#   goes to the next writer only after the commit is visible (a transaction's
#   lock goes at its end; a batch, a statement of its own, has committed when
#   it returns, before its writer gives back the lock it holds for its
#   session), so the next append starts from it and positions become visible
#   strictly in order, with no gap (a rolled-back append leaves no hole,
#   unlike a sequence).  The hash chain needs this order anyway: each link
#   covers its predecessor's hash, so appends cannot be computed concurrently.
# * Let appends run concurrently and have readers stop below the safe horizon
#   `pg_snapshot_xmin(pg_current_snapshot())` compared with a stored
#   `pg_current_xact_id()` per row.  It buys concurrent writers, but every row
#   carries an xid, every follower read needs the extra predicate, followers
#   lag behind the oldest open transaction in the whole database, positions
#   from a sequence have gaps, and the chain still needs a serial order.
#
# The cost: one transaction at a time per database.  Write throughput is
# bounded by (appends per batch) / (duration of one batch transaction,
# including its commit's WAL flush): group commit gathers a process's
# concurrent appends into one transaction, but transactions of different
# processes are never flushed together.  One slow batch (a large projection
# update, a stalled client holding the lock) delays every writer, up to
# `busy_timeout` (`lock_timeout`), after which they fail with StorageError.
# A writer whose appends keep coming holds the lock `_HOLD` seconds at most
# while another process waits for it, and `_LINGER` after its last append,
# before it queues again behind the others.
# Readers and followers never wait for the lock.
# Advisory locks are per database, so ledgers in other databases of the same
# cluster do not contend.

#: The advisory lock key every append (and schema set-up) holds: "vmledger" in ASCII.
#: Operators find its holder in `pg_locks` (locktype advisory, classid 1986882661, objid 1684497778).
APPEND_LOCK = 0x766D6C6564676572

#: The first key of the advisory locks by stream (`exclusive`), "vmlg"; the second is the stream's (`locks.key_of`).
#: Two int4 keys, apart from APPEND_LOCK's bigint key space (`objsubid` 2 in `pg_locks`).
STREAM_LOCKS = 0x766D6C67

#: Tries one stream lock; gives one back.
_TRY, _FREE = "SELECT pg_try_advisory_lock($1, $2)", "SELECT pg_advisory_unlock($1, $2)"
#: Gives back the stream locks $2 and tries those of $3 (keys apart from $2's), in one round trip: each
#: try's answer, in $3's order (dearer than `_TRY` or `_FREE` alone: those serve where they can).
_LOCKING = ("SELECT (SELECT count(pg_advisory_unlock($1, k)) FROM unnest($2::int4[]) AS k), "
            "(SELECT array_agg(pg_try_advisory_lock($1, k) ORDER BY i) "
            "FROM unnest($3::int4[]) WITH ORDINALITY AS t(k, i))")

#: Seconds a writer keeps the append lock for its session at most, while its appends keep coming, when
#: another process waits for it (`_WAITING`): then it gives the lock back, and queues behind the others.
_HOLD = 0.02
#: Whether a session of this database waits for the append lock (a bigint key: its high and low halves).
_WAITING = ("SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid = $1 AND objid = $2 AND objsubid = 1)")
#: Seconds a writer keeps the lock after its last batch, for the next append of a caller that appends again
#: at once (a request's outcome after its intent): another process waits that long more, at most.
_LINGER = 0.005
#: A follower that cannot reach the server tries again after this many seconds, times the tries so far, at most five.
_RECONNECT_SECONDS = 1.0
_log = logging.getLogger("vmledger")
#: Prepared statements the writing connection keeps (asyncpg's default is 100).
_STATEMENTS = 1024
#: The writing connection's planner settings.  A batch's statements each touch a few rows by key
#: (`_Tx.write_all`), in pages the server has cached, and join them with the rows they read from a JSON text,
#: which the planner takes for 100 rows: under the default `random_page_cost` of 4 (a disk's seeks), and with
#: hash joins, it scanned a table of up to some ten thousand rows whole, `history` or `drift`, for a few of
#: its rows; every statement of the writing connection touches rows by key, or a table whole with no join.
_WRITER_SETTINGS = {"random_page_cost": "1.1", "enable_hashjoin": "off", "enable_mergejoin": "off"}

_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, ConnectionError)
# InternalClientError too: the state asyncpg is left in where the server ended the session under an operation.
_LOST = (pg.PostgresConnectionError, pg.AdminShutdownError, pg.CrashShutdownError,
         pg.CannotConnectNowError, ConnectionError, OSError, asyncpg.InternalClientError)

# The snapshot connection of the task that holds `snapshot()`: (log, connection, lock).
_SNAPSHOT: contextvars.ContextVar[tuple[Any, Any, asyncio.Lock] | None] = contextvars.ContextVar(
    "vmledger_pg_snapshot", default=None)

_TEXT_TYPE = re.compile(r"\bTEXT\b(?!\s+COLLATE)")


#: The share of a page that inserts fill in the tables whose rows are updated in place, in percent.
_FILLFACTOR = 70


async def _leave_room(conn: asyncpg.Connection, tables: Sequence[str]) -> None:
    """Have inserts leave part of each page of `tables` free, where their rows' updates then fit.

    An update that changes no indexed column and fits in its row's page is
    a heap-only tuple: no index gets a new entry.  With full pages (the
    default), most history rows' outcomes went to another page, with an
    entry in each of the table's four indexes.  Pages written before keep
    their fill.
    """
    for table in tables:
        options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE oid = to_regclass($1)", table)
        if f"fillfactor={_FILLFACTOR}" not in (options or ()):
            await conn.execute(f"ALTER TABLE {table} SET (fillfactor = {_FILLFACTOR})")


def _bytewise(statement: str) -> str:
    """Return a portable `CREATE TABLE` with its TEXT columns collated bytewise, as in SQLite."""
    if not statement.lstrip().upper().startswith("CREATE TABLE"):
        return statement
    return _TEXT_TYPE.sub('TEXT COLLATE "C"', statement)


_TOKENS = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|\?""")
# SQLite's JSON functions as the projections call them, on JSON text: `json_each(column)` and
# `json_extract(column, '$.key')`.  PostgreSQL's take the text cast to json.
_JSON_EACH = re.compile(r"\bjson_each\(([\w.]+)\)")
# And `json_each(?)` of a JSON array of texts (`common.TEXTS`), whose `value` column is text.  Behind `IN`, it
# becomes `= ANY` of an array: the planner, which takes a set-returning function for 100 rows, joined those
# with a scan of the whole table where `= ANY` probes its index.
_JSON_EACH_PARAMETER = re.compile(r"\bjson_each\(\?\)")
_IN_TEXTS = re.compile(r"\bIN \(SELECT value FROM json_each\(\?\)\)")
_JSON_EXTRACT = re.compile(r"\bjson_extract\(([\w.]+), '\$\.(\w+)'\)")


@functools.lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    """Return `sql` in PostgreSQL's dialect.

    Its `?` placeholders are numbered `$1..$n` (quoted text and comments
    kept), and SQLite's JSON functions (`_JSON_EACH`, `_JSON_EXTRACT`)
    become PostgreSQL's.
    """
    sql = _JSON_EXTRACT.sub(r"(\1::json ->> '\2')", _JSON_EACH.sub(r"json_each(\1::json)", sql))
    sql = _IN_TEXTS.sub("= ANY(ARRAY(SELECT json_array_elements_text(?::json)))", sql)
    sql = _JSON_EACH_PARAMETER.sub("json_array_elements_text(?::json)", sql)
    count = 0

    def number(m: re.Match[str]) -> str:
        nonlocal count
        if m.group() != "?":
            return m.group()
        count += 1
        return f"${count}"

    return _TOKENS.sub(number, sql)


def _database(dsn: str) -> str:
    """Return the database name of a DSN, for messages (never its password)."""
    return urllib.parse.urlsplit(dsn).path.lstrip("/") or "postgres"


def _server(dsn: str) -> str:
    """Return the database and server a DSN names, for messages (never its password)."""
    parts = urllib.parse.urlsplit(dsn)
    query = urllib.parse.parse_qs(parts.query)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or query.get("host", [os.environ.get("PGHOST", "")])[0] or "the default socket"
    port_text = str(port or query.get("port", [os.environ.get("PGPORT", "")])[0] or 5432)
    return f"database {_database(dsn)!r} at {host}, port {port_text}"


def _lost(e: BaseException) -> bool:
    return isinstance(e, _LOST) or (isinstance(e, asyncpg.InterfaceError) and "closed" in str(e))


def _int4(key: int) -> int:
    """Return an unsigned 32-bit key as the int4 PostgreSQL's advisory locks take."""
    return key - (1 << 32) if key >= 1 << 31 else key


def _storage_error(e: BaseException, *, committing: bool = False, connecting: bool = False,
                   server: str | None = None) -> StorageError:
    if isinstance(e, pg.LockNotAvailableError):
        return StorageError(f"another writer held the append lock past the busy timeout ({e})")
    if isinstance(e, pg.ReadOnlySQLTransactionError):
        return StorageError(f"the database is read-only for this session (default_transaction_read_only, "
                            f"or a standby server) ({e})")
    if isinstance(e, pg.InsufficientPrivilegeError):
        return StorageError(f"the database is read-only for this role: it lacks the privilege to write "
                            f"({e})")
    if isinstance(e, pg.DiskFullError):
        return StorageError(f"the database server's disk is full; the failed write was not stored ({e})")
    if _lost(e):
        what = "cannot connect to" if connecting else "lost the connection to"
        text = f"{what} PostgreSQL{f' ({server})' if server else ''} ({type(e).__name__}: {e})"
        if committing:
            text += "; the append may or may not have been recorded: re-read before retrying"
        return StorageError(text)
    return StorageError(f"PostgreSQL: {type(e).__name__}: {e}")


#: The parameter types of each statement `write_all` ran, as PostgreSQL inferred them.
_PARAMETER_TYPES: dict[str, tuple[str, ...]] = {}
_VALUES = re.compile(r"\bVALUES \(([^()]*)\)")
_PARAMETER = re.compile(r"\$(\d+)")


@functools.lru_cache(maxsize=512)
def _from_json(sql: str, types: tuple[str, ...], index: int) -> str:
    """Return `sql` (`INSERT … VALUES`, `UPDATE … SET … WHERE`, `DELETE … WHERE`) reading its rows from JSON.

    The rows are one JSON array of arrays, parameter `$index`: parameter
    `$k` becomes element k - 1 of each, cast to the type PostgreSQL gave
    `$k` (`types`); the rows keep their order.  One text a statement,
    written by the JSON encoder in C, costs the client less than an array a
    column, which asyncpg encodes element by element.
    """
    rows = f"jsonb_array_elements(${index}::jsonb) AS _u(_r)"
    columns = lambda text: _PARAMETER.sub(  # noqa: E731
        lambda m: f"(_u._r ->> {int(m[1]) - 1})::{types[int(m[1]) - 1]}", text)
    if sql.startswith("INSERT INTO "):
        values = _VALUES.search(sql)
        if values:
            return f"{sql[:values.start()]}SELECT {columns(values[1])} FROM {rows}{sql[values.end():]}"
    elif sql.startswith("DELETE FROM ") and " WHERE " in sql:
        table, _, where = sql[len("DELETE FROM "):].partition(" WHERE ")
        return f"DELETE FROM {table} USING {rows} WHERE {columns(where)}"
    elif sql.startswith("UPDATE ") and " SET " in sql and " WHERE " in sql:
        target, _, where = sql.partition(" WHERE ")
        return f"{columns(target)} FROM {rows} WHERE {columns(where)}"
    raise ValueError(f"write_all takes INSERT … VALUES, UPDATE … SET … WHERE and DELETE … WHERE statements, "
                     f"not {sql!r}")


_PLAIN_INSERT = re.compile(r"INSERT INTO (\w+) \(([\w, ]+)\) VALUES \([?, ]+\)")


async def _insert_many(conn: asyncpg.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """Run `sql` for each of `rows`; a plain `INSERT … VALUES` of several rows as one `COPY`.

    A rebuild's or an import's rows go in about twice as fast so: the server
    reads them as one stream, not as one statement each.
    """
    plain = _PLAIN_INSERT.fullmatch(sql)
    if plain is not None and len(rows) > 1:
        await conn.copy_records_to_table(plain[1], records=rows, columns=plain[2].split(", "))
    elif rows:
        await conn.executemany(_pg(sql), rows)


class _Tx:
    """The `Transaction` a projector writes through: the writer's open connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._conn.fetch(_pg(sql), *params)]

    async def fetch_many(self, queries: Sequence[tuple[str, Sequence[Any]]],
                         params: Sequence[Any] = ()) -> list[list[tuple[Any, ...]]]:
        # One round trip: each query's rows come back as one array of anonymous records.
        if len(queries) == 1:
            return [await self.fetch_all(*queries[0])]
        sql = "SELECT " + ", ".join(f"ARRAY(SELECT _q FROM ({q}) AS _q)" for q, _ in queries)
        row = await self._conn.fetchrow(_pg(sql), *[p for _, ps in queries for p in ps])
        return [[tuple(r) for r in rows] for rows in row]

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self._conn.execute(_pg(sql), *params)

    async def write_all(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]],
                        params: Sequence[Any] = ()) -> None:
        parts, args = await self._parts(statements)
        if parts:
            *first, last = parts
            await self._conn.execute(_with(first) + last, *args)

    async def _parts(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> tuple[list[str], list[Any]]:
        """Return the statements of `write_all` that have rows, each reading them from a JSON text, and those texts.

        One round trip under the append lock instead of one per statement:
        each statement reads its rows from one JSON text (`_from_json`), and
        data-modifying statements in WITH each run once, to completion, on the
        same snapshot (so in any order).
        """
        parts: list[str] = []
        args: list[Any] = []
        for sql, rows in statements:
            if rows:
                pg = _pg(sql)
                if pg not in _PARAMETER_TYPES:
                    _PARAMETER_TYPES[pg] = tuple(f'"{t.schema}"."{t.name}"'
                                                 for t in (await self._conn.prepare(pg)).get_parameters())
                args.append(dumps_plain(rows))
                parts.append(_from_json(pg, _PARAMETER_TYPES[pg], len(args)))
        return parts, args

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await _insert_many(self._conn, sql, rows)


def _with(statements: Sequence[str]) -> str:
    """Return the WITH clause that runs `statements` (data-modifying) before a main statement, or ''."""
    return "WITH " + ", ".join(f"s{i} AS ({sql})" for i, sql in enumerate(statements)) + " " if statements else ""


class _BatchTx(_Tx):
    """The `Transaction` of a batch of appends: reads, then one statement that writes the batch and commits it.

    It runs on the writing connection outside any explicit transaction,
    while the connection holds the append lock for its session
    (`PostgresEventLog._hold`): nobody else writes meanwhile, so the reads,
    each a statement of its own, see the log the batch follows, and its one
    `write_all` statement is the batch's transaction, committed when it
    returns (a statement of its own is atomic), with the `NOTIFY` of the
    batch's last event.  It takes no other writing statement, which would
    commit alone.
    """

    def __init__(self, conn: asyncpg.Connection, run: Callable[[Any], Awaitable[Any]]) -> None:
        super().__init__(conn)
        self._run = run
        #: Whether the writing statement was sent: from then on a lost connection leaves the outcome unknown.
        self.committing = False

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        raise RuntimeError("a batch of appends writes in one write_all statement")

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise RuntimeError("a batch of appends writes in one write_all statement")

    async def write_all(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]],
                        params: Sequence[Any] = ()) -> None:
        parts, args = await self._parts(statements)
        last = max((row[0] for sql, rows in statements if sql == INSERT for row in rows), default=None)
        if not parts or last is None:
            raise RuntimeError("a batch of appends writes its events")
        self.committing = True
        # The notification goes out with the commit, in commit order, and never on a rollback.  Its position
        # is a parameter: in the text, it would make every batch's statement a new one to prepare.
        await self._run(self._conn.execute(f"{_with(parts)}SELECT pg_notify('{CHANNEL}', ${len(args) + 1}::text)",
                                           *args, str(last)))


async def _keep(conn: asyncpg.Connection) -> None:
    """Return a reader to the pool as it is: readers change no session state.

    asyncpg still rolls back an open transaction; skipping its `RESET ALL`
    and friends saves a round trip per read.
    """


# A part of the log, for a worker process of a rebuild or a `verify`: the streams whose last character's code
# point modulo the parts is the part's number (`projections._parts.part_of`; `ascii` gives a code point in UTF-8).
_PART_ROWS = (f"SELECT {SCAN_COLUMNS} FROM events WHERE position > $1 AND position <= $2 "
              "AND coalesce(ascii(right(stream, 1)), 0) % $3 = $4 ORDER BY position LIMIT $5")


@attrs.frozen
class _PartRows:
    """Reads a part of the log through a connection of its own: picklable, for a worker process.

    A rebuild's workers read while the rebuilding writer holds the append
    lock, so every chunk read holds the events it folds (stored events never
    change); `verify`'s read the events up to the head it checks.
    """

    dsn: str
    timeout: float

    def __call__(self, part: int, parts: int, head: int, chunk: int, hashes: bool = False
                 ) -> Iterator[list[tuple[Any, ...]]]:
        loop = asyncio.new_event_loop()
        try:
            conn = loop.run_until_complete(asyncpg.connect(
                self.dsn, timeout=self.timeout,
                server_settings={"application_name": "vmledger", "default_transaction_read_only": "on"}))
            try:
                encoding = loop.run_until_complete(conn.fetchval("SHOW server_encoding"))
                if parts > 1 and encoding != "UTF8":  # `ascii` gives a byte, not a code point: not `part_of`'s parts
                    raise OSError(f"the database's encoding is {encoding}, not UTF8: its parts are not this process's")
                last, query = 0, _PART_ROWS.replace(SCAN_COLUMNS, COLUMNS, 1) if hashes else _PART_ROWS
                while rows := loop.run_until_complete(conn.fetch(query, last, head, parts, part, chunk)):
                    yield [tuple(r) for r in rows]
                    last = rows[-1][0]
            finally:
                loop.run_until_complete(conn.close())
        finally:
            loop.close()


class PostgresEventLog(LogReads):
    """An event log in one PostgreSQL database, with projection tables beside it.

    Use it as an async context manager.  `dsn` is a `postgresql://` URL as
    libpq takes it.  `busy_timeout` bounds how long a writer waits for another
    process's append before `StorageError`; `poll_interval` is how often a
    subscriber re-reads should a notification be lost (it wakes on `NOTIFY`).
    """

    def __init__(
        self,
        dsn: str,
        projector: Projector,
        *,
        busy_timeout: float = 30.0,
        poll_interval: float = 1.0,
        readers: int = 4,
        connect_timeout: float = 10.0,
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        self.dsn = dsn
        self.read_only = read_only
        self._busy_timeout = busy_timeout
        self._create = create and not read_only
        self._projector = projector
        self._settings = {
            "lock_timeout": f"{int(busy_timeout * 1000)}ms",
            "client_min_messages": "warning",  # no NOTICE for each `IF NOT EXISTS`
            "application_name": "vmledger",
        }
        if read_only:
            # A read-only log needs SELECT alone, and the server holds it to that.
            self._settings["default_transaction_read_only"] = "on"
        self._poll = poll_interval
        self._readers = readers
        self._connect_timeout = connect_timeout
        self._open = False
        self._writer: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._listen_lock = asyncio.Lock()
        self._settling: asyncio.Task[Any] | None = None
        #: The writing connection while it holds the append lock for its session (`_hold`), and since when.
        self._held: asyncpg.Connection | None = None
        self._held_since = 0.0
        #: What the batches of the session's hold of the lock read and wrote: a new one at each hold.
        self._memory = WriterMemory()
        self._appended = asyncio.Event()
        self._group = GroupCommit(self._commit_batch, idle=self._idle, linger=_LINGER)
        #: The connection whose session holds the locks by stream (`exclusive`), and the task that runs
        #: the lock statements on it, each for every try and give-back that came meanwhile (`_locking`).
        self._locker: asyncpg.Connection | None = None
        self._locking_task: asyncio.Task[None] | None = None
        self._lock_tries: dict[int, asyncio.Future[bool]] = {}
        self._lock_frees: set[int] = set()
        self._locks = KeyLocks(self._lock_stream, self._unlock_stream)
        #: Write transactions committed by this log: appends per commit shows group commit at work.
        self.commits = 0
        #: Whether opening rebuilt the projections, their rows made by another version's fold rules.
        self.rebuilt_on_open = False
        #: Reads a part of the log in a worker process (`projections._parts`), for a rebuild or `verify`.
        self.part_rows = _PartRows(dsn, connect_timeout)

    async def __aenter__(self) -> "PostgresEventLog":
        self._open = True
        try:
            conn = self._writer = await self._connect(writer=True)
            await self._check_ledger(conn)
            if self.read_only:
                self._writer = None
                await conn.close()
            else:
                async with conn.transaction():
                    # Serialised with appends and other processes' schema set-up:
                    # concurrent `CREATE ... IF NOT EXISTS` can collide in PostgreSQL.
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK)
                    for statement in (*_SCHEMA, *map(_bytewise, self._projector.schema)):
                        await conn.execute(statement)
                    await _leave_room(conn, self._projector.updated_in_place)
                    self.rebuilt_on_open = await run_steps(
                        _Tx(conn), self._projector.upgrade(self.part_rows), thread=True)
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self._readers, reset=_keep,
                server_settings=self._settings, timeout=self._connect_timeout)
        except _DRIVER_ERRORS as e:
            await self.aclose()
            raise _storage_error(e, connecting=True, server=_server(self.dsn)) from e
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _check_ledger(self, conn: asyncpg.Connection) -> None:
        """Refuse a database whose schema holds tables but no log, and a missing log unless creating.

        A new log needs a database that stores any text: UTF-8 (or
        SQL_ASCII, which stores bytes as given).  In another encoding a
        request naming a character it lacks would fail for good.

        Raises:
            NotALedgerError: the current schema holds tables but not the log's.
            LedgerNotFoundError: it holds no log and this log may not create one.
            InvalidRequestError: it holds no log, and its encoding cannot store any text.
        """
        tables = [r[0] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
            "ORDER BY table_name")]
        columns = [r[0] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = 'events'")] if "events" in tables else []
        where = f"PostgreSQL database {_database(self.dsn)!r}"
        check_ledger_tables(tables, columns, create=self._create,
                            foreign=f"the {where} holds tables but no vmledger ledger",
                            missing=f"no ledger in the {where}: it holds no vmledger tables")
        if not tables and (encoding := await conn.fetchval("SHOW server_encoding")) not in ("UTF8", "SQL_ASCII"):
            raise InvalidRequestError(
                f"the {where} is encoded in {encoding}, which cannot store every text a request may hold: "
                "make the ledger in a UTF8 database (CREATE DATABASE … ENCODING 'UTF8' TEMPLATE template0)")

    async def _connect(self, *, writer: bool = False) -> asyncpg.Connection:
        # A batch's reads list its streams and requests, so their text varies with its size:
        # a cache that keeps every size's prepared statement saves a round trip per statement.
        settings = {**self._settings, **_WRITER_SETTINGS} if writer else self._settings
        return await asyncpg.connect(self.dsn, server_settings=settings,
                                     timeout=self._connect_timeout, statement_cache_size=_STATEMENTS)

    async def aclose(self) -> None:
        """Finish the appends under way, then close every connection: the writer, the readers and the listener."""
        await self._group.drain()
        self._open = False
        listener, writer, locker, pool = self._listener, self._writer, self._locker, self._pool
        self._listener = self._writer = self._locker = self._pool = None
        for conn in (listener, writer, locker):
            if conn is not None:
                try:
                    await conn.close(timeout=5)
                except (*_DRIVER_ERRORS, TimeoutError):
                    conn.terminate()
        if pool is not None:
            try:
                async with asyncio.timeout(5):
                    await pool.close()
            except (*_DRIVER_ERRORS, TimeoutError):
                pool.terminate()
        self._wake()

    def _wake(self) -> None:
        self._appended.set()
        self._appended = asyncio.Event()

    def _need_open(self) -> None:
        if not self._open:
            raise StorageError("the ledger is closed")

    # Writing.

    async def _settled(self) -> None:
        """Wait for the end of a shielded statement on the writing connection, if one runs."""
        self._need_open()
        if self.read_only:
            raise StorageError(f"the ledger in the PostgreSQL database {_database(self.dsn)!r} is open read-only")
        await self._unsettled()

    async def _unsettled(self) -> None:
        if self._settling is not None:
            # A cancelled caller's shielded statement (COMMIT, ROLLBACK, a batch's write) may still run on it.
            # Waited for even once done, it gives the event loop a turn, which the next batch needs: the callers
            # the last write woke append again at once (a finished request's caller, its next intent) and join
            # it.  Taken without that turn, batches were a quarter smaller, and 64 callers slower.
            await asyncio.wait({self._settling})
            self._settling = None

    async def _connected(self) -> asyncpg.Connection:
        """Return the writing connection, connecting again if it is closed, once a shielded statement on it ends."""
        await self._settled()
        if self._writer is None or self._writer.is_closed():
            if self._writer is not None:
                self._writer.terminate()
                self._writer = None
            self._writer = await self._connect(writer=True)
        return self._writer

    async def _on_writer(self, statement: Callable[[asyncpg.Connection], Awaitable[Any]]
                         ) -> tuple[asyncpg.Connection, Any]:
        """Run `statement(connection)` on the writing connection; return both.

        An idle connection the server dropped (a restart, a failover) fails
        its first statement, which then did nothing: it runs once more on a
        new connection.  After any other failure the connection is closed, its
        state unknown.
        """
        retried = False
        while True:
            conn = await self._connected()
            try:
                return conn, await statement(conn)
            except BaseException as e:
                conn.terminate()
                if retried or not isinstance(e, _DRIVER_ERRORS) or not _lost(e):
                    raise
                retried = True

    async def _begin(self) -> tuple[asyncpg.Connection, bool]:
        """Open a transaction on the writing connection, reconnecting if the server dropped it.

        The transaction asks for the append lock in the same round trip,
        without waiting for it: returns the connection and whether it holds the lock.
        """
        # A simple query of two statements: its status is the last one's, "SELECT 1" if it got the lock.
        conn, status = await self._on_writer(
            lambda conn: conn.execute(f"BEGIN; SELECT WHERE pg_try_advisory_xact_lock({APPEND_LOCK})"))
        return conn, status == "SELECT 1"

    async def _hold(self) -> asyncpg.Connection:
        """Return the writing connection, holding the append lock for its session (waiting up to `lock_timeout`).

        The lock stays with the session across batches while appends keep
        coming (see `_commit_batch`), until `_release`, or until the
        connection closes, which frees it on the server.
        """
        await self._settled()
        if self._held is not None and self._held is self._writer and not self._held.is_closed():
            return self._held
        conn, locked = await self._on_writer(
            lambda conn: conn.fetchval("SELECT pg_try_advisory_lock($1)", APPEND_LOCK))
        if not locked:  # another process holds it: wait, up to `lock_timeout`
            try:
                await conn.execute("SELECT pg_advisory_lock($1)", APPEND_LOCK)
            except BaseException as e:
                if not isinstance(e, asyncpg.PostgresError):  # the wait's outcome is unknown: end the session
                    conn.terminate()
                raise
        self._held, self._held_since = conn, asyncio.get_running_loop().time()
        self._memory = WriterMemory()  # others may have written since this session last held the lock
        return conn

    async def _release(self) -> None:
        """Give the session's append lock back, if held (under `_lock`)."""
        await self._unsettled()  # a cancelled caller's statement may still run on it: one at a time
        conn, self._held = self._held, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.execute("SELECT pg_advisory_unlock($1)", APPEND_LOCK)
            except BaseException:
                conn.terminate()  # its session, and the lock, end on the server
                raise

    async def _give_way(self) -> None:
        """Give the append lock back if another process waits for it, else keep it `_HOLD` seconds more (under `_lock`).

        Kept, the lock keeps the writer's memory of its rows (`WriterMemory`), which spares its batches their reads.
        """
        conn = self._held
        if conn is None or conn.is_closed():
            return
        try:
            waiting = await conn.fetchval(_WAITING, APPEND_LOCK >> 32, APPEND_LOCK & 0xFFFFFFFF)
        except BaseException:
            conn.terminate()  # its session, and the lock, end on the server
            raise
        if waiting:
            await self._release()
        else:
            self._held_since = asyncio.get_running_loop().time()

    async def _idle(self) -> None:
        """Give the append lock back once no append waits, so that other processes' appends get their turn."""
        async with self._lock:
            with contextlib.suppress(*_DRIVER_ERRORS):
                await self._release()

    async def _shielded(self, statement: Awaitable[Any]) -> Any:
        """Run a statement (a COMMIT, a ROLLBACK, a batch's write) to its end even if the caller is cancelled."""
        task = asyncio.ensure_future(statement)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._settling = task
        return await asyncio.shield(task)

    async def _finish(self, conn: asyncpg.Connection, statement: str) -> None:
        """Run COMMIT or ROLLBACK to its end even if the caller is cancelled meanwhile."""
        await self._shielded(conn.execute(statement))

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """Hold the writer lock, one transaction and the append lock; commit at the end."""
        async with self._lock:
            committing = False
            self._memory = WriterMemory()  # what this transaction writes, the batches of the hold did not
            try:
                conn, locked = await self._begin()
                try:
                    if not locked:  # another process holds it: wait, up to `lock_timeout`
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK)
                    yield conn
                    committing = True
                    await self._finish(conn, "COMMIT")
                except BaseException:
                    if not committing and not conn.is_closed() and conn.is_in_transaction():
                        try:
                            await self._finish(conn, "ROLLBACK")
                        except _DRIVER_ERRORS:
                            conn.terminate()  # state unknown: the next append reconnects
                    raise
            except _DRIVER_ERRORS as e:
                raise _storage_error(e, committing=committing) from e

    async def append(
        self,
        stream: str,
        expected_version: int,
        events: Sequence[Event],
        metadata: Metadata,
        *,
        now: datetime,
    ) -> list[RecordedEvent]:
        """Append `events` to `stream` at `expected_version`, with projections; return them once committed.

        Appends that arrive while a transaction is under way are gathered into
        the next one (group commit), under the append lock: one commit's WAL
        flush serves them all, and a batch costs one or two round trips however
        many appends it holds (see `_commit_batch`).  Each is checked and
        folded in memory before anything is written, so a refused append does
        not fail its neighbours, and each caller returns only after the commit
        that holds its events.  A cancelled caller's append may still be
        committed: treat cancellation as an unknown outcome and re-read.

        Raises:
            ConcurrencyError: the stream is at another version; nothing was written.
            StorageError: PostgreSQL failed (lock wait past the timeout, lost
                connection, read-only database); when the connection was lost
                during the commit the append may have been recorded.
        """
        self._need_open()
        return await self._group.append(stream, expected_version, events, metadata, now)

    def exclusive(self, name: str, *, work: float = 0.0) -> AsyncContextManager[None]:
        """Hold the lock of `name` that every process writing this database honours, for the block (see `locks`).

        An advisory lock of a session of its own: should that session end
        (the server restarted), the lock is gone with it.  Another process's
        holder is waited for `work` seconds plus the busy timeout at most.

        Raises:
            LockTimeoutError: another process held it longer.
            StorageError: the ledger is closed or read-only, or the server cannot be reached.
        """
        self._need_open()
        if self.read_only:
            raise StorageError(f"the ledger in the PostgreSQL database {_database(self.dsn)!r} is open read-only")
        return self._locks.hold(name, self._busy_timeout + work)

    async def _lock_stream(self, key: int) -> bool:
        """Try the lock of `key` on the locking session: whether it is held now."""
        self._need_open()
        # One try of a key at a time (`KeyLocks`); one a cancelled caller left unsent is this one's.
        tried = self._lock_tries[key] = asyncio.get_running_loop().create_future()
        self._run_locking()
        try:
            return await asyncio.shield(tried)
        except _DRIVER_ERRORS as e:
            raise _storage_error(e) from e
        except asyncio.CancelledError:
            tried.add_done_callback(functools.partial(self._tried_unawaited, key))
            raise

    def _tried_unawaited(self, key: int, tried: asyncio.Future[bool]) -> None:
        """Give back a lock the server granted to a caller cancelled meanwhile: nobody is left to hold it."""
        if not tried.cancelled() and tried.exception() is None and tried.result():
            self._free(key)

    async def _unlock_stream(self, key: int) -> None:
        self._free(key)

    def _free(self, key: int) -> None:
        """Give back the lock of `key`, with the next lock statement.

        Nobody waits for it: should the statement fail, the session ends, and its locks with it.  A try of the
        same key that comes first (this process's next holder) takes it over without asking the server.
        """
        self._lock_frees.add(key)
        self._run_locking()

    def _run_locking(self) -> None:
        if self._locking_task is None or self._locking_task.done():
            self._locking_task = asyncio.ensure_future(self._locking())

    async def _locking(self) -> None:
        """Run the tries and give-backs of stream locks that wait, a statement for all that came meanwhile."""
        while self._lock_tries or self._lock_frees:
            tries, frees = self._lock_tries, self._lock_frees
            self._lock_tries, self._lock_frees = {}, set()
            for key in frees & tries.keys():  # the session holds it: it passes to the next holder
                frees.discard(key)
                tries.pop(key).set_result(True)
            if not tries and not frees:
                continue
            try:
                if self._locker is None or self._locker.is_closed():
                    self._need_open()
                    self._locker = await self._connect()
                held = await self._lock_statement(self._locker, list(tries), list(frees))
            except BaseException as e:
                if self._locker is not None:
                    self._locker.terminate()  # its locks go with it
                    self._locker = None
                for tried in tries.values():
                    if isinstance(e, Exception):
                        tried.set_exception(e)
                    else:
                        tried.cancel()
                if not isinstance(e, Exception):
                    raise
                continue
            for tried, got in zip(tries.values(), held):
                tried.set_result(got)

    @staticmethod
    async def _lock_statement(conn: asyncpg.Connection, tries: list[int], frees: list[int]) -> list[bool]:
        """Give back the locks of `frees`, try those of `tries`, in one round trip; return the tries' answers."""
        if not frees and len(tries) == 1:
            return [await conn.fetchval(_TRY, STREAM_LOCKS, _int4(tries[0]))]
        if not tries and len(frees) == 1:
            await conn.fetchval(_FREE, STREAM_LOCKS, _int4(frees[0]))
            return []
        _, held = await conn.fetchrow(_LOCKING, STREAM_LOCKS, [_int4(k) for k in frees], [_int4(k) for k in tries])
        return held or []  # no tries: NULL

    async def _commit_batch(self, take: Callable[[], list[PendingAppend]]) -> list[Outcome]:
        """Write the appends `take` gives in one statement, under the append lock of the session (see `batch_steps`).

        The batch is taken once the lock is held: appends that arrive while
        the lock is being taken join this batch.  The lock stays held while
        appends keep coming, so that a batch costs two round trips (its reads,
        and the statement that writes and commits it), or one when the
        writer's memory of the hold holds what the reads would give; it is
        given back once no append waits (`_idle`), or after `_HOLD` seconds if
        another process waits for it.
        """
        async with self._lock:
            tx: _BatchTx | None = None
            try:
                tx = _BatchTx(conn := await self._hold(), self._shielded)
                batch, memory = take(), self._memory
                try:
                    outcomes = await run_steps(tx, batch_steps(self._projector.batch(), batch, memory))
                except asyncpg.PostgresError as e:
                    if not memory.recalled or _lost(e):  # the server ended the session: no answer to retry on
                        raise
                    # The server refused the batch, written from memory without reads, and wrote nothing: a
                    # new request's id it already held (see `batch_steps`).  The batch runs again, with reads.
                    tx, memory = _BatchTx(conn, self._shielded), WriterMemory()
                    self._memory = memory
                    outcomes = await run_steps(tx, batch_steps(self._projector.batch(), batch, memory))
            except BaseException as e:
                # An error the server answered leaves the session as it was (a failed statement did nothing).
                # After any other, its state is unknown: close it, and the server frees the lock with it;
                # but a write under way goes on, shielded, and the next batch waits for it (`_settled`).
                # Either way the memory may miss what was written: the next batch reads.
                self._memory = WriterMemory()
                if tx is not None and (not isinstance(e, asyncpg.PostgresError) or _lost(e)) and not tx.committing:
                    tx._conn.terminate()
                if isinstance(e, _DRIVER_ERRORS):
                    raise _storage_error(e, committing=tx is not None and tx.committing) from e
                raise
            if asyncio.get_running_loop().time() - self._held_since > _HOLD:
                with contextlib.suppress(*_DRIVER_ERRORS):  # the batch is committed whatever this does
                    await self._give_way()
        self.commits += 1
        self._wake()
        return outcomes

    async def import_rows(self, chunks: Iterable[Sequence[Sequence[Any]]]) -> None:
        """Insert already-chained rows verbatim into the empty log, with their projections, in one transaction.

        `chunks` gives the rows a chunk at a time; the caller checks the
        chain (see `transfer.checked_chunks`), this checks only that the rows
        follow each other (see `TableProjector.imported`).  Whatever reading
        or folding a chunk raises rolls back every chunk.

        Raises:
            InvalidRequestError: the log holds events, or the rows do not follow each other.
            StorageError: PostgreSQL failed; nothing was written.
        """
        async with self._transaction() as conn:
            await run_steps(_Tx(conn), self._projector.imported(chunks), thread=True)
        self._wake()

    async def rebuild(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Replace every projection row with a fold of the whole log, in one write transaction.

        The transaction holds the append lock, so appends wait meanwhile and
        nothing is missed.  Returns the last position folded.

        Raises:
            StorageError: PostgreSQL failed; the projections are unchanged.
        """
        async with self._transaction() as conn:
            # Not in bulk: a reader would wait for the end of a transaction that dropped an index it reads.
            return await run_steps(_Tx(conn), self._projector.rebuild(progress, self.part_rows), thread=True)

    # Reading.

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Return every row of a read query (with `?` placeholders) on a reading connection.

        Inside `snapshot()` the query runs in the snapshot's transaction.

        Raises:
            StorageError: PostgreSQL failed or the ledger is closed.
        """
        self._need_open()
        query = _pg(sql)
        try:
            held = _SNAPSHOT.get()
            if held is not None and held[0] is self:
                async with held[2]:
                    rows = await held[1].fetch(query, *params)
            else:
                if self._pool is None:
                    raise StorageError("the ledger is closed")
                async with self._pool.acquire() as conn:
                    rows = await conn.fetch(query, *params)
        except _DRIVER_ERRORS as e:
            raise _storage_error(e) from e
        return [tuple(r) for r in rows]

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator["PostgresEventLog"]:
        """Hold one read transaction so that several queries see the same log position.

        It is a `REPEATABLE READ READ ONLY` transaction on one reading
        connection; this task's reads (and its child tasks') run in it.

        Raises:
            StorageError: PostgreSQL failed or the ledger is closed.
        """
        self._need_open()
        held = _SNAPSHOT.get()
        if held is not None and held[0] is self:
            yield self
            return
        if self._pool is None:
            raise StorageError("the ledger is closed")
        try:
            async with self._pool.acquire() as conn:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    token = _SNAPSHOT.set((self, conn, asyncio.Lock()))
                    try:
                        yield self
                    finally:
                        _SNAPSHOT.reset(token)
        except _DRIVER_ERRORS as e:
            raise _storage_error(e) from e

    async def _listen(self) -> None:
        """Make sure the listening connection is up (reconnecting after a loss)."""
        async with self._listen_lock:
            self._need_open()
            if self._listener is not None and not self._listener.is_closed():
                return
            conn = await self._connect()
            try:
                await conn.add_listener(CHANNEL, self._notified)
            except BaseException:
                conn.terminate()
                raise
            conn.add_termination_listener(self._listener_lost)
            self._listener = conn

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self._wake()

    def _listener_lost(self, conn: asyncpg.Connection) -> None:
        if self._listener is conn:
            self._listener = None
            self._wake()  # re-read now; the next round listens again

    async def subscribe(self, *, from_position: int = 0) -> AsyncIterator[RecordedEvent]:
        """Yield every event after `from_position`, then follow new appends (from any process).

        It listens before each catch-up read, so an append committed during
        the read still wakes it; a poll every `poll_interval` covers a lost
        listening connection.  A server that cannot be reached (a restart, a
        failover) is waited for, trying again every few seconds, with a
        warning: it reads on from the last event it gave once it answers, so
        it skips and repeats nothing.

        Raises:
            StorageError: PostgreSQL failed otherwise, or the ledger is closed.
        """
        last, lost = from_position, 0
        while True:
            try:
                try:
                    await self._listen()
                except _DRIVER_ERRORS as e:
                    raise _storage_error(e) from e
                if lost:
                    _log.warning("following PostgreSQL again, from position %d", last)
                    lost = 0
                woken = self._appended
                async for rec in self.read_all(from_position=last):
                    yield rec
                    last = rec.position
            except StorageError as e:
                if not self._open or e.__cause__ is None or not _lost(e.__cause__):
                    raise
                if not lost:
                    _log.warning("%s; following again once it answers (from position %d)", e, last)
                lost += 1
                await asyncio.sleep(min(_RECONNECT_SECONDS * lost, 5 * _RECONNECT_SECONDS))
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await woken.wait()
