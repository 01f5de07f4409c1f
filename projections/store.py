"""The projection tables: schema, the in-transaction update, rebuild, and checks.

`TableProjector` implements the `Projector` protocol of the event store: the
backend calls it inside the append's transaction, so a caller reads its own
writes.  SQL here is plain enough for SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter, defaultdict
from typing import Any, Callable, Generator, Iterable, Sequence

from vmledger.eventstore.catalogue import Outcome
from vmledger.eventstore.errors import InvalidRequestError
from vmledger.eventstore.events import ChangeRequested, DomainDefined, Event
from vmledger.eventstore.state import DomainState
from vmledger.eventstore.backends.common import CHUNK, INSERT, SCAN_COLUMNS, TEXTS, WriterMemory, cpus, record, texts
from vmledger.eventstore.log import RecordedEvent, Step, SyncTransaction, Transaction, run_steps, run_steps_sync
from vmledger.projections._parts import PartRows, fold_in_parts
from vmledger.projections._replay import Replay
from vmledger.projections.scan import scan
from vmledger.projections.model import (
    FORGET_REQUEST, KEPT_EPISODES, OUTCOME_DAYS, TABLES, Model, changed_properties, count_outcome_days, domains_row,
    outcome_day_rows, outcome_rows, properties, property_rows, record_from_row, state_from_json,
)

__all__ = ["SCHEMA", "RULES", "TableProjector", "DuplicateRequestError", "table_rows", "ADD_OUTCOME_DAYS",
           "ALL_TABLES", "OUTCOME_DAYS_ROWS"]

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS domains (
        uuid TEXT PRIMARY KEY, name TEXT NOT NULL, guest_type TEXT NOT NULL,
        defined INTEGER NOT NULL, running INTEGER NOT NULL,
        version INTEGER NOT NULL, position BIGINT NOT NULL, state TEXT NOT NULL)""",
    # A defined domain's name is unique: every append checks it under the log's write lock (`_Batch.add`), as
    # does an import, and a rebuild folds a log so checked.  The index only finds a name: a unique one would
    # refuse a batch in which a domain takes the name another gives up, as the batch writes its rows one by one.
    "DROP INDEX IF EXISTS domains_defined_name",
    "CREATE INDEX IF NOT EXISTS domains_by_name ON domains (name) WHERE defined = 1",
    """CREATE TABLE IF NOT EXISTS persistent (
        domain TEXT NOT NULL, property TEXT NOT NULL, value TEXT NOT NULL,
        position BIGINT NOT NULL, request_id TEXT, PRIMARY KEY (domain, property))""",
    """CREATE TABLE IF NOT EXISTS live (
        domain TEXT NOT NULL, property TEXT NOT NULL, value TEXT NOT NULL,
        position BIGINT NOT NULL, request_id TEXT, PRIMARY KEY (domain, property))""",
    """CREATE TABLE IF NOT EXISTS drift (
        domain TEXT NOT NULL, property TEXT NOT NULL, persistent TEXT NOT NULL,
        live TEXT NOT NULL, cause TEXT NOT NULL, request_id TEXT,
        since_position BIGINT NOT NULL, since TEXT NOT NULL, PRIMARY KEY (domain, property))""",
    """CREATE TABLE IF NOT EXISTS history (
        request_id TEXT PRIMARY KEY, domain TEXT NOT NULL, domain_name TEXT NOT NULL,
        property TEXT NOT NULL, requested TEXT NOT NULL, scope TEXT NOT NULL,
        principal TEXT NOT NULL, reason TEXT, requested_at TEXT NOT NULL,
        position BIGINT NOT NULL, outcomes TEXT NOT NULL, completed_at TEXT)""",
    "CREATE INDEX IF NOT EXISTS history_domain ON history (domain, property, position)",
    "CREATE INDEX IF NOT EXISTS history_position ON history (position)",
    # The console's fleet asks each domain's latest request: one probe a domain, not a scan of the history.
    "CREATE INDEX IF NOT EXISTS history_latest ON history (domain, position)",
    # An audit counts the outcomes of the requests made in the part days at the ends of its period (it sums
    # the whole days from `outcome_days`), and a domain's, from the `outcomes` JSON of these rows.
    "CREATE INDEX IF NOT EXISTS history_requested ON history (requested_at)",
    "CREATE INDEX IF NOT EXISTS history_domain_requested ON history (domain, requested_at)",
    """CREATE TABLE IF NOT EXISTS episodes (
        domain TEXT NOT NULL, property TEXT NOT NULL, since_position BIGINT NOT NULL, cause TEXT NOT NULL,
        request_id TEXT, since TEXT NOT NULL, ended_position BIGINT, ended TEXT,
        PRIMARY KEY (domain, property, since_position))""",
    # The episodes an audit lists (`queries.episode_rows`): all but the windows between a request's two outcomes.
    f"CREATE INDEX IF NOT EXISTS episodes_kept ON episodes (since) WHERE {KEPT_EPISODES}",
    # Rules 3 to 5 kept each request's outcomes twice: in its history row, and a row each in `outcomes`,
    # with three indexes, which cost about a third of a batch of intents' write on PostgreSQL, and more than
    # half of the time a rebuild of 1M events spent after its fold (3.7 s, where 1.3-1.5 s without).
    "DROP TABLE IF EXISTS outcomes",
    # Written as `model.OUTCOME_DAYS` says; `count` BIGINT, as a sum of counts is in PostgreSQL.
    """CREATE TABLE IF NOT EXISTS outcome_days (
        day TEXT NOT NULL, principal TEXT NOT NULL, property TEXT NOT NULL, scope TEXT NOT NULL,
        status TEXT NOT NULL, reason TEXT NOT NULL, count BIGINT NOT NULL,
        PRIMARY KEY (day, principal, property, scope, status, reason))""",
    """CREATE TABLE IF NOT EXISTS projection_position (
        name TEXT PRIMARY KEY, position BIGINT NOT NULL)""",
)


class DuplicateRequestError(InvalidRequestError):
    """Raised when an append records a request id that the history already holds."""

    def __init__(self, request_id: str, message: str | None = None) -> None:
        super().__init__(message or f"request id {request_id!r} is already recorded")
        self.request_id = request_id


def _refusal(rec: RecordedEvent) -> InvalidRequestError:
    """Return the store's refusal of `rec`, with `rec` as its `refused`: an import names where its export fails.

    `rec` is a `…Requested` of a recorded request id, or a `DomainDefined`
    of the name of a defined domain.
    """
    e = rec.event
    error = (DuplicateRequestError(e.request_id) if isinstance(e, ChangeRequested)
             else InvalidRequestError(f"domain {e.domain!r} is already defined"))
    error.refused = rec  # type: ignore[attr-defined]
    return error


def _insert(table: str) -> str:
    if table == "outcome_days":
        return ADD_OUTCOME_DAYS
    cols = TABLES[table][0]
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


def _add_counts() -> str:
    cols, key = OUTCOME_DAYS
    return (f"INSERT INTO outcome_days ({', '.join(cols)}) VALUES ({_marks(cols)}) "
            f"ON CONFLICT ({', '.join(cols[:key])}) DO UPDATE SET count = outcome_days.count + excluded.count")


def _select(table: str) -> str:
    cols, key = TABLES[table]
    return f"SELECT {', '.join(cols)} FROM {table} ORDER BY {', '.join(cols[:key])}"


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def _upsert(table: str) -> str:
    cols, key = TABLES[table]
    updates = ", ".join(f"{c} = excluded.{c}" for c in cols[key:])
    return f"{_insert(table)} ON CONFLICT ({', '.join(cols[:key])}) DO UPDATE SET {updates}"


def _delete(table: str) -> str:
    cols, key = TABLES[table]
    return f"DELETE FROM {table} WHERE {' AND '.join(f'{c} = ?' for c in cols[:key])}"


def _update(table: str, columns: tuple[int, ...]) -> str:
    cols, key = TABLES[table]
    return (f"UPDATE {table} SET {', '.join(f'{cols[i]} = ?' for i in columns)} "
            f"WHERE {' AND '.join(f'{c} = ?' for c in cols[:key])}")


def _by_key(table: str, rows: Iterable[tuple]) -> dict[tuple, tuple]:
    key = TABLES[table][1]
    return {row[:key]: row for row in rows}


def _diff(table: str, old: Sequence[tuple], new: Sequence[tuple],
          gone: dict[str, list[tuple]], changed: dict[str, list[tuple]]) -> None:
    """Add to `gone` the keys of `old` rows that `new` lacks, and to `changed` the `new` rows not in `old`."""
    key, was = TABLES[table][1], _by_key(table, old)
    for row in new:
        if was.pop(row[:key], None) != row:
            changed[table].append(row)
    gone[table].extend(was)


def _row_writes(table: str, rows: Sequence[tuple], stored: dict[tuple, tuple]) -> list[tuple[str, list[tuple]]]:
    """Return the statements that write `rows` (one per key) of `table`, whose rows read are `stored` (by key).

    A stored row is updated in the columns that changed, so that the
    database leaves alone the index entries of the columns that did not (an
    upsert sets every column: SQLite rewrites every index entry of the row);
    a row not stored is upserted, or inserted where `_NEW_ROW` says.
    """
    key = TABLES[table][1]
    upserts: list[tuple] = []
    updates: dict[tuple[int, ...], list[tuple]] = defaultdict(list)
    for row in rows:
        was = stored.get(row[:key])
        columns = () if was is None else tuple(i for i in range(key, len(row)) if row[i] != was[i])
        if not columns:
            upserts.append(row)
        else:
            updates[columns].append((*(row[i] for i in columns), *row[:key]))
    writes = [(_update(table, columns), part) for columns, part in updates.items()]
    return [*writes, (_NEW_ROW[table], upserts)] if upserts else writes


#: The statement that adds `outcome_days` rows' counts to the stored ones: an append's changes, or a rebuild's
#: rows (each worker process of a rebuild counts the days of its own part of the log).
ADD_OUTCOME_DAYS = _add_counts()
#: Every projection table: the per-domain ones, then the whole ledger's.
ALL_TABLES = (*TABLES, "outcome_days")
_UPSERT = {table: _upsert(table) for table in TABLES}
_DELETE = {table: _delete(table) for table in TABLES}
#: How a batch writes a row it did not read (`_row_writes`).  A new request's history row is inserted: where
#: the batch was seeded from a writer's memory, a request id stored before it that the memory did not know
#: then fails the write, and the batch runs again with reads (see `batch_steps`).
_NEW_ROW = {**_UPSERT, "history": _insert("history")}
#: Domains whose parsed state a projector keeps: a fleet's busy domains, in bounded memory.
_CACHED_STATES = 4096
_HISTORY_BY_ID = _select("history").replace(" ORDER BY", " WHERE request_id = ? ORDER BY")
# What a batch reads (`_Batch.load`): the snapshots of some domains, the history rows of some requests.
_STATES_OF = f"SELECT uuid, state FROM domains WHERE uuid IN ({TEXTS})"
_HISTORY_OF = _select("history").replace(" ORDER BY", f" WHERE request_id IN ({TEXTS}) ORDER BY")
# What an import into an empty log reads of each chunk: which of its requests' ids the history holds.
_RECORDED = f"SELECT request_id FROM history WHERE request_id IN ({TEXTS})"
_IN_FLIGHT = Outcome.REQUESTED.status
_READ_CHUNK = f"SELECT {SCAN_COLUMNS} FROM events WHERE position > ? AND position <= ? ORDER BY position LIMIT ?"
#: Events from which a rebuild given a way to read parts folds in worker processes: below, starting them costs more.
_PARTS_FROM = 100_000
#: The secondary indexes of the tables a rebuild in parts fills in bulk, as (name, statement).  Rows come
#: in the fold's order, which each of these indexes sees at random (a request id, a domain, a time): on a
#: log of uuid request ids over interleaved domains, keeping them up row by row took half the rebuilding
#: process's time, where building each once, in one sorted pass, takes a few seconds at 1M events.
_BULK_INDEXES = tuple((s.split()[5], s) for s in SCHEMA
                      if s.startswith("CREATE INDEX") and s.split()[7] in ("history", "episodes"))
#: The statements that drop the `_BULK_INDEXES`, and that build them again.
_DROP_BULK: tuple[Step, ...] = tuple(("execute", f"DROP INDEX IF EXISTS {name}", ()) for name, _ in _BULK_INDEXES)
_BUILD_BULK: tuple[Step, ...] = tuple(("execute", statement, ()) for _, statement in _BULK_INDEXES)
_SET_POSITION = ("INSERT INTO projection_position (name, position) VALUES ('all', ?) "
                 "ON CONFLICT (name) DO UPDATE SET position = excluded.position")


#: A rebuild's (and verify's) worker processes at most.  The rebuilding process, which writes every
#: row they send, is the slower end: at 1,000,000 events it takes 7.5 s of CPU where the workers take
#: 10 s between them, so three workers already outpace it, and a fourth costs about 40 MiB more (270 MiB
#: in all with four, 229 MiB with three: `scripts/bench.py --parts N` on two CPUs).
_MAX_PARTS = 3


def _cpus() -> int:
    """Return the CPUs this process may run on, at most `_MAX_PARTS`: a rebuild's worker processes, one per CPU.

    Only on POSIX systems, where the workers get their pipes as inherited file descriptors.
    """
    return min(cpus(), _MAX_PARTS) if os.name == "posix" else 1


#: The version of the fold's rules the projection rows are made by.  Rows an older version made (2:
#: the drift rule of issue 13, persistent_only; 3: the episodes and outcomes tables of issue 17; 4: the
#: outcome_days table of issue 17; 5: no `episodes` row for a window that ended `in_flight`; 6: no `outcomes`
#: table, its rows read from the history's) are rebuilt when a writer next opens the ledger.
RULES = 6
#: Older rules whose rows are this version's but for a table `SCHEMA` drops: a writer's open names the rules
#: of this version without a rebuild.  A checkpoint of theirs still names them, so `verify` checks in full
#: once after it (`Checkpoint.rules`): its digests count the dropped rows.
_SAME_ROWS = (5,)
_RULES_ROW = "SELECT position FROM projection_position WHERE name = 'rules'"
_SET_RULES = ("INSERT INTO projection_position (name, position) VALUES ('rules', ?) "
              "ON CONFLICT (name) DO UPDATE SET position = excluded.position")


class TableProjector:
    """Keeps the projection tables in step with the log, inside each append.

    Each update is written once, as a generator of statements (`_steps`,
    `rebuild`), run by an async driver (for asyncpg) or a synchronous one (for
    the SQLite writer thread, which commits a whole batch in one hop), so
    both backends write the same rows.
    """

    schema = SCHEMA
    rules = RULES
    #: A request's history row takes its outcomes after it is inserted, a domain's row every append.
    updated_in_place = ("domains", "history")

    def __init__(self, *, chunk: int = CHUNK, parts: int | None = None, parts_from: int = _PARTS_FROM) -> None:
        self._chunk = chunk  # events per read of the rebuild
        #: Worker processes a rebuild of `parts_from` events or more folds in, given a way to read parts.
        self.parts = _cpus() if parts is None else parts
        self._parts_from = parts_from
        #: Domain uuid -> (state, `domains` row) of the snapshot this projector wrote or read last, newest last.
        self._states: dict[str, tuple[DomainState, tuple]] = {}

    async def project(self, tx: Transaction, records: Sequence[RecordedEvent]) -> None:
        """Fold `records` into the rows of the domains and requests they touch.

        Raises:
            DuplicateRequestError: a `…Requested` reuses a recorded request id.
            InvalidRequestError: a `DomainDefined` reuses the name of a defined domain.
        """
        await run_steps(tx, self._steps(records))

    def project_sync(self, tx: SyncTransaction, records: Sequence[RecordedEvent]) -> None:
        """Do what `project` does, through a synchronous transaction.

        Raises:
            DuplicateRequestError, InvalidRequestError: as `project`.
        """
        run_steps_sync(tx, self._steps(records))

    def batch(self) -> "_Batch":
        """Start the projection of several appends in one transaction, as statements to run.

        `load` reads the rows they touch once; `add` folds each append or
        refuses it whole, and `write` writes the rows that changed, once.
        """
        return _Batch(self)

    def _steps(self, records: Sequence[RecordedEvent]) -> Generator[Step, Any, None]:
        batch = _Batch(self)
        yield from batch.load([r.stream for r in records], _request_ids(records))
        yield from batch.add(records)
        yield from batch.write()

    def _parsed(self, uuid: str, text: str) -> tuple[DomainState, tuple]:
        """Return the state a stored snapshot holds and its `domains` row, from the cache if it holds `text`."""
        hit = self._states.get(uuid)
        if hit is not None and hit[1][-1] == text:
            return hit
        state = state_from_json(text)
        # The stored text, whichever version of vmledger wrote it, is what the row holds.
        return state, domains_row(state, snapshot=text)

    def _remember(self, uuid: str, state: DomainState, row: tuple) -> None:
        """Keep a domain's newest state and `domains` row; the oldest entry goes past `_CACHED_STATES`.

        An entry is used only while the stored snapshot text equals its own,
        so a write by another process, or one rolled back, costs a parse, never a wrong row.
        """
        self._states.pop(uuid, None)
        self._states[uuid] = (state, row)
        if len(self._states) > _CACHED_STATES:
            del self._states[next(iter(self._states))]

    def upgrade(self, parts: PartRows | None = None, *, bulk: bool = False) -> Generator[Step, Any, bool]:
        """Yield the statements that rebuild the rows if other rules made them; return whether it rebuilt.

        Rows of `_SAME_ROWS` are these rules' already: only the rules row changes.
        A ledger that names no rules was made before they were named (rules 1).
        Given `parts`, a long log is folded by worker processes, as by `rebuild` (and `bulk`).
        """
        found = yield ("fetch_all", _RULES_ROW, ())
        if found and found[0][0] == RULES:
            return False
        head = (yield ("fetch_all", "SELECT max(position) FROM events", ()))[0][0] or 0
        rebuilds = bool(head) and not (found and found[0][0] in _SAME_ROWS)
        if rebuilds:
            yield from self.rebuild(parts=parts, bulk=bulk)
        yield ("execute", _SET_RULES, (RULES,))
        return rebuilds

    def rebuild(self, progress: Callable[[int, int], None] | None = None,
                parts: PartRows | None = None, *, bulk: bool = False) -> Generator[Step, Any, int]:
        """Yield the statements that replace every projection row with a fold of the whole log.

        The log is read in chunks inside the caller's write transaction, and
        the history rows of completed requests are written as the fold goes,
        so memory holds the domain states and the open requests, never the
        whole history.  `progress(position, head)` is called after each chunk.
        Returns the last position folded.

        Given `parts`, a way for other processes to read the log, a log of
        `parts_from` events or more is folded by worker processes, a part of
        the streams each, while this one writes their rows (see
        `projections._parts`); the rows are the same.  With `bulk`, for a
        backend whose readers go on reading the committed tables and indexes
        meanwhile (SQLite's WAL), such a rebuild drops the secondary indexes
        of `history` and `episodes` in its transaction and builds them again
        before it ends (`_BULK_INDEXES`); a PostgreSQL reader would wait for
        the transaction's end to read a table whose index it dropped.
        """
        head = (yield ("fetch_all", "SELECT max(position) FROM events", ()))[0][0] or 0
        clear: list[Step] = [("execute", f"DELETE FROM {table}", ()) for table in ALL_TABLES]
        build: Sequence[Step] = ()
        if parts is not None and self.folds_in_parts(head):
            if (yield from self.fold_in_parts(parts, head, progress, clear, bulk=bulk)):
                yield ("execute", _SET_POSITION, (head,))
                return head
            build = _BUILD_BULK if bulk else ()
        yield from clear
        replay, last = Replay(), 0
        while last < head:
            rows = yield ("fetch_all", _READ_CHUNK, (last, head, self._chunk))
            yield from _folded(replay, rows)
            last = rows[-1][0] if rows else head
            if progress is not None:
                progress(last, head)
        yield from _replayed(replay, last)
        yield from build  # the indexes that a fold in parts dropped before it gave up
        return last

    def imported(self, chunks: Iterable[Sequence[Sequence[Any]]], bulk: bool = False) -> Generator[Step, Any, int]:
        """Yield the statements that store already-chained rows in an empty log, with their projections.

        `chunks` gives the rows (`COLUMNS`) a chunk at a time, checked by the
        caller (see `transfer.checked_chunks`): only that they follow each
        other is checked here.  They are folded as a rebuild folds them, the
        rows of completed requests written as they go, and each event is
        first checked as an append checks it (`_Filling`).  Returns the last
        position.

        With `bulk`, the secondary indexes of `history` and `episodes` go
        while the rows are written, and are built again at the end
        (`_BULK_INDEXES`), as a rebuild in parts does: for a backend whose
        readers meanwhile read the committed tables and indexes (SQLite's WAL).

        Raises:
            InvalidRequestError: the log holds events, the rows do not follow
                each other, or a `DomainDefined` reuses the name of a defined domain.
            DuplicateRequestError: a `…Requested` reuses a recorded request id.
            ValueError: the fold refuses an event (as `Model.feed`).
        """
        head = (yield ("fetch_all", "SELECT max(position) FROM events", ()))[0][0] or 0
        if head:
            raise InvalidRequestError(f"an import needs an empty log; this one ends at position {head}")
        for table in ALL_TABLES:  # none should hold rows: a rebuild clears them too
            yield ("execute", f"DELETE FROM {table}", ())
        if bulk:
            yield from _DROP_BULK
        filling = _Filling()
        for rows in chunks:
            if rows[0][0] != head + 1:
                raise InvalidRequestError(f"the import's rows skip from position {head} to {rows[0][0]}")
            yield ("execute_many", INSERT, rows)
            yield from filling.add(rows)
            head = rows[-1][0]
        yield from _replayed(filling.replay, head)
        if bulk:
            yield from _BUILD_BULK
        return head

    def folds_in_parts(self, head: int) -> bool:
        """Tell whether a log of `head` events is folded in worker processes, given a way to read its parts."""
        return self.parts > 1 and head >= self._parts_from

    def fold_in_parts(self, parts: PartRows, head: int, progress: Callable[[int, int], None] | None = None,
                      first: Sequence[Step] = (), *, bulk: bool = False) -> Generator[Step, Any, bool]:
        """Yield the statements that fill the projection tables with the fold of the log up to `head`, in worker processes.

        The tables must hold no rows once `first` has run (the workers start
        meanwhile).  With `bulk`, the secondary indexes of the tables filled
        in bulk go while their rows are written, and are built again at the
        end (`_BULK_INDEXES`).  Returns True then, or False, with no index
        built again, where the log must be folded in one process instead (see
        `projections._parts`); the rows written so far must then be deleted.
        """
        if not (yield from fold_in_parts(parts, self.parts, head, self._chunk, _insert, _HISTORY_BY_ID, progress,
                                         [*_DROP_BULK, *first] if bulk else first)):
            return False
        if bulk:
            yield from _BUILD_BULK
        return True


def _folded(replay: Replay, rows: Sequence[Any], decode: Callable[[Sequence[Any]], list[Any]] = scan
            ) -> Generator[Step, Any, None]:
    """Yield the statements that fold `rows` (as `decode` reads them) into `replay`, and write what it completed."""
    request_id = replay.fold(rows, decode)
    while request_id is not None:
        # A late outcome of a request already written: take its row back.
        stored = yield ("fetch_all", _HISTORY_BY_ID, (request_id,))
        if stored:
            for forget in FORGET_REQUEST:
                yield ("execute", forget, (request_id,))
        request_id = replay.resume(tuple(stored[0]) if stored else None)
    for table, done in replay.completed():
        if done:
            yield ("execute_many", _insert(table), done)


def _replayed(replay: Replay, position: int) -> Generator[Step, Any, None]:
    """Yield the statements that write the rows `replay` holds at the end of a fold up to `position`."""
    for table, part in replay.rows():
        if part:
            yield ("execute_many", _insert(table), part)
    yield ("execute", _SET_POSITION, (position,))


class _Filling:
    """The fold of an import into an empty log: the rebuild's, with the store's refusals of an append.

    An append is refused when a `…Requested` uses a recorded request id, or
    a `DomainDefined` the name of a defined domain (`_Batch.add`); the fold
    itself (`Replay`) trusts the log.  So each chunk's events are checked
    here in turn, each before it is folded, against the fold so far, and
    the first error is the one folding them append by append meets.
    """

    def __init__(self) -> None:
        self.replay = Replay()
        #: Name -> the streams that were defined with it: a domain's name changes only where it is defined.
        self._named: dict[str, set[str]] = defaultdict(set)

    def add(self, rows: Sequence[Sequence[Any]]) -> Generator[Step, Any, None]:
        """Yield the statements that fold stored rows (`COLUMNS`, in order); raise the first refusal.

        Raises:
            DuplicateRequestError, InvalidRequestError: as `TableProjector.project`.
            ValueError: the fold refuses an event (as `Model.feed`).
        """
        items = scan([row[:8] for row in rows])
        asked = {i: request_id for i, item in enumerate(items) if (request_id := _asked(item)) is not None}
        # The ids recorded before this chunk: written out, or still open (the fold may write them out meanwhile).
        seen = {request_id for request_id in asked.values() if request_id in self.replay.history}
        if asked:
            found = yield ("fetch_all", _RECORDED, (texts(sorted(set(asked.values()))),))
            seen.update(request_id for (request_id,) in found)
        start = 0
        for i, item in enumerate(items):
            request_id = asked.get(i)
            if request_id is not None:
                if request_id in seen:
                    yield from _folded(self.replay, items[start:i], list)
                    raise _refusal(record(tuple(rows[i])))
                seen.add(request_id)
            elif item.__class__ is not tuple and isinstance(item.event, DomainDefined):
                yield from _folded(self.replay, items[start:i], list)
                start, name = i, item.event.domain
                if any((w := self.replay.domains.get(uuid)) is not None and w.defined and w.name == name
                       for uuid in self._named[name]):
                    raise _refusal(record(tuple(rows[i])))
                self._named[name].add(item.stream)
        yield from _folded(self.replay, items[start:], list)


def _asked(item: Any) -> str | None:
    """Return the request id of a `…Requested` as `scan` gives it, else None."""
    if item.__class__ is tuple:
        return item[7] if item[6] == _IN_FLIGHT else None
    return item.event.request_id if isinstance(item.event, ChangeRequested) else None


def _request_ids(records: Sequence[RecordedEvent]) -> list[str]:
    return [r.event.request_id for r in records if hasattr(r.event, "request_id")]


class _Batch:
    """The projection of the appends of one transaction, in a model seeded with the rows they touch."""

    def __init__(self, projector: TableProjector) -> None:
        self._projector = projector
        self.model = Model()
        self._before: dict[str, tuple[DomainState, tuple]] = {}  # the state and `domains` row of each domain read
        self._stored_history: dict[str, tuple[tuple, list[Any]]] = {}  # request id -> the row read, its record
        self._written: dict[str, tuple[DomainState, tuple]] = {}  # the state and `domains` row of each written
        self._written_history: dict[str, tuple[tuple, list[Any]]] = {}  # request id -> the row written, its record
        self._streams: set[str] = set()  # of the appends added
        self._requests: set[str] = set()

    def load(self, streams: Sequence[str], request_ids: Sequence[str],
             *first: tuple[str, Sequence[Any]]) -> Generator[Step, Any, list[list[tuple[Any, ...]]]]:
        """Read the stored state of `streams` and the history of `request_ids`, with the queries `first`."""
        model, uuids, ids = self.model, sorted(set(streams)), sorted(set(request_ids))
        queries = [*first, (_STATES_OF, (texts(uuids),))]
        if ids:
            queries.append((_HISTORY_OF, (texts(ids),)))
        found = yield ("fetch_many", queries, ())
        asked, states, history = found[:len(first)], found[len(first)], found[len(first) + 1:]
        for uuid, text in states:
            self._before[uuid] = seed = self._projector._parsed(uuid, text)
            model.states[uuid] = seed[0]
        for row in itertools.chain.from_iterable(history):
            # The fold settles a copy of a record (`Model.feed_history`): this one stays as read.
            record = model.history[row[0]] = record_from_row(row)
            self._stored_history[row[0]] = (tuple(row), record)
        return asked

    def recall(self, memory: WriterMemory, streams: Sequence[str], events: Sequence[Event]) -> bool:
        """Seed the model from `memory` instead of `load`, if it holds every row the appends of `events` need.

        They need the state of each stream, and the history record of each
        request an event names, but those of new requests (`…Requested`):
        their rows are inserted (`_NEW_ROW`).  Returns whether it seeded.
        """
        states, history = memory.states, memory.history
        if (any(uuid not in states for uuid in streams)
                or any(e.request_id not in history for e in events
                       if hasattr(e, "request_id") and not isinstance(e, ChangeRequested))):
            return False
        for uuid in streams:
            self._before[uuid] = seed = states[uuid]
            self.model.states[uuid] = seed[0]
        for e in events:
            stored = history.get(getattr(e, "request_id", None))
            if stored is not None:
                self._stored_history[e.request_id] = stored
                self.model.history[e.request_id] = stored[1]
        return True

    def remember(self, memory: WriterMemory) -> None:
        """Add to `memory` the rows this batch read and those it wrote, as they stand once written."""
        memory.keep(memory.states, {**self._before, **self._written})
        memory.keep(memory.history, {**self._stored_history, **self._written_history})

    def add(self, records: Sequence[RecordedEvent]) -> Generator[Step, Any, None]:
        """Fold one append's records, or leave the model as it was and raise.

        Raises:
            DuplicateRequestError, InvalidRequestError: as `TableProjector.project`.
            ValueError: the fold refuses a record (as `Model.feed`).
        """
        model = self.model
        states = {r.stream: model.states.get(r.stream) for r in records}
        ids = set(_request_ids(records))
        history = {i: model.history.get(i) for i in ids}
        position, ended = model.position, len(model.ended)
        try:
            for rec in records:
                e = rec.event
                if isinstance(e, ChangeRequested) and e.request_id in model.history:
                    raise _refusal(rec)
                if isinstance(e, DomainDefined):
                    stored = yield ("fetch_all", "SELECT uuid FROM domains WHERE name = ? AND defined = 1",
                                    (e.domain,))
                    # A domain this batch holds is as the model has it; any other, as stored.
                    if (any(uuid not in model.states for (uuid,) in stored)
                            or any(s.defined and s.name == e.domain for s in model.states.values())):
                        raise _refusal(rec)
                model.feed(rec)
        except BaseException:
            for saved, into in ((states, model.states), (history, model.history)):
                for key, value in saved.items():
                    if value is None:
                        into.pop(key, None)
                    else:
                        into[key] = value  # type: ignore[assignment]
            model.position = position
            del model.ended[ended:]
            raise
        self._streams.update(states)
        self._requests.update(ids)

    def write(self, *first: tuple[str, Sequence[Sequence[Any]]]) -> Generator[Step, Any, None]:
        """Write the rows the added appends changed, and the position they reached, with the statements `first`.

        One `write_all` step holds them all; only `first`, if no append was added.
        """
        if not self._streams:
            if first:
                yield ("write_all", list(first), ())
            return
        model, before = self.model, self._before
        # Only the rows that changed are written: an append touches a few of a domain's rows, those of
        # the properties whose slots or mark it replaced (`changed_properties`) and the `domains` row.
        gone: dict[str, list[tuple]] = defaultdict(list)
        changed: dict[str, list[tuple]] = defaultdict(list)
        for uuid in sorted(self._streams):
            state, (was, was_row) = model.states[uuid], before.get(uuid, (None, None))
            row = domains_row(state)
            self._projector._remember(uuid, state, row)
            self._written[uuid] = (state, row)
            _diff("domains", () if was_row is None else (was_row,), (row,), gone, changed)
            rows_before: dict[str, list[tuple]] = defaultdict(list)
            rows_after: dict[str, list[tuple]] = defaultdict(list)
            for prop in properties(state) if was is None else changed_properties(was, state):
                for rows, s in ((rows_before, was), (rows_after, state)):
                    if s is not None:
                        for table, r in property_rows(s, prop):
                            rows[table].append(r)
            for table in {*rows_before, *rows_after}:
                _diff(table, rows_before[table], rows_after[table], gone, changed)
        wanted = sorted(self._requests)
        stored = [self._stored_history[r] for r in wanted if r in self._stored_history]
        self._written_history = {r: (model.history_row(r), model.history[r]) for r in wanted if r in model.history}
        _diff("history", [row for row, _ in stored], [row for row, _ in self._written_history.values()],
              gone, changed)
        # The rows read, by key, of the tables whose rows are updated in the columns that changed
        # (`_row_writes`): those the batch read itself.
        read = {"domains": _by_key("domains", (before[uuid][1] for uuid in self._streams if uuid in before)),
                "history": _by_key("history", (row for row, _ in stored))}
        # The day counts move by the requests' outcomes gone and come: a request's status moves from in flight.
        days: Counter[tuple] = Counter()
        count_outcome_days(days, (row for _, record in stored for row in outcome_rows(record)), -1)
        count_outcome_days(days, (row for _, record in self._written_history.values() for row in outcome_rows(record)))
        # An episode that ended was open in the rows read, or began in this batch: its row, with its end.
        changed["episodes"].extend(model.ended)
        # `write_all` runs its statements in any order, so each row of a table is written once:
        # a key both gone and changed is upserted alone (an upsert sets every column), and the
        # last of a key's changed rows is the one written, as if each statement ran in turn.
        statements = list(first)
        for table, keys in gone.items():
            upserted = {row[:TABLES[table][1]] for row in changed.get(table, ())}
            keys = [k for k in dict.fromkeys(keys) if k not in upserted]
            if keys:
                statements.append((_DELETE[table], keys))
        for table, part in changed.items():
            if part:
                key = TABLES[table][1]
                rows = list({row[:key]: row for row in part}.values())
                statements += _row_writes(table, rows, read[table]) if table in read else [(_UPSERT[table], rows)]
        statements += [(ADD_OUTCOME_DAYS, outcome_day_rows(days)), (_SET_POSITION, [(model.position,)])]
        yield ("write_all", statements, ())


#: The stored `outcome_days` rows, by key: the zero counts left out, as they stand for no row.
OUTCOME_DAYS_ROWS = (f"SELECT {', '.join(OUTCOME_DAYS[0])} FROM outcome_days WHERE count <> 0 "
                     f"ORDER BY {', '.join(OUTCOME_DAYS[0][:OUTCOME_DAYS[1]])}")


async def table_rows(fetch_all: Any) -> dict[str, list[tuple]]:
    """Return every stored projection row, sorted by key, through a read function (`outcome_days` but its zero counts)."""
    rows = {table: [tuple(r) for r in await fetch_all(_select(table), ())] for table in TABLES}
    rows["outcome_days"] = [tuple(r) for r in await fetch_all(OUTCOME_DAYS_ROWS, ())]
    return rows
