"""Group commit on both backends: concurrent appends share a transaction without sharing failures."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.pg import create_database
from vmledger.eventstore.backends.sqlite import SQLiteEventLog
from vmledger.eventstore.catalogue import Outcome
from vmledger.eventstore.errors import ConcurrencyError, InvalidRequestError
from vmledger.eventstore.events import DomainDefined, DomainStarted, DomainStopped, DomainUndefined, Event, change_event
from vmledger.eventstore.log import Metadata
from vmledger.projections.model import Model
from vmledger.projections.store import TableProjector, table_rows

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
CONFIG = {"memory": 2**30, "max_memory": 2**32, "vcpus": 1, "max_vcpus": 2, "numa_nodes": 1}
_databases = itertools.count(1)


def _defined(name: str, uuid: str | None = None) -> DomainDefined:
    return DomainDefined(domain=name, uuid=uuid or name, guest_type="pv", config=CONFIG, capabilities={})


class Places:
    """Empty databases of one backend, by name: a file each, or a database each on the session's cluster.

    Opening a name again empties it first (a PostgreSQL database is
    truncated rather than created anew, which costs a second), so one test's
    Hypothesis examples each start from an empty database.
    """

    def __init__(self, backend: str, tmp: str, dsn: str | None) -> None:
        self.backend, self._tmp, self._dsn = backend, tmp, dsn
        self._where: dict[str, str] = {}

    def where(self, name: str) -> str:
        """Return the file path or DSN of the database `name`, made on first use."""
        if name not in self._where:
            self._where[name] = (os.path.join(self._tmp, f"{name}.db") if self._dsn is None
                                 else create_database(self._dsn, f"gc_{next(_databases)}"))
        return self._where[name]

    @contextlib.asynccontextmanager
    async def open(self, name: str, *, empty: bool = True) -> AsyncIterator[Any]:
        """Yield a log on the database `name`, emptied unless `empty` is false."""
        where = self.where(name)
        if self._dsn is None:
            for suffix in ("", "-wal", "-shm") if empty else ():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(where + suffix)
            async with SQLiteEventLog(where, TableProjector()) as log:
                yield log
            return
        import asyncpg

        from vmledger.eventstore.backends.postgres import PostgresEventLog

        conn = await asyncpg.connect(where)
        try:
            tables = [r[0] for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
            if tables and empty:
                await conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables))
        finally:
            await conn.close()
        async with PostgresEventLog(where, TableProjector(), busy_timeout=5) as log:
            yield log

    async def stored(self, name: str, position: int) -> int:
        """Return how many events another connection finds stored at `position`."""
        where = self.where(name)
        if self._dsn is None:
            def count() -> int:
                with contextlib.closing(sqlite3.connect(where)) as conn:
                    return conn.execute("SELECT count(*) FROM events WHERE position = ?", (position,)).fetchone()[0]
            return await asyncio.to_thread(count)
        import asyncpg

        conn = await asyncpg.connect(where)
        try:
            return await conn.fetchval("SELECT count(*) FROM events WHERE position = $1", position)
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def places(request: pytest.FixtureRequest, tmp_path: Any) -> Places:
    """Return empty databases of the backend under test."""
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else None
    return Places(request.param, str(tmp_path), dsn)


def test_refused_appends_do_not_fail_their_batch(places: Places) -> None:
    """A batch with a version conflict and a duplicate name commits the other appends, in one transaction."""
    async def go() -> tuple:
        async with places.open("g") as log:
            await log.append("a", 0, [_defined("a")], Metadata(), now=T0)
            commits = log.commits
            results = await asyncio.gather(
                log.append("b", 0, [_defined("b")], Metadata(), now=T0),
                log.append("a", 0, [DomainStarted(config=CONFIG)], Metadata(), now=T0),  # stale version
                log.append("a2", 0, [_defined("a", uuid="a2")], Metadata(), now=T0),  # name taken
                log.append("a", 1, [DomainStarted(config=CONFIG)], Metadata(), now=T0),
                return_exceptions=True,
            )
            kinds = [type(r).__name__ if isinstance(r, Exception) else [e.position for e in r] for r in results]
            positions = [r.position async for r in log.read_all()]
            return kinds, log.commits - commits, positions, await log.verify_chain()

    kinds, commits, positions, head = asyncio.run(go())
    assert (kinds, commits, positions, head) == (
        [[2], ConcurrencyError.__name__, InvalidRequestError.__name__, [3]], 1, [1, 2, 3], 3)


def test_a_domain_takes_in_a_batch_the_name_another_gives_up_in_it(places: Places) -> None:
    """A domain defined again under another name, and a new domain taking its old name, in one batch: both commit.

    They failed together where the rows of defined domains' names had a
    unique index: the batch writes its domains rows one at a time.
    """
    async def go() -> tuple:
        async with places.open("g") as log:
            await log.append("c", 0, [_defined("x", uuid="c")], Metadata(), now=T0)
            # The batch writes its domains in the order of their uuids: "b" takes "x" before "c" gives it up.
            results = await asyncio.gather(
                log.append("c", 1, [_defined("y", uuid="c")], Metadata(), now=T0),
                log.append("b", 0, [_defined("x", uuid="b")], Metadata(), now=T0),
                return_exceptions=True)
            kinds = [type(r).__name__ if isinstance(r, Exception) else [e.position for e in r] for r in results]
            domains = await log.fetch_all("SELECT uuid, name, defined FROM domains ORDER BY uuid")
            return kinds, [tuple(r) for r in domains]

    assert asyncio.run(go()) == ([[2], [3]], [("b", "x", 1), ("c", "y", 1)])


def test_callers_return_only_once_their_events_are_durable(places: Places) -> None:
    """Each of 64 concurrent callers finds its events committed, seen from another connection, when it returns."""
    async def go() -> tuple:
        async with places.open("g") as log:
            async def one(i: int) -> int:
                (rec,) = await log.append(f"d{i}", 0, [_defined(f"d{i}")], Metadata(), now=T0)
                return await places.stored("g", rec.position)

            seen = await asyncio.gather(*(one(i) for i in range(64)))
            return seen, [r.position async for r in log.read_all()], log.commits

    seen, positions, commits = asyncio.run(go())
    assert (seen, positions) == ([1] * 64, list(range(1, 65)))
    assert commits < 64  # the appends shared transactions


def test_callers_that_keep_appending_return_only_once_their_events_are_durable(places: Places) -> None:
    """16 callers appending one event after another: each finds its events committed when it returns.

    Their appends arrive while batches are written, and on PostgreSQL most
    batches are written from the writer's memory of its rows, without reads:
    the rows they leave are the fold of the log all the same.
    """
    async def go() -> tuple:
        async with places.open("g") as log:
            async def one(i: int) -> list[int]:
                seen = []
                for version in range(8):
                    event = _defined(f"d{i}") if version == 0 else (
                        DomainStarted(config=CONFIG) if version % 2 else DomainStopped())
                    (rec,) = await log.append(f"d{i}", version, [event], Metadata(), now=T0)
                    seen.append(await places.stored("g", rec.position))
                return seen

            seen = await asyncio.gather(*(one(i) for i in range(16)))
            model = Model()
            model.feed_all([r async for r in log.read_all()])
            rows = await table_rows(log.fetch_all)
            return seen, model, await log.verify_chain(), {table: rows[table] for table in model.all_rows()}

    seen, model, head, rows = asyncio.run(go())
    assert (seen, model.position, head) == ([[1] * 8] * 16, 128, 128)
    assert rows == model.all_rows()  # the rows the batches wrote are the fold of the log


@pytest.mark.parametrize("cancel_after", [0, 1])
def test_cancelled_caller_leaves_no_partial_append(places: Places, cancel_after: int) -> None:
    """Cancelling a caller either drops its append whole or commits it whole; the chain stays intact."""
    async def go() -> tuple:
        async with places.open("g") as log:
            task = asyncio.create_task(log.append("a", 0, [_defined("a"), DomainStarted(config=CONFIG)],
                                                  Metadata(), now=T0))
            for _ in range(cancel_after):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await log.append("b", 0, [_defined("b")], Metadata(), now=T0)
            return sorted({r.stream async for r in log.read_all()}), await log.verify_chain()

    streams, head = asyncio.run(go())
    assert (streams, head) in ((["b"], 1), (["a", "b"], 3))


def _event(kind: str, stream: str, name: str, request_id: str) -> Event:
    if kind == "define":
        return _defined(name, uuid=stream)
    if kind == "requested":
        return change_event("memory", Outcome.REQUESTED)(request_id=request_id, property="memory", value=2**29,
                                                          scope="both", principal="p")
    if kind == "applied":
        return change_event("memory", Outcome.APPLIED)(request_id=request_id, property="memory",
                                                        scope="persistent", requested=2**29, value=2**29)
    return {"start": DomainStarted(config=CONFIG), "stop": DomainStopped(), "undefine": DomainUndefined()}[kind]


_KINDS = ("define", "define", "requested", "applied", "start", "stop", "undefine")
_APPENDS = st.lists(st.tuples(
    st.sampled_from("abc"), st.integers(0, 3),
    st.lists(st.tuples(st.sampled_from(_KINDS), st.sampled_from("xy"), st.sampled_from(("r1", "r2"))),
             min_size=1, max_size=3)), min_size=1, max_size=12)


Appends = list[tuple[str, int, list[tuple[str, str, str]]]]


async def _one_at_a_time(log: Any, appends: Appends) -> list:
    """Make `appends` one after the other; return what each got."""
    got: list = []
    for stream, expected, events in appends:
        try:
            got.append(await log.append(stream, expected, [_event(kind, stream, name, rid)
                                                            for kind, name, rid in events],
                                        Metadata(principal="p"), now=T0))
        except (ConcurrencyError, ValueError, TypeError, InvalidRequestError) as e:
            got.append(e)
    return _answers(got)


def _answers(got: list) -> list:
    return [(type(r).__name__, str(r)) if isinstance(r, Exception) else [(e.position, e.hash) for e in r]
            for r in got]


async def _outcomes(places: Places, name: str, appends: Appends, together: bool) -> tuple:
    """Make `appends` on an empty database, together (one batch) or one at a time; return what each got, and the rows."""
    async with places.open(name) as log:
        if together:
            answers = _answers(await asyncio.gather(
                *(log.append(stream, expected, [_event(kind, stream, name, rid) for kind, name, rid in events],
                             Metadata(principal="p"), now=T0) for stream, expected, events in appends),
                return_exceptions=True))
            commits = log.commits
        else:
            answers, commits = await _one_at_a_time(log, appends), 1
        return answers, commits, await table_rows(log.fetch_all), [r.hash async for r in log.read_all()]


#: Examples per backend: a PostgreSQL example costs about ten SQLite ones, in opening its logs.
_EXAMPLES = {"sqlite": 60, "postgres": 30}


def test_a_batch_commits_what_its_appends_made_one_at_a_time(places: Places) -> None:
    """Appends committed together in one transaction get the outcomes, events and rows they get one transaction each."""
    # The fixture's databases serve every example: each is emptied when opened.
    @settings(database=None, deadline=None, max_examples=_EXAMPLES[places.backend])
    @given(_APPENDS)
    # Two appends accepted in one batch: the second is chained after the first.
    @example([("a", 0, [("define", "x", "r1")]), ("b", 0, [("define", "y", "r1"), ("requested", "y", "r2")])])
    def check(appends: list[tuple[str, int, list[tuple[str, str, str]]]]) -> None:
        together = asyncio.run(_outcomes(places, "together", appends, True))
        alone = asyncio.run(_outcomes(places, "alone", appends, False))
        assert together == alone

    check()


async def _in_two_opens(places: Places, before: Appends, appends: Appends) -> tuple:
    """Make `before`, then `appends` in a log opened again, one at a time; return what each got, and the rows."""
    async with places.open("two") as log:
        answers = await _one_at_a_time(log, before)
    async with places.open("two", empty=False) as log:
        answers += await _one_at_a_time(log, appends)
        return answers, await table_rows(log.fetch_all), [r.hash async for r in log.read_all()]


async def _each_in_an_open(places: Places, before: Appends, appends: Appends) -> tuple:
    """As `_in_two_opens`, but each append in a log opened anew: a writer whose memory is always empty, which reads."""
    answers: list = []
    for i, append in enumerate(before + appends):
        async with places.open("each", empty=i == 0) as log:
            answers += await _one_at_a_time(log, [append])
    async with places.open("each", empty=False) as log:
        return answers, await table_rows(log.fetch_all), [r.hash async for r in log.read_all()]


def test_a_writers_memory_of_its_rows_gives_what_reading_them_gives(places: Places) -> None:
    """Appends written from the writer's memory, without reads, get what they get from a writer that reads each time.

    The writer's memory starts empty when it opens the log again, so it
    does not know the requests of `before`: a new request reusing one of
    their ids must be refused as a duplicate all the same.
    """
    @settings(database=None, deadline=None, max_examples=_EXAMPLES[places.backend] // 2)
    @given(_APPENDS, _APPENDS)
    # The stream is in the memory (its append before), the request id r1 is not: its row is stored.
    @example([("a", 0, [("define", "x", "r1"), ("requested", "x", "r1")])],
             [("a", 2, [("start", "x", "r1")]), ("a", 3, [("requested", "x", "r1")]),
              ("a", 3, [("requested", "x", "r2")])])
    def check(before: Appends, appends: Appends) -> None:
        assert asyncio.run(_in_two_opens(places, before, appends)) == asyncio.run(
            _each_in_an_open(places, before, appends))

    check()


def test_two_writers_on_one_file_each_see_what_the_other_wrote(tmp_path: Any) -> None:
    """Two SQLite logs on one file, appending in turn, get what one log gets: a writer's memory yields to the other's commits.

    As two processes would: each writer remembers the rows its batches
    wrote, and must read again once the other has committed.
    """
    places = Places("sqlite", str(tmp_path), None)

    async def two(appends: Appends, writers: list[int]) -> tuple:
        async with places.open("shared") as first, places.open("shared", empty=False) as second:
            answers: list = []
            for append, w in zip(appends, writers):
                answers += await _one_at_a_time((first, second)[w], [append])
            return answers, await table_rows(first.fetch_all), [r.hash async for r in first.read_all()]

    async def one(appends: Appends) -> tuple:
        async with places.open("alone") as log:
            return await _one_at_a_time(log, appends), await table_rows(log.fetch_all), [
                r.hash async for r in log.read_all()]

    @settings(database=None, deadline=None, max_examples=_EXAMPLES["sqlite"])
    @given(_APPENDS, st.lists(st.integers(0, 1), min_size=12, max_size=12))
    # The second writer defines x and requests r1 between the first's appends to the same stream.
    @example([("a", 0, [("define", "x", "r1")]), ("a", 1, [("requested", "x", "r1")]),
              ("a", 2, [("requested", "x", "r1")]), ("a", 2, [("requested", "x", "r2")])], [0, 1, 0, 0] + [0] * 8)
    def check(appends: Appends, writers: list[int]) -> None:
        assert asyncio.run(two(appends, writers)) == asyncio.run(one(appends))

    check()
