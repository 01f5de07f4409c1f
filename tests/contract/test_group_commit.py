"""Group commit on SQLite: concurrent appends share a transaction without sharing failures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmledger.eventstore.backends.sqlite import SQLiteEventLog
from vmledger.eventstore.catalogue import Outcome
from vmledger.eventstore.errors import ConcurrencyError, InvalidRequestError
from vmledger.eventstore.events import DomainDefined, DomainStarted, DomainStopped, DomainUndefined, Event, change_event
from vmledger.eventstore.log import Metadata
from vmledger.projections.store import TableProjector, table_rows

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
CONFIG = {"memory": 2**30, "max_memory": 2**32, "vcpus": 1, "max_vcpus": 2, "numa_nodes": 1}


def _defined(name: str, uuid: str | None = None) -> DomainDefined:
    return DomainDefined(domain=name, uuid=uuid or name, guest_type="pv", config=CONFIG, capabilities={})


def test_refused_appends_do_not_fail_their_batch(tmp_path: Any) -> None:
    """A batch with a version conflict and a duplicate name commits the other appends, in one transaction."""
    async def go() -> tuple:
        async with SQLiteEventLog(os.path.join(tmp_path, "g.db"), TableProjector()) as log:
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


def test_callers_return_only_once_their_events_are_durable(tmp_path: Any) -> None:
    """Each of 64 concurrent callers finds its events committed, seen from another connection, when it returns."""
    path = os.path.join(tmp_path, "g.db")

    def committed(position: int) -> bool:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return conn.execute("SELECT count(*) FROM events WHERE position = ?", (position,)).fetchone()[0] == 1

    async def go() -> tuple:
        async with SQLiteEventLog(path, TableProjector()) as log:
            async def one(i: int) -> bool:
                (rec,) = await log.append(f"d{i}", 0, [_defined(f"d{i}")], Metadata(), now=T0)
                return await asyncio.to_thread(committed, rec.position)

            seen = await asyncio.gather(*(one(i) for i in range(64)))
            return seen, [r.position async for r in log.read_all()], log.commits

    seen, positions, commits = asyncio.run(go())
    assert (seen, positions) == ([True] * 64, list(range(1, 65)))
    assert commits < 64  # the appends shared transactions


@pytest.mark.parametrize("cancel_after", [0, 1])
def test_cancelled_caller_leaves_no_partial_append(tmp_path: Any, cancel_after: int) -> None:
    """Cancelling a caller either drops its append whole or commits it whole; the chain stays intact."""
    async def go() -> tuple:
        async with SQLiteEventLog(os.path.join(tmp_path, "g.db"), TableProjector()) as log:
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


async def _outcomes(path: str, appends: list[tuple[str, int, list[tuple[str, str, str]]]], together: bool) -> tuple:
    """Make `appends` on a fresh file, together (one batch) or one at a time; return what each got, and the file."""
    async with SQLiteEventLog(path, TableProjector()) as log:
        calls = [log.append(stream, expected, [_event(kind, stream, name, rid) for kind, name, rid in events],
                            Metadata(principal="p"), now=T0) for stream, expected, events in appends]
        if together:
            got = await asyncio.gather(*calls, return_exceptions=True)
            commits = log.commits
        else:
            got = []
            for call in calls:
                try:
                    got.append(await call)
                except (ConcurrencyError, ValueError, TypeError, InvalidRequestError) as e:
                    got.append(e)
            commits = 1
        answers = [(type(r).__name__, str(r)) if isinstance(r, Exception) else [(e.position, e.hash) for e in r]
                   for r in got]
        return answers, commits, await table_rows(log.fetch_all), [r.hash async for r in log.read_all()]


@settings(database=None, deadline=None, max_examples=60)
@given(_APPENDS)
def test_a_batch_commits_what_its_appends_made_one_at_a_time(
    tmp_path_factory: pytest.TempPathFactory, appends: list[tuple[str, int, list[tuple[str, str, str]]]],
) -> None:
    """Appends committed together in one transaction get the outcomes, events and rows they get one transaction each."""
    where = tmp_path_factory.mktemp("batch")
    together = asyncio.run(_outcomes(str(where / "together.db"), appends, True))
    alone = asyncio.run(_outcomes(str(where / "alone.db"), appends, False))
    assert together == alone
