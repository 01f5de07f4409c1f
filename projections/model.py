"""The read model: the rows of every projection, made from folded domain states and history records.

The rules live in one place each: a domain's state in
`eventstore.state.DomainFold`, a request's history record in
`requested_record` and `settle_record`, and every row in `domain_rows` and
`history_row`.  `Model` drives them over records: the incremental update
inside an append (seeded with the rows the append touches) and time travel
(fed only the records up to a position).  The rebuild and `verify` drive the
same rules over the stored rows (`projections.replay.Replay`).  So a rebuild
and the incremental tables cannot disagree unless storage does.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any, Iterable, Sequence

import attrs

from vmledger.eventstore.catalogue import Cause, Outcome
from vmledger.eventstore.codec import dumps, dumps_plain, dumps_value, loads_stored, plain
from vmledger.eventstore.events import ChangeOutcome, ChangeRequested
from vmledger.eventstore.log import RecordedEvent, timestamp
from vmledger.eventstore.state import (
    DomainFold, DomainState, Mark, Pending, Slot, apply, awaiting, drift_marks,
)

__all__ = ["Model", "TABLES", "state_to_json", "state_from_json", "domain_rows", "domains_row", "properties",
           "property_rows", "changed_properties", "history_row", "history_from_row", "requested_record",
           "settle_record", "completed", "record_from_row", "outcome_rows", "stored_outcome_rows", "request_rows",
           "ended_episodes", "FORGET_REQUEST", "KEPT_EPISODES", "OUTCOME_DAYS", "count_outcome_days",
           "outcome_day_rows"]

#: Projection tables and their columns, in row order; the first `key` columns identify a row.
TABLES: dict[str, tuple[tuple[str, ...], int]] = {
    "domains": (("uuid", "name", "guest_type", "defined", "running", "version", "position", "state"), 1),
    "persistent": (("domain", "property", "value", "position", "request_id"), 2),
    "live": (("domain", "property", "value", "position", "request_id"), 2),
    "drift": (("domain", "property", "persistent", "live", "cause", "request_id", "since_position", "since"), 2),
    "history": (("request_id", "domain", "domain_name", "property", "requested", "scope", "principal",
                 "reason", "requested_at", "position", "outcomes", "completed_at"), 1),
    # A drift episode: one drift row's life, from the event that made the difference to the one that
    # ended the difference or made another (ended None while the row stands).
    "episodes": (("domain", "property", "since_position", "cause", "request_id", "since", "ended_position",
                  "ended"), 3),
}
#: The outcomes of the requests made on each UTC day, counted by principal, property, scope, status and
#: reason ('' for none: a key column is never null); the first `key` columns identify a row.  Not one of
#: `TABLES`, which are each domain's rows: these are the whole ledger's, so that an audit of a month
#: sums a few rows a day instead of counting every outcome (issue 17).  The projector adds each
#: append's change to the counts, so a count may fall to 0: such a row stands for no row.
OUTCOME_DAYS: tuple[tuple[str, ...], int] = (("day", "principal", "property", "scope", "status", "reason", "count"), 6)
#: The episodes an audit lists: all but the windows between one request's two outcomes, which ended `in_flight`.
#: The projector stores no such window once it ended (`ended_episodes`); ledgers of older rules hold them.
KEPT_EPISODES = f"(cause <> '{Cause.IN_FLIGHT.value}' OR ended IS NULL)"
#: The statements that take a request's rows out (a late outcome reopens a written request), by request id.
FORGET_REQUEST = ("DELETE FROM history WHERE request_id = ?",)


def _iso(t: datetime) -> str:
    return timestamp(t)


def state_to_json(state: DomainState | DomainFold) -> str:
    """Return the snapshot text of a domain state (or of a fold, which has the same fields)."""
    def slots(m: Any) -> dict:
        return {k: [s.value, s.position, s.request_id] for k, s in m.items()}

    snapshot = {
        "uuid": state.uuid, "name": state.name, "guest_type": state.guest_type,
        "defined": state.defined, "running": state.running,
        "version": state.version, "position": state.position,
        "persistent": slots(state.persistent), "live": slots(state.live),
        "marks": {k: [m.cause, m.request_id, m.position, _iso(m.at)] for k, m in state.marks.items()},
        "capabilities": dict(state.capabilities),
        "locked_trays": sorted(state.locked_trays),
        "pending": {k: [p.property, p.requested, p.position, _iso(p.at), sorted(p.awaiting), p.persistent_status,
                        p.live_cause] for k, p in state.pending.items()},
    }
    if (plain(s.value for s in state.persistent.values()) and plain(s.value for s in state.live.values())
            and plain(state.capabilities.values()) and plain(p.requested for p in state.pending.values())):
        return dumps_plain(snapshot)
    return dumps(snapshot)


def state_from_json(text: str) -> DomainState:
    """Return the domain state a snapshot text holds."""
    d = loads_stored(text, "domain state")

    def slots(m: dict) -> dict[str, Slot]:
        return {k: Slot(value=v, position=p, request_id=r) for k, (v, p, r) in m.items()}

    return DomainState(
        uuid=d["uuid"], name=d["name"], guest_type=d["guest_type"],
        defined=d["defined"], running=d["running"], version=d["version"], position=d["position"],
        persistent=slots(d["persistent"]), live=slots(d["live"]),
        marks={k: Mark(cause=c, request_id=r, position=p, at=datetime.fromisoformat(t))
               for k, (c, r, p, t) in d["marks"].items()},
        capabilities=d["capabilities"], locked_trays=frozenset(d["locked_trays"]),
        # A snapshot written before `live_cause` existed has six fields.
        pending={k: Pending(request_id=k, property=prop, requested=req, position=p,
                            at=datetime.fromisoformat(t), awaiting=frozenset(aw), persistent_status=ps,
                            live_cause=rest[0] if rest else None)
                 for k, (prop, req, p, t, aw, ps, *rest) in d["pending"].items()},
    )


_IN_FLIGHT = Outcome.REQUESTED.status


# A history record, as the fold keeps it: a list in the columns of its row, the requested value and
# the outcomes (scope -> status, value, reason, message) as objects, not JSON yet.
_OUTCOMES, _COMPLETED_AT = TABLES["history"][0].index("outcomes"), TABLES["history"][0].index("completed_at")


def requested_record(request_id: str, stream: str, name: str, prop: str, requested: Any, scope: str,
                     principal: str, reason: str | None, at_text: str, position: int,
                     awaiting: frozenset[str]) -> list[Any]:
    """Return the history record a `…Requested` starts: an outcome in flight for each scope it awaits.

    `awaiting` is `eventstore.state.awaiting(scope, running)`, with whether the domain ran before the event.
    """
    outcomes = {s: {"status": _IN_FLIGHT, "value": None, "reason": None, "message": None} for s in awaiting}
    return [request_id, stream, name, prop, requested, scope, principal, reason, at_text, position, outcomes, None]


def settle_record(record: list[Any], scope: str, status: str, value: Any, reason: str | None,
                  message: str | None, at_text: str) -> None:
    """Record the outcome of `scope` in a history record, in place; it is completed once no scope is in flight."""
    outcomes = record[_OUTCOMES]
    outcomes[scope] = {"status": status, "value": value, "reason": reason, "message": message}
    completed = at_text
    for o in outcomes.values():
        if o["status"] == _IN_FLIGHT:
            completed = None
            break
    record[_COMPLETED_AT] = completed


def outcome_rows(record: list[Any]) -> list[tuple]:
    """Return the outcomes of a history record, one per scope, by scope.

    Each is `(request_id, scope, domain, property, principal, requested_at,
    position, status, reason)`: no table's row (the `history` row's
    `outcomes` JSON holds them, and an audit reads them there), but what
    `count_outcome_days` counts.
    """
    return [(record[0], scope, record[1], record[3], record[6], record[8], record[9], o["status"], o["reason"])
            for scope, o in sorted(record[_OUTCOMES].items())]


def stored_outcome_rows(row: Sequence[Any]) -> list[tuple]:
    """Return `outcome_rows` of a stored history row, decoding its outcomes alone (not its requested value)."""
    record = list(row)
    record[_OUTCOMES] = loads_stored(record[_OUTCOMES], "history row")
    return outcome_rows(record)


def count_outcome_days(counts: Counter[tuple], rows: Iterable[tuple], sign: int = 1) -> None:
    """Add `sign` to `counts` for each outcome (`outcome_rows`), under its `OUTCOME_DAYS` key.

    The day is the first ten characters of the request's stored time
    (`eventstore.log.timestamp`: UTC, fixed width), its date.
    """
    for r in rows:
        counts[r[5][:10], r[4], r[3], r[1], r[7], r[8] or ""] += sign


def outcome_day_rows(counts: Counter[tuple]) -> list[tuple]:
    """Return the `outcome_days` rows (or changes to them) of counts, by key, leaving out the zero ones."""
    return [(*key, n) for key, n in sorted(counts.items()) if n]


def request_rows(records: Iterable[list[Any]]) -> list[tuple[str, list[tuple]]]:
    """Return `(table, rows)` of the `history` rows of history records."""
    return [("history", [history_row(record) for record in records])]


def _episode(uuid: str, prop: str, mark: Mark, ended_position: int | None, ended: str | None) -> tuple:
    return (uuid, prop, mark.position, mark.cause, mark.request_id, _iso(mark.at), ended_position, ended)


def ended_episodes(uuid: str, before: dict[str, Mark], after: dict[str, Mark], position: int,
                   at_text: str) -> list[tuple]:
    """Return the rows of the drift episodes an event at `position` ended: the marks of `before` gone from `after`.

    `before` and `after` are the drifting marks (`eventstore.state.drift_marks`)
    around the event; a mark replaced by one of another event ends its episode
    too, while one whose cause alone changed (an `in_flight` settled) goes on.
    An episode that ends while its cause is still `in_flight` (the window
    between a request's two outcomes) makes no row: the audit never lists it
    (`KEPT_EPISODES`), and its open row is deleted with its drift row.
    """
    return [_episode(uuid, prop, mark, position, at_text) for prop, mark in sorted(before.items())
            if ((now := after.get(prop)) is None or now.position != mark.position) and mark.cause != Cause.IN_FLIGHT]


def completed(record: list[Any]) -> bool:
    """Tell whether a history record has an outcome in every scope."""
    return record[_COMPLETED_AT] is not None


def domain_rows(s: DomainState | DomainFold, snapshot: str | None = None) -> dict[str, list[tuple]]:
    """Return the rows of every per-domain table for one domain (`snapshot`: its state text, if known)."""
    rows: dict[str, list[tuple]] = {"domains": [domains_row(s, snapshot)], "persistent": [], "live": [], "drift": [],
                                    "episodes": []}
    for prop in properties(s):
        for table, row in property_rows(s, prop):
            rows[table].append(row)
    return rows


def domains_row(s: DomainState | DomainFold, snapshot: str | None = None) -> tuple:
    """Return the `domains` row of one domain (`snapshot`: its state text, if known)."""
    return (s.uuid, s.name, s.guest_type, int(s.defined), int(s.running), s.version, s.position,
            state_to_json(s) if snapshot is None else snapshot)


def properties(s: DomainState | DomainFold) -> list[str]:
    """Return the properties a domain has rows of (`property_rows`), sorted."""
    return sorted({*s.persistent, *s.live, *s.marks} if s.running else s.persistent)


def property_rows(s: DomainState | DomainFold, prop: str) -> list[tuple[str, tuple]]:
    """Return `(table, row)` for each row of one property of a domain, in the tables other than `domains`.

    They are made of the property's persistent and live slots and its mark
    alone, and whether the domain runs: a `persistent` row, a `live` one while
    it runs, and a `drift` row with its open `episodes` row where both values
    differ (`eventstore.state.drifting`).
    """
    uuid, p = s.uuid, s.persistent.get(prop)
    rows = [] if p is None else [("persistent", (uuid, prop, dumps_value(p.value), p.position, p.request_id))]
    if s.running and (l := s.live.get(prop)) is not None:
        rows.append(("live", (uuid, prop, dumps_value(l.value), l.position, l.request_id)))
        # The fold keeps a mark exactly where both values differ; a snapshot written by an older fold may not.
        if p is not None and (m := s.marks.get(prop)) is not None and p.value != l.value:
            rows.append(("drift", (uuid, prop, dumps_value(p.value), dumps_value(l.value), m.cause, m.request_id,
                                   m.position, _iso(m.at))))
            rows.append(("episodes", _episode(uuid, prop, m, None, None)))
    return rows


def changed_properties(before: DomainState | DomainFold, after: DomainState | DomainFold) -> list[str]:
    """Return the properties whose `property_rows` may differ between two states of a domain, sorted.

    A property's rows are made of its slots and mark alone, and the fold
    replaces a slot or mark it changes, never changes one in place: a
    property whose three are the same objects in both has the same rows.
    Every property, when the domain started or stopped between the two.
    """
    if before.running != after.running:
        return sorted({*properties(before), *properties(after)})
    maps = [(before.persistent, after.persistent)]
    if after.running:
        maps += [(before.live, after.live), (before.marks, after.marks)]
    return sorted({prop for old, new in maps for prop in {*old, *new} if old.get(prop) is not new.get(prop)})


def history_row(r: list[Any]) -> tuple:
    """Return the row of a history record."""
    # Outcomes hold only what the event classes admit: text, integers, null.
    return (r[0], r[1], r[2], r[3], dumps_value(r[4]), r[5], r[6], r[7], r[8], r[9], dumps_plain(r[10]), r[11])


def record_from_row(row: tuple) -> list[Any]:
    """Return the history record, as the fold keeps it, that a stored row holds."""
    record = list(row)
    record[4] = loads_stored(record[4], "history row")
    record[_OUTCOMES] = loads_stored(record[_OUTCOMES], "history row")
    return record


@attrs.define
class Model:
    """Domain states and history records, fed records in log order."""

    states: dict[str, DomainState] = attrs.field(factory=dict)
    history: dict[str, list[Any]] = attrs.field(factory=dict)
    position: int = 0
    #: The rows of the drift episodes ended so far, in log order.
    ended: list[tuple] = attrs.field(factory=list)

    def feed(self, rec: RecordedEvent) -> None:
        """Apply one record to the domain states and the history.

        Raises:
            ValueError: the fold refuses the record (see `eventstore.state.apply`, `feed_history`).
        """
        before = self.states.get(rec.stream)
        after = apply(before, rec)
        self.states[rec.stream] = after
        if before is not None and before.marks:
            self.ended.extend(ended_episodes(rec.stream, drift_marks(before), drift_marks(after), rec.position,
                                             _iso(rec.recorded_at)))
        self.feed_history(rec, bool(before and before.running), after.name)
        self.position = rec.position

    def feed_history(self, rec: RecordedEvent, running: bool, name: str) -> None:
        """Apply one record to the history alone.

        A `…Requested` needs whether its domain was running before it, and
        the domain's name; an outcome needs only the request's record.

        Raises:
            ValueError: an outcome of a request the history does not hold.
        """
        e = rec.event
        if isinstance(e, ChangeRequested):
            self.history[e.request_id] = requested_record(
                e.request_id, rec.stream, name, e.property, e.value, e.scope, e.principal, e.reason,
                _iso(rec.recorded_at), rec.position, awaiting(e.scope, running))
        elif isinstance(e, ChangeOutcome):
            record = self.history.get(e.request_id)
            if record is None:
                raise ValueError(f"outcome at position {rec.position} for unknown request {e.request_id}")
            # A new record: the one held may be a batch's saved copy, to put back if the batch fails.
            record = list(record)
            record[_OUTCOMES] = dict(record[_OUTCOMES])
            settle_record(record, e.scope, e.outcome.status, e.value, e.reason, e.message, _iso(rec.recorded_at))
            self.history[e.request_id] = record

    def feed_all(self, records: Iterable[RecordedEvent]) -> None:
        """Apply records in order."""
        for rec in records:
            self.feed(rec)

    # Rows, in the column order of TABLES.

    def domain_rows(self, uuid: str) -> dict[str, list[tuple]]:
        """Return the rows of every per-domain table for one domain."""
        return domain_rows(self.states[uuid])

    def history_row(self, request_id: str) -> tuple:
        """Return the history row of one request."""
        return history_row(self.history[request_id])

    def all_rows(self) -> dict[str, list[tuple]]:
        """Return every row of every projection table, sorted by key."""
        rows: dict[str, list[tuple]] = {t: [] for t in TABLES}
        for uuid in sorted(self.states):
            for table, part in self.domain_rows(uuid).items():
                rows[table].extend(part)
        for table, part in request_rows(self.history[r] for r in sorted(self.history)):
            rows[table] = part
        rows["episodes"].extend(self.ended)
        for table, (_, key) in TABLES.items():
            rows[table].sort(key=lambda row: row[:key])
        return rows


def history_from_row(row: tuple) -> dict[str, Any]:
    """Return the history record a stored row holds."""
    cols = TABLES["history"][0]
    r = dict(zip(cols, row))
    r["requested"] = loads_stored(r["requested"], "history row")
    r["outcomes"] = loads_stored(r["outcomes"], "history row")
    return r
