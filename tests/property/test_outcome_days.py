"""Outcomes counted per day: the projector's incremental counts equal a rebuild's, and a period's counts from them equal the log's (issue 17)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from typing import Any, Sequence

import attrs
from hypothesis import given, settings, strategies as st

from tests.property.test_episodes import _database, _projected, _Tx
from tests.strategies import LOG_START, any_logs, recorded
from vmledger.eventstore.catalogue import Outcome
from vmledger.eventstore.events import ChangeRequested, DomainDefined, change_event
from vmledger.eventstore.log import RecordedEvent, timestamp
from vmledger.projections.model import Model, outcome_rows, stored_outcome_rows
from vmledger.projections.queries import outcome_counts
from vmledger.projections.store import OUTCOME_DAYS_ROWS, TableProjector

DAY = timedelta(days=1)
#: The gaps between events: none, a moment, hours, and days, so that a log spans a few days.
GAPS = st.sampled_from((timedelta(0), timedelta(microseconds=1), timedelta(hours=7), DAY, 3 * DAY)) | st.timedeltas(
    timedelta(0), timedelta(hours=30))


@st.composite
def spread_logs(draw: Any) -> list[RecordedEvent]:
    """Return a log of `any_logs` whose events are spread over days, its requests made by two principals."""
    records, at = [], LOG_START
    for rec in draw(any_logs()):
        at += draw(GAPS)
        event = rec.event
        if isinstance(event, ChangeRequested):
            event = attrs.evolve(event, principal=draw(st.sampled_from(("p", "q"))))
        records.append(attrs.evolve(rec, event=event, recorded_at=at))
    return records


def _bound(day: int, into: timedelta) -> datetime:
    """Return the time `into` a day counted from the log's first one (the period's ends fall on any day)."""
    return datetime.combine((LOG_START + day * DAY).date(), datetime.min.time(), LOG_START.tzinfo) + into


#: A period's end within its day: its first or last moment, one moment past or before it, or any time.
INTO = st.sampled_from((timedelta(0), timedelta(microseconds=1), DAY - timedelta(microseconds=1),
                        DAY - timedelta(microseconds=2))) | st.timedeltas(timedelta(0), DAY - timedelta(microseconds=1))
BOUNDS = st.none() | st.builds(_bound, st.integers(-2, 40), INTO)


def _expected(records: list[RecordedEvent], since: datetime | None, until: datetime | None,
              principal: str | None) -> list[tuple]:
    """Return the outcome counts of the requests the log's events make within the period, counted here.

    Which requests, by whom, of what and when are read from the `…Requested`
    events; what became of each in each scope is the fold's (`Model`).
    """
    model = Model()
    model.feed_all(records)
    counted: Counter[tuple] = Counter()
    for rec in records:
        e = rec.event
        if (isinstance(e, ChangeRequested) and (since is None or rec.recorded_at >= since)
                and (until is None or rec.recorded_at <= until) and principal in (None, e.principal)):
            for scope, outcome in model.history[e.request_id][10].items():
                counted[e.principal, e.property, scope, outcome["status"], outcome["reason"]] += 1
    return sorted(((*key, n) for key, n in counted.items()), key=lambda r: tuple("" if v is None else v for v in r))


def _counts(tx: _Tx, since: datetime | None, until: datetime | None, principal: str | None) -> list[tuple]:
    async def fetch_all(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return tx.fetch_all(sql, params)

    return asyncio.run(outcome_counts(fetch_all, since=None if since is None else timestamp(since),
                                      until=None if until is None else timestamp(until), principal=principal))


@settings(database=None, deadline=None, max_examples=100)
@given(spread_logs(), st.lists(st.integers(1, 6), min_size=1, max_size=40), st.data(),
       st.none() | st.sampled_from(("p", "q")))
def test_day_counts_rebuilt_equal_the_incremental_ones_and_count_any_period_as_the_log_does(
        records: list[RecordedEvent], appends: list[int], data: st.DataObject, principal: str | None) -> None:
    """Day counts appended in any batches equal a rebuild's, and any period's counts from them (whole days, part days, before or after every event) equal the requests the log made in it."""
    # A period's ends fall on any day, or next to an event: a moment before it, at it or after it.
    near = st.builds(lambda rec, by: rec.recorded_at + by, st.sampled_from(records),
                     st.sampled_from((-timedelta(microseconds=1), timedelta(0), timedelta(microseconds=1))))
    periods = data.draw(st.lists(st.tuples(BOUNDS | near, BOUNDS | near), max_size=6), label="periods")
    incremental, rebuilt = _projected(records, appends)
    # The log's first and last days, and a day on each side, so that a period may hold every event or none.
    periods = [(None, None), (_bound(-1, timedelta(0)), _bound(-1, DAY - timedelta(microseconds=1))),
               (records[0].recorded_at, records[-1].recorded_at), *periods]
    periods = [(a, b) if a is None or b is None or a <= b else (b, a) for a, b in periods]

    assert incremental.fetch_all(OUTCOME_DAYS_ROWS) == rebuilt.fetch_all(OUTCOME_DAYS_ROWS)
    assert [_counts(incremental, a, b, principal) for a, b in periods] == [
        _expected(records, a, b, principal) for a, b in periods]
    assert [_counts(rebuilt, a, b, principal) for a, b in periods] == [
        _expected(records, a, b, principal) for a, b in periods]


def test_a_period_from_within_a_day_counts_none_of_the_requests_made_that_day_before_it() -> None:
    """Requests made at noon, a moment later and the next day: from that moment on, the last two count, whether the period ends the next day or never."""
    config = {"memory": 2**30, "max_memory": 2**32, "vcpus": 1, "max_vcpus": 2, "numa_nodes": 1}
    events: list[tuple[str, Any]] = [("a", DomainDefined(domain="a", uuid="a", guest_type="pv", config=config,
                                                         capabilities={"balloon": True}))]
    events += [("a", change_event("memory", Outcome.REQUESTED)(request_id=f"r{i}", property="memory", value=2**31,
                                                                scope="persistent", principal="p")) for i in range(3)]
    at = (LOG_START, LOG_START, LOG_START + timedelta(microseconds=1), LOG_START + DAY)
    records = [attrs.evolve(rec, recorded_at=when) for rec, when in zip(recorded(events), at)]
    tx = _database(records)
    TableProjector().project_sync(tx, records)
    assert [_counts(tx, at[2], until, None) for until in (None, _bound(1, DAY - timedelta(microseconds=1)))] == [
        [("p", "memory", "persistent", "in_flight", None, 2)]] * 2


@settings(database=None, deadline=None, max_examples=100)
@given(spread_logs())
def test_the_outcomes_of_a_stored_history_row_are_those_of_its_record(records: list[RecordedEvent]) -> None:
    """`stored_outcome_rows` of each history row reads the outcomes `outcome_rows` gives of the record it stores,
    what `verify --checkpoint` counts the days by."""
    model = Model()
    model.feed_all(records)
    for request_id, record in model.history.items():
        assert stored_outcome_rows(model.history_row(request_id)) == outcome_rows(record)
