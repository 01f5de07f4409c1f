"""An import into an empty log folds as a rebuild does, and refuses what an append refuses.

`TableProjector.imported` folds the events of an import into an empty log
with the rebuild's fold (`Replay`), and checks each event, before it folds
it, for the two refusals of the store (a request id used again, the name of
a defined domain defined again).  Whatever the log, in whatever chunks, it
must end as appending its events one at a time does: the same rows, or the
same error, naming the same event.  (One at a time: a chunk folded as one
append, as imports did before, wrote the domains rows in an order that the
unique index of defined names could refuse, where one domain took the name
another gave up in the same chunk.)
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any, Callable, Sequence

import attrs
from hypothesis import example, given, settings, strategies as st

from tests.strategies import GiB, any_logs, recorded
from vmledger.eventstore.backends.common import INSERT, record
from vmledger.eventstore.backends.sqlite import SyncTx
from vmledger.eventstore.codec import dumps, encode
from vmledger.eventstore.catalogue import Outcome
from vmledger.eventstore.events import (
    ChangeRequested, DomainDefined, DomainStarted, DomainUndefined, Event, change_event,
)
from vmledger.eventstore.log import RecordedEvent, run_steps_sync, timestamp
from vmledger.projections.store import SCHEMA, TableProjector, table_rows

_EVENTS = ("CREATE TABLE events (position INTEGER PRIMARY KEY, stream TEXT, version INTEGER, type TEXT, "
           "schema_version INTEGER, data TEXT, metadata TEXT, recorded_at TEXT, hash TEXT)")


@st.composite
def _spoilt_logs(draw: Callable[[st.SearchStrategy[Any]], Any]) -> list[tuple[str, Event]]:
    """Return the events of a log of two domains (`any_logs`), with a few more that an append may refuse.

    Each is a `DomainDefined` of a name `a`, `b` or `c` on a stream of those
    (refused where a domain of that name is defined then, not where it was
    undefined), a `…Requested` of a request id used before (refused), or an
    event of a stream not defined yet (refused by the fold).
    """
    events = [(r.stream, r.event) for r in draw(any_logs(max_events=12))]
    first = events[0][1]
    assert isinstance(first, DomainDefined)
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(1, len(events)))
        how = draw(st.sampled_from(("define", "define", "request again", "undefined stream")))
        stream = draw(st.sampled_from("abc"))
        if how == "define":
            name = draw(st.sampled_from("abc"))
            events.insert(at, (stream, attrs.evolve(first, domain=name, uuid=stream)))
        elif how == "request again":
            asked = [e for _, e in events[:at] if isinstance(e, ChangeRequested)]
            if asked:
                events.insert(at, (draw(st.sampled_from("ab")), draw(st.sampled_from(asked))))
        else:
            events.insert(at, ("d", DomainStarted(config={})))
    return events


_DEFINED = DomainDefined(domain="a", uuid="a", guest_type="pv", config={}, capabilities={})
_ASKED = change_event("memory", Outcome.REQUESTED)(request_id="r", property="memory", value=GiB, scope="persistent",
                                                  principal="p")
#: An event the fold refuses (its stream is not defined), then a request id used again: the first error is the fold's.
_REFUSED_THEN_ASKED_AGAIN = [("a", _DEFINED), ("a", _ASKED), ("d", DomainStarted(config={})), ("a", _ASKED)]
_APPLIED = change_event("memory", Outcome.APPLIED)(request_id="r", property="memory", scope="persistent",
                                                  requested=GiB, value=GiB)
#: A request still open as its chunk starts, completed in it (and its row written, before the `DomainDefined`
#: is checked), then asked again in the same chunk.
_COMPLETED_THEN_ASKED_AGAIN = [("a", _DEFINED), ("a", _ASKED), ("a", DomainStarted(config={})),
                               ("a", _APPLIED), ("b", attrs.evolve(_DEFINED, domain="b", uuid="b")), ("a", _ASKED)]
#: The name of a defined domain defined again, on another stream: refused.
_NAME_TAKEN = [("a", _DEFINED), ("c", attrs.evolve(_DEFINED, uuid="c"))]
#: A domain defined again under another name, its old name then taken by another domain: no refusal.
_RENAMED_THEN_NAME_TAKEN = [("a", _DEFINED), ("c", attrs.evolve(_DEFINED, domain="b", uuid="c")),
                            ("c", attrs.evolve(_DEFINED, domain="c", uuid="c")),
                            ("b", attrs.evolve(_DEFINED, domain="b", uuid="b"))]
#: A name defined again once its domain is undefined: no refusal.
_DEFINED_AGAIN_ONCE_FREE = [("a", _DEFINED), ("a", DomainUndefined()), ("c", attrs.evolve(_DEFINED, uuid="c"))]


def _database() -> SyncTx:
    conn = sqlite3.connect(":memory:")
    for statement in (*SCHEMA, _EVENTS):
        conn.execute(statement)
    return SyncTx(conn)


def _rows(records: list[RecordedEvent]) -> list[tuple[Any, ...]]:
    return [(r.position, r.stream, r.version, *encode(r.event), dumps(r.metadata.to_dict()),
             timestamp(r.recorded_at), "") for r in records]


def _ended(run: Callable[[SyncTx], None]) -> tuple[Any, ...]:
    """Return what `run` left in a new database: its rows and position, or the error it raised and its event."""
    tx = _database()
    try:
        run(tx)
    except Exception as e:  # noqa: BLE001 - the error itself is what is compared
        refused = getattr(e, "refused", None)
        return ("raised", type(e), str(e), refused and (refused.position, type(refused.event)))

    async def fetch_all(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return tx.fetch_all(sql, params)

    return ("gave", asyncio.run(table_rows(fetch_all)),
            tx.fetch_all("SELECT position FROM projection_position WHERE name = 'all'"))


@settings(database=None, deadline=None, max_examples=300)
@given(events=_spoilt_logs(), size=st.integers(1, 6))
@example(events=_REFUSED_THEN_ASKED_AGAIN, size=4)
@example(events=_DEFINED_AGAIN_ONCE_FREE, size=3)
@example(events=_COMPLETED_THEN_ASKED_AGAIN, size=3)
@example(events=_RENAMED_THEN_NAME_TAKEN, size=2)
@example(events=_NAME_TAKEN, size=2)
def test_an_import_into_an_empty_log_ends_as_appending_its_events_one_by_one_does(
        events: list[tuple[str, Event]], size: int) -> None:
    """`imported` into an empty log, in any chunks, ends as appending each event does: rows, or error and event."""
    rows = _rows(recorded(events))
    chunks = [rows[i:i + size] for i in range(0, len(rows), size)]

    def appended(tx: SyncTx) -> None:  # each event stored, then folded as an append of its own
        projector = TableProjector()
        for row in rows:
            tx.execute_many(INSERT, [row])
            projector.project_sync(tx, [record(row)])

    def imported(tx: SyncTx) -> None:
        assert run_steps_sync(tx, TableProjector().imported(chunks)) == len(rows)

    assert _ended(imported) == _ended(appended)
