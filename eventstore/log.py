"""The log API: recorded events, metadata, and the protocols a backend implements."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import threading
from datetime import datetime, timezone
from typing import (
    Any, AsyncContextManager, AsyncIterator, Awaitable, Callable, Generator, Iterable, Protocol, Sequence, TypeVar,
)

import attrs

from vmledger.eventstore.codec import FAST_JSON, dumps_value, orjson_utf8, plain
from vmledger.eventstore.events import Event

__all__ = [
    "Metadata",
    "RecordedEvent",
    "Transaction",
    "SyncTransaction",
    "Projector",
    "Step",
    "run_steps",
    "run_steps_sync",
    "Stopped",
    "stopping",
    "uncancelled",
    "EventLog",
    "EventFilter",
    "GENESIS_HASH",
    "chain_hash",
    "timestamp",
]

# Cached: a domain's snapshot repeats the times of its drift marks and pending requests on every write.
# Equal aware times are one instant, whose UTC text is one text.
@functools.lru_cache(maxsize=4096)
def timestamp(when: datetime) -> str:
    """Return the stored text of a time: UTC, ISO 8601, always with microseconds.

    One fixed width keeps stored times in text order; a naive time is taken as UTC.
    """
    if when.tzinfo is not timezone.utc:
        when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    return when.isoformat(timespec="microseconds")


@attrs.frozen(kw_only=True)
class EventFilter:
    """Which events a filtered read yields: each given criterion must hold (None: any).

    `streams` and `types` are tuples of stream ids and event type names;
    `since` and `until` bound the recording time, both included.
    """

    streams: tuple[str, ...] | None = None
    types: tuple[str, ...] | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, rec: "RecordedEvent") -> bool:
        """Tell whether `rec` passes every criterion."""
        return ((self.streams is None or rec.stream in self.streams)
                and (self.types is None or rec.type in self.types)
                and (self.since is None or rec.recorded_at >= self.since)
                and (self.until is None or rec.recorded_at <= self.until))


#: The `prev_hash` of the first event.
GENESIS_HASH = "0" * 64


@attrs.frozen(kw_only=True)
class Metadata:
    """Who and what caused an append: stored with every event of it."""

    principal: str | None = None
    request_id: str | None = None
    correlation_id: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """Return the metadata as the dict the log stores."""
        return {name: getattr(self, name) for name in _METADATA_FIELDS}


_METADATA_FIELDS = tuple(a.name for a in attrs.fields(Metadata))


@attrs.frozen(kw_only=True)
class RecordedEvent:
    """An event as the log holds it: with its global position and stream version."""

    position: int
    stream: str
    version: int
    event: Event
    metadata: Metadata
    recorded_at: datetime
    hash: str = attrs.field(default="", eq=False)

    @property
    def type(self) -> str:
        """Return the stored event type name."""
        return self.event.name


def chain_hash(
    prev_hash: str,
    *,
    position: int,
    stream: str,
    version: int,
    type: str,
    schema_version: int,
    data: str,
    metadata: str,
    recorded_at: str,
) -> str:
    """Return the SHA-256 link of one event: it covers every stored field and its predecessor.

    That is the SHA-256 of the UTF-8 `dumps` of the fields' list: written by
    orjson where it is installed and no field is a float (which only a row
    changed behind the ledger's back holds: see `dumps_plain`), else item by
    item, the same text without the encoder's setup per call.
    """
    fields = (prev_hash, position, stream, version, type, schema_version, data, metadata, recorded_at)
    if FAST_JSON and plain(fields) and (text := orjson_utf8(fields)) is not None:
        return hashlib.sha256(text).hexdigest()
    return hashlib.sha256(("[" + ",".join(map(dumps_value, fields)) + "]").encode("utf-8")).hexdigest()


class Transaction(Protocol):
    """The open write transaction a projector writes its rows through.

    SQL uses `?` placeholders; a backend translates them if its driver differs.
    """

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Return every row of a query inside the transaction."""
        ...

    async def fetch_many(self, queries: Sequence[tuple[str, Sequence[Any]]],
                         params: Sequence[Any] = ()) -> list[list[tuple[Any, ...]]]:
        """Return the rows of each `(sql, params)` query, in one round trip where the driver can.

        Each query's rows come in no set order.  `params` is unused (it keeps the shape of a step).
        """
        ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement inside the transaction."""
        ...

    async def write_all(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]],
                        params: Sequence[Any] = ()) -> None:
        """Run each `(sql, rows)` statement for each of its rows; in one round trip where the driver can.

        Each statement is an `INSERT … VALUES (?, …)` (with any `ON CONFLICT`
        clause) or a `DELETE … WHERE column = ? AND …`.  No two rows of
        them touch the same row of a table, so they may run in any order.
        `params` is unused (it keeps the shape of a step).
        """
        ...

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for many rows inside the transaction."""
        ...


class SyncTransaction(Protocol):
    """The same as `Transaction`, for a backend that writes from a thread of its own."""

    def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Return every row of a query inside the transaction."""
        ...

    def fetch_many(self, queries: Sequence[tuple[str, Sequence[Any]]],
                   params: Sequence[Any] = ()) -> list[list[tuple[Any, ...]]]:
        """Do what `Transaction.fetch_many` does."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement inside the transaction."""
        ...

    def write_all(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]],
                  params: Sequence[Any] = ()) -> None:
        """Do what `Transaction.write_all` does."""
        ...

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for many rows inside the transaction."""
        ...


#: What a step-wise writer needs run: (transaction method name, its SQL or statements, parameters or rows).
Step = tuple[str, Any, Sequence[Any]]
T = TypeVar("T")


async def run_steps(tx: Transaction, steps: Generator[Step, Any, T], *, thread: bool = False) -> T:
    """Run each statement `steps` yields through `tx`, sending back its result; return the generator's value.

    A failed statement closes the generator, so its `finally` blocks run then.
    With `thread`, the generator runs in a worker thread up to each
    statement, so that what it does in between (waiting for the worker
    processes of a rebuild in parts, say) leaves the event loop free; a
    cancelled caller waits for the step under way to end.
    """
    reply = None
    with contextlib.closing(steps):
        while True:
            if thread:
                step = asyncio.ensure_future(asyncio.to_thread(_send, steps, reply))
                try:
                    ended, value = await asyncio.shield(step)
                except asyncio.CancelledError:
                    while not step.done():  # the generator cannot be closed while it runs
                        with contextlib.suppress(asyncio.CancelledError):
                            await asyncio.wait({step})
                    raise
            else:
                ended, value = _send(steps, reply)
            if ended:
                return value
            method, sql, params = value
            reply = await getattr(tx, method)(sql, params)


def _send(steps: Generator[Step, Any, T], reply: Any) -> tuple[bool, Any]:
    """Send `reply` into `steps`: return (False, the next step), or (True, the generator's value) once it ends."""
    try:
        return False, steps.send(reply)
    except StopIteration as done:
        return True, done.value


class Stopped(Exception):
    """Raised in a thread's transaction whose caller was cancelled, so that it rolls back (see `run_steps_sync`)."""


async def stopping(run: Callable[[threading.Event], Awaitable[T]]) -> T:
    """Return `await run(stop)`, where `run` starts work in a thread that checks `stop` (see `run_steps_sync`).

    Cancelled, it sets `stop`: the thread stops at its next check rather
    than run on unseen, keeping the process from exiting until it ends.
    """
    stop = threading.Event()
    try:
        return await run(stop)
    except asyncio.CancelledError:
        stop.set()
        raise


async def uncancelled(closing: Awaitable[T]) -> T:
    """Await `closing` to its end even if the caller is cancelled meanwhile; then raise that cancellation.

    For a close: one cut short leaves a connection's thread behind
    (aiosqlite's is no daemon), and the process then never exits.
    """
    task = asyncio.ensure_future(closing)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})  # cancelled, it leaves `task` running
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()


def run_steps_sync(tx: SyncTransaction, steps: Generator[Step, Any, T], stop: threading.Event | None = None) -> T:
    """Do what `run_steps` does, through a synchronous transaction.

    Raises:
        Stopped: `stop` is set, checked before each statement: a cancelled
            caller sets it, so that its thread stops rather than run on unseen.
    """
    reply = None
    with contextlib.closing(steps):
        while True:
            try:
                method, sql, params = steps.send(reply)
            except StopIteration as done:
                return done.value
            if stop is not None and stop.is_set():
                raise Stopped()
            reply = getattr(tx, method)(sql, params)


class ProjectionBatch(Protocol):
    """The projection of the appends of one transaction (from `Projector.batch`), as statements to run.

    Each method is a generator of steps (see `run_steps`), so that one batch
    runs through an async driver or a synchronous one alike.
    """

    def load(self, streams: Sequence[str], request_ids: Sequence[str],
             *first: tuple[str, Sequence[Any]]) -> Generator[Step, Any, list[list[tuple[Any, ...]]]]:
        """Read the stored rows of `streams` and of `request_ids`, which the appends to come touch.

        The `(sql, params)` queries `first` are read with them (see `fetch_many`); returns their rows.
        """
        ...

    def recall(self, memory: Any, streams: Sequence[str], events: Sequence[Event]) -> bool:
        """Instead of `load`, seed the batch from a writer's memory if it holds what the appends of `events` need.

        Returns whether it did (see `batch_steps`).
        """
        ...

    def remember(self, memory: Any) -> None:
        """Add to a writer's memory the rows the batch read and wrote, as they stand once it is written."""
        ...

    def add(self, records: Sequence[RecordedEvent]) -> Generator[Step, Any, None]:
        """Fold one append's records, or refuse them whole with the error `project` raises, changing nothing."""
        ...

    def write(self, *first: tuple[str, Sequence[Sequence[Any]]]) -> Generator[Step, Any, None]:
        """Write the rows the added appends changed, with the `(sql, rows)` statements `first` (see `write_all`)."""
        ...


class Projector(Protocol):
    """Updates read models in the same transaction as an append (declared here, wired by `open`)."""

    schema: Sequence[str]
    #: The version of the rules the rows are made by: part of the schema a backend checks on open.
    rules: int
    #: The tables whose rows appends update after inserting them: a backend may leave room for the new versions.
    updated_in_place: Sequence[str]

    def batch(self) -> ProjectionBatch:
        """Start projecting several appends in one transaction."""
        ...

    def imported(self, chunks: Iterable[Sequence[Sequence[Any]]], bulk: bool = False) -> Generator[Step, Any, int]:
        """Yield the statements that store already-chained rows in an empty log, with their projections.

        `chunks` gives the rows a chunk at a time.  Runs inside one write
        transaction; returns the last position.  Only that the rows follow
        each other is checked: the caller checks their chain.  `bulk`: the
        backend's readers read the committed schema meanwhile, so the
        projector may drop indexes while it writes and build them at the end.
        """
        ...

    def upgrade(self, parts: Any = None, *, bulk: bool = False) -> Generator[Step, Any, bool]:
        """Yield the statements that rebuild rows an older version's rules made; return whether it rebuilt.

        Runs inside the transaction that sets up the schema, when a writer opens the log;
        `parts` and `bulk` as for `rebuild`.
        """
        ...

    def rebuild(self, progress: Callable[[int, int], None] | None,
                parts: Any = None, *, bulk: bool = False) -> Generator[Step, Any, int]:
        """Yield the statements that replace every projection row with a fold of the whole log.

        Runs inside one write transaction; returns the last position folded.
        `parts`, if given, reads parts of the log from other processes (see
        `projections._parts.PartRows`), which may fold them there.  `bulk`:
        the backend's readers read the committed schema meanwhile, so the
        projector may drop indexes while it writes and build them at the end.
        """
        ...


class EventLog(Protocol):
    """An append-only, hash-chained log of event streams."""

    async def append(
        self,
        stream: str,
        expected_version: int,
        events: Sequence[Event],
        metadata: Metadata,
        *,
        now: datetime,
    ) -> list[RecordedEvent]:
        """Append `events` to `stream` if it is at `expected_version`; return them recorded.

        Raises:
            ConcurrencyError: the stream is at another version.
            StorageError: the backend failed; nothing was appended.
        """
        ...

    def exclusive(self, name: str, *, work: float = 0.0) -> AsyncContextManager[None]:
        """Hold, for the block, the lock of `name` (a stream's, or one made from it) that every process writing
        this log honours.

        A holder in another process is waited for at most `work` seconds (how
        long a holder's work besides its writes may rightly take) plus the
        log's busy timeout (how long its writes may wait).

        Raises:
            LockTimeoutError: another process held it longer.
            StorageError: the log is closed or read-only, or the lock cannot be taken.
        """
        ...

    async def read_stream(self, stream: str, *, to_position: int | None = None) -> list[RecordedEvent]:
        """Return the events of one stream, oldest first."""
        ...

    def read_all(
        self, *, from_position: int = 0, to_position: int | None = None, where: EventFilter | None = None
    ) -> AsyncIterator[RecordedEvent]:
        """Yield every event after `from_position` up to `to_position` that `where` lets through, in order."""
        ...

    def subscribe(self, *, from_position: int = 0) -> AsyncIterator[RecordedEvent]:
        """Yield every event after `from_position`, then follow new appends forever."""
        ...

    async def head(self) -> int:
        """Return the position of the last event (0 for an empty log)."""
        ...
