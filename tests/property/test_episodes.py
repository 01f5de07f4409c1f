"""Drift episodes: the projector's incremental rows equal a rebuild's, and their durations are the drift sampled as of every event (issue 17)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from datetime import timedelta
from typing import Any, Sequence

from hypothesis import given, settings, strategies as st

from tests.strategies import any_logs
from vmledger._audit import audit_report
from vmledger.eventstore.backends.sqlite import SyncTx as _Tx  # the writer thread's transaction, as the projector writes through
from vmledger.eventstore.codec import dumps, encode
from vmledger.eventstore.log import RecordedEvent, run_steps_sync, timestamp
from vmledger.projections.model import TABLES, Model
from vmledger.projections.queries import episode_rows, model_drift
from vmledger.projections.store import SCHEMA, TableProjector

_EVENTS = ("CREATE TABLE events (position INTEGER PRIMARY KEY, stream TEXT, version INTEGER, type TEXT, "
           "schema_version INTEGER, data TEXT, metadata TEXT, recorded_at TEXT, hash TEXT)")


def _database(records: list[RecordedEvent]) -> _Tx:
    """Return an in-memory database with the projection tables and `records` stored as the log."""
    conn = sqlite3.connect(":memory:")
    for statement in (*SCHEMA, _EVENTS):
        conn.execute(statement)
    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
        (r.position, r.stream, r.version, *encode(r.event), dumps(r.metadata.to_dict()), timestamp(r.recorded_at), "")
        for r in records])
    return _Tx(conn)


def _projected(records: list[RecordedEvent], appends: list[int]) -> tuple[_Tx, _Tx]:
    """Return two databases of `records`: one projected append by append, in batches of the sizes `appends` cycles through, and one rebuilt."""
    incremental, rebuilt = _database(records), _database(records)
    projector, start = TableProjector(), 0
    for size in appends * len(records):  # the log in batches of those sizes, over and over
        if start >= len(records):
            break
        projector.project_sync(incremental, records[start:start + size])
        start += size
    run_steps_sync(rebuilt, TableProjector().rebuild())
    return incremental, rebuilt


def _episodes(tx: _Tx) -> list[tuple]:
    cols = ", ".join(TABLES["episodes"][0])
    return tx.fetch_all(f"SELECT {cols} FROM episodes ORDER BY domain, property, since_position")


@settings(database=None, deadline=None, max_examples=40)
@given(any_logs(), st.lists(st.integers(1, 6), min_size=1, max_size=40))
def test_episodes_rebuilt_equal_the_incremental_ones_and_sum_to_sampled_drift(
        records: list[RecordedEvent], appends: list[int]) -> None:
    """Episodes appended in any batches equal a rebuild's, none of them a window that ended in flight, and each property's durations, in the table and in the audit's list, sum to the time `drift --as-of` shows it drifting, event by event, but for those windows."""
    incremental, rebuilt = _projected(records, appends)

    # The time each drift row stands, sampled as `drift --as-of` answers after every event (the rows as of
    # position p stand from p's time to the next event's), by the episode it belongs to: its since_position.
    sampled: dict[tuple[str, str, int], timedelta] = defaultdict(timedelta)
    # And each episode's cause as of the last event it stood after, by the same key.
    cause: dict[tuple[str, str, int], str] = {}
    model = Model()
    for rec, following in zip(records, [*records[1:], None]):
        model.feed(rec)
        standing = set()
        for row in model_drift(model):  # each domain of these logs is named by its uuid
            key = (row["domain"], row["property"], row["since_position"])
            standing.add(key)
            cause[key] = row["cause"]
            if following is not None:
                sampled[key] += following.recorded_at - rec.recorded_at
    # The episodes that ended in flight (the windows between a request's two outcomes) are not stored.
    left_out = {key for key, c in cause.items() if c == "in_flight" and key not in standing}
    first, last = records[0].recorded_at, records[-1].recorded_at
    # Each domain of these logs is named by its uuid: the table's rows are the query's.
    whole = audit_report([], _episodes(incremental), since=first, until=last, domain=None, principal=None)

    async def fetch_all(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return incremental.fetch_all(sql, params)

    listed = audit_report([], asyncio.run(episode_rows(fetch_all, since=timestamp(first), until=timestamp(last))),
                          since=first, until=last, domain=None, principal=None)
    assert _episodes(incremental) == _episodes(rebuilt)
    assert not [row for row in _episodes(incremental) if row[:3] in left_out]
    assert _durations(whole.episodes) == _durations(listed.episodes) == _sampled(sampled, left_out)


def _durations(episodes: Any) -> dict[tuple[str, str], float]:
    """Return the summed durations of episodes by domain and property, the zero sums left out."""
    summed: dict[tuple[str, str], float] = defaultdict(float)
    for e in episodes:
        summed[e.domain, e.property] += e.duration
    return {k: round(v, 6) for k, v in summed.items() if v}


def _sampled(sampled: dict[tuple[str, str, int], timedelta], left_out: set[tuple]) -> dict[tuple[str, str], float]:
    """Return the sampled time by domain and property, but for the episodes `left_out`, the zero sums left out."""
    summed: dict[tuple[str, str], timedelta] = defaultdict(timedelta)
    for key, time in sampled.items():
        if key not in left_out:
            summed[key[:2]] += time
    return {k: round(v.total_seconds(), 6) for k, v in summed.items() if v}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 10**7)), max_size=6))
def test_time_in_drift_is_the_union_of_its_spans_to_the_microsecond(bounds: list[tuple[int, int]]) -> None:
    """The seconds a set of spans covers is its union's microseconds over a million, with no float noise of a sum."""
    from datetime import datetime, timezone

    from vmledger._audit import _covered

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    spans = [(t0 + timedelta(microseconds=lo), t0 + timedelta(microseconds=hi)) for lo, hi in bounds]
    union, reach = 0, 0
    for lo, hi in sorted((lo, hi) for lo, hi in bounds if hi > lo):
        union += max(0, hi - max(lo, reach))
        reach = max(reach, hi)
    assert _covered(spans) == union / 10**6
