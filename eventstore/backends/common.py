"""What every log backend shares: the stored row, its hash links, and the chain check."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from datetime import datetime
from typing import Any, AsyncIterator, Awaitable, Callable, Collection, Generator, Sequence

import attrs

from vmledger.eventstore.codec import decode, dumps_flat, dumps_plain, encode, loads_exact
from vmledger.eventstore.errors import (
    ChainBrokenError, ConcurrencyError, LedgerNotFoundError, NotALedgerError, StorageError, VmledgerError,
)
from vmledger.eventstore.events import Event
from vmledger.eventstore.log import (
    GENESIS_HASH, EventFilter, Metadata, ProjectionBatch, Projector, RecordedEvent, Step, chain_hash, timestamp,
)

__all__ = [
    "COLUMNS", "SCAN_COLUMNS", "CHUNK", "record", "decode_metadata", "decode_time",
    "chained_rows", "verify_rows", "ChainChecker", "LogReads", "check_ledger_tables", "FILTER_INDEXES",
    "filter_sql", "INSERT", "PendingAppend", "GroupCommit", "batch_steps", "WriterMemory", "TEXTS", "texts", "cpus",
]

#: The columns of the events table, in row order.
COLUMNS = "position, stream, version, type, schema_version, data, metadata, recorded_at, hash"
#: The columns `scan` reads: all but the hash, which no fold needs.
SCAN_COLUMNS = COLUMNS.removesuffix(", hash")
#: How many events a backend reads per query when it streams the log.
CHUNK = 2000
#: The statement that stores one event row, with `?` placeholders.
INSERT = f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: Appends per group commit, at most.
MAX_BATCH = 256
#: A subquery of the texts of one parameter, a JSON array (`texts`): `column IN ({TEXTS})` in SQLite and
#: PostgreSQL alike (which reads `json_each(?)` as `json_array_elements_text`).  One statement whatever the
#: list's length, so that both keep it prepared, where `IN (?, ?, …)` is a statement a length.
TEXTS = "SELECT value FROM json_each(?)"


def cpus() -> int:
    """Return how many CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def texts(values: Sequence[str]) -> str:
    """Return the parameter of `TEXTS` that stands for `values`."""
    return dumps_plain(list(values))


Row = Sequence[Any]

#: The indexes a filtered read (`filter_sql`) is answered from, in both backends' schemas: the
#: events of some streams, or of some types, from a position on, without a scan of the log.
#: Times have `events_recorded_at`.  Each costs every append one more index entry.
FILTER_INDEXES = (
    "CREATE INDEX IF NOT EXISTS events_stream_position ON events (stream, position)",
    "CREATE INDEX IF NOT EXISTS events_type_position ON events (type, position)",
)


def filter_sql(to_position: int | None, where: EventFilter | None) -> tuple[str, tuple[Any, ...]]:
    """Return the SQL conditions (each after ` AND `, `?` placeholders) and parameters of an upper bound and a filter."""
    conditions, params = [], []
    if to_position is not None:
        conditions.append("position <= ?")
        params.append(to_position)
    if where is not None:
        # With streams given, `type || ''` keeps the type index out: a domain's few events are fewer
        # than a type's many, and without statistics SQLite might pick the type index.
        types = "type" if where.streams is None else "type || ''"
        for column, values in (("stream", where.streams), (types, where.types)):
            if values is not None:
                conditions.append(f"{column} IN ({', '.join('?' * len(values))})" if values else "0 = 1")
                params.extend(values)
        for op, when in ((">=", where.since), ("<=", where.until)):
            if when is not None:
                conditions.append(f"recorded_at {op} ?")
                params.append(timestamp(when))
    return "".join(f" AND {c}" for c in conditions), tuple(params)


_METADATA_FIELDS = frozenset(f.name for f in attrs.fields(Metadata))


# The events of one append share their metadata and time: decode each text once.
@functools.lru_cache(maxsize=4096)
def decode_metadata(text: str) -> Metadata:
    """Return the metadata a stored text holds (cached: the events of one append share it).

    Raises:
        StorageError: it is not a JSON object of the metadata's text fields.
    """
    try:
        fields = loads_exact(text)[0]
    except (TypeError, ValueError):
        fields = None
    if not isinstance(fields, dict):
        raise StorageError("stored metadata does not decode: not a JSON object")
    for key, value in sorted(fields.items()):
        if key not in _METADATA_FIELDS:
            raise StorageError(f"stored metadata does not decode: unexpected field {key}")
        if value is not None and not isinstance(value, str):
            raise StorageError(f"stored metadata does not decode: {key} is not text")
    return Metadata(**fields)


@functools.lru_cache(maxsize=4096)
def decode_time(text: str) -> datetime:
    """Return the timezone-aware time a stored text holds (cached).

    Raises:
        StorageError: it is not an ISO 8601 time with a timezone.
    """
    try:
        when = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        when = None
    if when is None or when.tzinfo is None:  # a naive time would not compare with the others
        raise StorageError(f"stored time does not decode: {text!r}")
    return when


def check_ledger_tables(tables: Sequence[str], event_columns: Collection[str], *, create: bool, foreign: str,
                        missing: str) -> None:
    """Refuse a database whose `tables` hold no log: with other tables (`foreign` says whose), or none unless `create`.

    The log is a table `events` of the log's columns (`event_columns`, its
    columns): somebody else's table of that name is no log.

    Raises:
        NotALedgerError: the database holds tables but not the log's.
        LedgerNotFoundError: it holds no tables and `create` is false (`missing` says where).
    """
    if "events" in tables and set(COLUMNS.split(", ")) <= set(event_columns):
        return
    if tables:
        listed = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise NotALedgerError(f"{foreign} (its tables: {listed}); vmledger adds nothing to it")
    if not create:
        raise LedgerNotFoundError(missing)


def record(row: Row) -> RecordedEvent:
    """Return the recorded event a stored row holds.

    Raises:
        StorageError: its data, metadata or time does not decode.
    """
    position, stream, version, type_, schema_version, data, metadata, recorded_at, hash_ = row
    return RecordedEvent(
        position=position, stream=stream, version=version,
        event=decode(type_, schema_version, data),
        metadata=decode_metadata(metadata), recorded_at=decode_time(recorded_at), hash=hash_,
    )


def _link(prev: str, row: Row) -> str:
    position, stream, version, type_, schema_version, data, metadata, recorded_at = row[:8]
    return chain_hash(prev, position=position, stream=stream, version=version, type=type_,
                      schema_version=schema_version, data=data, metadata=metadata, recorded_at=recorded_at)


def chained_rows(
    stream: str, expected: int, events: Sequence[Event], metadata: Metadata, now: datetime,
    last_position: int, last_hash: str | None,
) -> tuple[list[tuple[Any, ...]], list[RecordedEvent]]:
    """Return the rows to insert for an append after `last_position`, and the records they make."""
    position, prev = last_position, last_hash or GENESIS_HASH
    meta, at = dumps_flat(metadata.to_dict()), timestamp(now)
    rows, records = [], []
    for version, event in enumerate(events, start=expected + 1):
        position += 1
        type_, schema_version, data = encode(event)
        prev = _link(prev, (position, stream, version, type_, schema_version, data, meta, at))
        rows.append((position, stream, version, type_, schema_version, data, meta, at, prev))
        records.append(RecordedEvent(position=position, stream=stream, version=version, event=event,
                                     metadata=metadata, recorded_at=now, hash=prev))
    return rows, records


@attrs.define
class PendingAppend:
    """One caller's append, waiting for the next group commit."""

    stream: str
    expected: int
    events: tuple[Event, ...]
    metadata: Metadata
    now: datetime
    future: "asyncio.Future[list[RecordedEvent]]"


#: What a group commit makes of one append: its records, or the error that refused it alone.
Outcome = list[RecordedEvent] | Exception


class GroupCommit:
    """Gathers the appends that arrive while a transaction commits into the next one (group commit).

    `commit(take)` opens one durable transaction, calls `take()` for the
    batch once the transaction is ready to write (so that appends queued
    while it waited for its lock join it), writes the batch and returns
    each append's outcome; a caller's `append` returns only once the
    transaction holding its events has committed.  A cancelled caller's
    append may still be committed: treat cancellation as an unknown
    outcome and re-read.  `idle()`, if given, runs once no append has
    arrived for `linger` seconds after the last batch (where the
    PostgreSQL writer gives its lock back).
    """

    def __init__(self, commit: Callable[[Callable[[], list[PendingAppend]]], Awaitable[list[Outcome]]],
                 idle: Callable[[], Awaitable[None]] | None = None, linger: float = 0.0) -> None:
        self._commit = commit
        #: Called once no append has waited for `linger` seconds after the last batch.
        self._idle, self._linger = idle, linger
        self._arrival: asyncio.Event | None = None
        self._waiting: list[PendingAppend] = []
        self._flusher: asyncio.Task[None] | None = None

    async def append(self, stream: str, expected: int, events: Sequence[Event], metadata: Metadata,
                     now: datetime) -> list[RecordedEvent]:
        """Queue one append for the next commit; return its records once committed, or raise what refused it."""
        if not events:
            raise ValueError("append needs at least one event")
        item = PendingAppend(stream=stream, expected=expected, events=tuple(events), metadata=metadata,
                             now=now, future=asyncio.get_running_loop().create_future())
        self._waiting.append(item)
        if self._arrival is not None:
            self._arrival.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await item.future

    async def drain(self) -> None:
        """Wait for the appends under way to be committed or refused."""
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher

    async def _flush(self) -> None:
        """Commit waiting appends, a batch per transaction, until none wait; then call `idle`, if given."""
        while self._waiting:
            await self._flush_waiting()
            if self._idle is not None and not await self._arrived():
                await self._idle()

    async def _arrived(self) -> bool:
        """Wait up to `linger` seconds for an append to arrive; return whether one waits."""
        if not self._waiting and self._linger > 0:
            self._arrival = asyncio.Event()
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._linger):
                        await self._arrival.wait()
            finally:
                self._arrival = None
        return bool(self._waiting)

    async def _flush_waiting(self) -> None:
        """Commit waiting appends, a batch per transaction, until none wait."""
        while self._waiting:
            batch: list[PendingAppend] = []
            taken = False

            def take() -> list[PendingAppend]:
                nonlocal taken
                taken = True
                batch[:] = [a for a in self._waiting[:MAX_BATCH] if not a.future.done()]
                del self._waiting[:MAX_BATCH]
                return batch

            try:
                outcomes = await self._commit(take)
            except BaseException as e:
                failure: BaseException = e
                if not isinstance(e, Exception):
                    failure = StorageError("the append was interrupted; its outcome is unknown")
                # A transaction that failed before it took its batch fails the batch it would have taken.
                for a in batch if taken else take():
                    if not a.future.done():
                        a.future.set_exception(failure)
                if not isinstance(e, Exception):
                    raise
                continue
            for a, outcome in zip(batch, outcomes):
                if a.future.done():
                    continue
                if isinstance(outcome, Exception):
                    a.future.set_exception(outcome)
                else:
                    a.future.set_result(outcome)


# The query of each stream's last version (of the streams of a `TEXTS` parameter) beside the log's last
# position and hash.  One lookup of the last version per stream (`max` reads one index entry), never a scan
# of a stream.  The log's end, uncorrelated, is evaluated once (SQLite and PostgreSQL alike), not once per stream.
_VERSIONS_AND_LAST = (f"WITH s(stream) AS ({TEXTS}) "
                      "SELECT s.stream, (SELECT max(version) FROM events WHERE events.stream = s.stream), "
                      "(SELECT max(position) FROM events), "
                      "(SELECT hash FROM events WHERE position = (SELECT max(position) FROM events)) FROM s")


@attrs.define
class WriterMemory:
    """What a writer knows of the log and its rows from the batches it read and wrote (see `batch_steps`).

    True only while no other writer can have written since it was made: the
    PostgreSQL writer makes one each time its session takes the append lock,
    and a new one after any other write of its own (a rebuild, an import).
    A batch whose streams and requests it all holds needs no reads.  Each
    of its maps keeps the newest `LIMIT` entries, which is all a busy fleet needs.
    """

    LIMIT = 4096

    #: Stream -> its last version.
    versions: dict[str, int] = attrs.field(factory=dict)
    #: The log's last position and hash; None until a batch has read them.
    last: tuple[int, str | None] | None = None
    #: The projection's own (`ProjectionBatch.recall` seeds a batch from them, `remember` adds to them).
    states: dict[str, Any] = attrs.field(factory=dict)
    history: dict[str, Any] = attrs.field(factory=dict)
    #: Whether the last batch was seeded from this memory, without reading.
    recalled: bool = False

    def keep(self, into: dict[str, Any], entries: dict[str, Any]) -> None:
        """Put `entries` in one of the maps as its newest, dropping its oldest past `LIMIT`."""
        for key, value in entries.items():
            into.pop(key, None)
            into[key] = value
        while len(into) > self.LIMIT:
            del into[next(iter(into))]


def batch_steps(projection: ProjectionBatch, batch: Sequence[PendingAppend],
                memory: WriterMemory | None = None) -> Generator[Step, Any, list[Outcome]]:
    """Yield the statements that write a batch of appends, each refused or written whole; return their outcomes.

    Runs inside a transaction that holds the log's write lock, so the log's
    end moves only with this batch.  Each append is checked, chained and
    folded in memory after the ones accepted before it; then the events and
    the projection rows of all the accepted ones are written once.

    Given a `memory`, the batch skips its reads where the memory holds
    what they would give (the stream versions, the log's end, the rows the
    projection needs), and the memory learns what the batch read and wrote,
    once written.  A request id the store holds but the memory does not know
    makes the write fail, as a new request's history row is inserted, not
    upserted: the caller then runs the batch again with an empty memory.
    """
    if not batch:  # every caller of the batch was cancelled
        return []
    streams = sorted({a.stream for a in batch})
    events = [e for a in batch for e in a.events]
    recalled = (memory is not None and memory.last is not None and all(s in memory.versions for s in streams)
                and projection.recall(memory, streams, events))
    if recalled:
        assert memory is not None and memory.last is not None
        versions, last = {stream: memory.versions[stream] for stream in streams}, memory.last
    else:
        found, = yield from projection.load(streams, [e.request_id for e in events if hasattr(e, "request_id")],
                                            (_VERSIONS_AND_LAST, (texts(streams),)))
        versions = {stream: version or 0 for stream, version, _, _ in found}
        last = (found[0][2] or 0, found[0][3])
    if memory is not None:
        memory.recalled = recalled
    outcomes: list[Outcome] = []
    rows: list[tuple[Any, ...]] = []
    for a in batch:
        try:
            actual = versions[a.stream]
            if actual != a.expected:
                raise ConcurrencyError(a.stream, a.expected, actual)
            chained, records = chained_rows(a.stream, a.expected, a.events, a.metadata, a.now, *last)
            yield from projection.add(records)
        except (VmledgerError, ValueError, TypeError) as e:
            outcomes.append(e)
            continue
        rows += chained
        versions[a.stream], last = records[-1].version, (records[-1].position, records[-1].hash)
        outcomes.append(records)
    if rows:
        yield from projection.write((INSERT, rows))
    if memory is not None:  # written (or nothing to write): the memory learns the rows as they now stand
        memory.keep(memory.versions, versions)
        memory.last = last
        projection.remember(memory)
    return outcomes


#: Checks that stored rows (`SCAN_COLUMNS`) decode, all of them in one call, raising a VmledgerError if one does not.
Decoder = Callable[[Sequence[Row]], object]


class ChainChecker:
    """Checks stored rows in position order: positions, stream versions, hash links, and that each decodes.

    `decode`, if given, checks in one call that a batch of rows decodes
    (`check_all`), as `record` would check each; where it raises, `record`
    finds the row and its error.
    """

    def __init__(self, position: int = 0, prev: str | None = None,
                 versions: dict[str, int] | None = None, decode: Decoder | None = None) -> None:
        self.position = position
        self.prev = prev or GENESIS_HASH
        self.versions = dict(versions or {})
        self._decode = decode

    def check(self, row: Row, *, decoded: bool = False) -> None:
        """Accept the next row, or name its position in `ChainBrokenError`; `decoded`: it is known to decode."""
        position, stream, version, hash_ = row[0], row[1], row[2], row[8]
        if position != self.position + 1:
            raise ChainBrokenError(self.position + 1, f"event missing (next stored position is {position})")
        if version != self.versions.get(stream, 0) + 1:
            raise ChainBrokenError(position, f"stream {stream} version {version} out of order")
        if _link(self.prev, row) != hash_:
            raise ChainBrokenError(position, "hash does not match the stored event")
        if not decoded:
            try:
                record(row)
            except VmledgerError as e:
                raise ChainBrokenError(position, str(e)) from e
        self.position, self.prev, self.versions[stream] = position, hash_, version

    def check_all(self, rows: Sequence[Row]) -> None:
        """Accept the next rows, as `check` each in turn would; the rows decode together if `decode` is given.

        Should one not decode, the rows are checked one by one, so that the
        error is the one `check` raises first.
        """
        decoded = False
        if self._decode is not None:
            try:
                self._decode([row[:8] for row in rows])
                decoded = True
            except VmledgerError:
                pass
        for row in rows:
            self.check(row, decoded=decoded)


async def check_lowest(fetch_all: Callable[..., Awaitable[list[tuple[Any, ...]]]]) -> None:
    """Check that no event is stored before position 1: rows are read after a position, so it would pass unseen.

    Raises:
        ChainBrokenError: naming the lowest position.
    """
    lowest = (await fetch_all("SELECT min(position) FROM events"))[0][0]
    if lowest is not None and lowest < 1:
        raise ChainBrokenError(lowest, f"an event is stored at position {lowest}, before position 1")


async def verify_rows(
    fetch_all: Callable[..., Awaitable[list[tuple[Any, ...]]]],
    rows: Callable[[int], AsyncIterator[Row]],
    from_position: int,
    decode: Decoder | None = None,
) -> int:
    """Check positions, stream versions and hash links of the stored rows; return the last position.

    `fetch_all` runs a `?`-placeholder query; `rows(p)` yields the rows after `p`; `decode` as `ChainChecker`'s.

    Raises:
        ChainBrokenError: naming the first position that does not check out.
    """
    checker = ChainChecker(from_position, decode=decode)
    await check_lowest(fetch_all)
    if from_position:
        found = await fetch_all("SELECT hash FROM events WHERE position = ?", (from_position,))
        if not found:
            raise ChainBrokenError(from_position, "no event at the starting position")
        checker.prev = found[0][0]
        checker.versions = dict(await fetch_all(
            "SELECT stream, max(version) FROM events WHERE position <= ? GROUP BY stream", (from_position,)))
    batch: list[Row] = []
    async for row in rows(from_position):
        batch.append(row)
        if len(batch) == CHUNK:
            checker.check_all(batch)
            batch = []
    checker.check_all(batch)
    return checker.position


class LogReads:
    """The read methods both backends share, written over their `fetch_all` (`?` placeholders)."""

    fetch_all: Callable[..., Awaitable[list[tuple[Any, ...]]]]
    #: Reads a part of the log in a worker process (`projections._parts.PartRows`), where the backend can.
    part_rows: Any = None
    _projector: Projector

    @property
    def projector(self) -> Projector:
        """Return the projector that writes this log's projection rows."""
        return self._projector

    async def head(self) -> int:
        """Return the position of the last event (0 for an empty log)."""
        rows = await self.fetch_all("SELECT max(position) FROM events")
        return rows[0][0] or 0

    async def position_at(self, when: datetime) -> int:
        """Return the position of the last event recorded at or before `when`."""
        rows = await self.fetch_all(
            "SELECT max(position) FROM events WHERE recorded_at <= ?", (timestamp(when),))
        return rows[0][0] or 0

    async def read_stream(self, stream: str, *, to_position: int | None = None) -> list[RecordedEvent]:
        """Return the events of one stream up to `to_position`, oldest first."""
        # No stand-in bound for "to the end": any position is readable (issue #6).
        bound, params = ("", (stream,)) if to_position is None else (" AND position <= ?", (stream, to_position))
        rows = await self.fetch_all(
            f"SELECT {COLUMNS} FROM events WHERE stream = ?{bound} ORDER BY version", params)
        return [record(r) for r in rows]

    async def read_rows(self, from_position: int, to_position: int | None,
                        where: EventFilter | None = None) -> AsyncIterator[tuple[Any, ...]]:
        """Yield the stored rows after `from_position` up to `to_position` that `where` lets through, in chunks, in order."""
        if where is not None and where.streams is None and (where.since or where.until) is not None:
            # The positions of the period, from the time index once: a read of a period
            # scans the period, not the log before it (the streams' index does that for a domain).
            times, params = filter_sql(None, EventFilter(since=where.since, until=where.until))
            first, last = (await self.fetch_all(
                f"SELECT min(position), max(position) FROM events WHERE 1 = 1{times}", params))[0]
            if first is None:
                return
            from_position = max(from_position, first - 1)
            to_position = last if to_position is None else min(to_position, last)
        bounds, params = filter_sql(to_position, where)
        while True:
            rows = await self.fetch_all(
                f"SELECT {COLUMNS} FROM events WHERE position > ?{bounds} ORDER BY position LIMIT {CHUNK}",
                (from_position, *params),
            )
            for row in rows:
                yield tuple(row)
            if len(rows) < CHUNK:
                return
            from_position = rows[-1][0]

    async def read_all(
        self, *, from_position: int = 0, to_position: int | None = None, where: EventFilter | None = None
    ) -> AsyncIterator[RecordedEvent]:
        """Yield every event after `from_position` up to `to_position` that `where` lets through, in chunks, in order."""
        async for row in self.read_rows(from_position, to_position, where):
            yield record(row)

    async def verify_chain(self, *, from_position: int = 0, decode: Decoder | None = None) -> int:
        """Check positions, stream versions, the hash chain and that every event decodes; return the last position.

        `decode` checks that a batch of rows decodes (see `ChainChecker`); `record` checks each by default.

        Raises:
            ChainBrokenError: naming the first position that does not check out.
        """
        return await verify_rows(self.fetch_all, lambda p: self.read_rows(p, None), from_position, decode)
