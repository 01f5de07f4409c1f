"""The read model in memory: a pure fold of records into the rows of every projection.

The same `Model` serves three purposes: the incremental update inside an
append (seeded with the rows the append touches), the rebuild (seeded with
nothing), and time travel (fed only the records up to a position).  So a
rebuild and the incremental tables cannot disagree unless storage does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

import attrs

from eventstore.catalogue import Outcome
from eventstore.codec import dumps, dumps_plain, dumps_value, loads, plain
from eventstore.events import ChangeOutcome, ChangeRequested
from eventstore.log import RecordedEvent, timestamp
from eventstore.state import DomainState, Mark, Pending, Slot, apply, concerns_live, concerns_persistent

__all__ = ["Model", "state_to_json", "state_from_json", "TABLES"]

#: Projection tables and their columns, in row order; the first `key` columns identify a row.
TABLES: dict[str, tuple[tuple[str, ...], int]] = {
    "domains": (("uuid", "name", "guest_type", "defined", "running", "version", "position", "state"), 1),
    "persistent": (("domain", "property", "value", "position", "request_id"), 2),
    "live": (("domain", "property", "value", "position", "request_id"), 2),
    "drift": (("domain", "property", "persistent", "live", "cause", "request_id", "since_position", "since"), 2),
    "history": (("request_id", "domain", "domain_name", "property", "requested", "scope", "principal",
                 "reason", "requested_at", "position", "outcomes", "completed_at"), 1),
}


def _iso(t: datetime) -> str:
    return timestamp(t)


def state_to_json(state: DomainState) -> str:
    """Return the snapshot text of a domain state."""
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
        "pending": {k: [p.property, p.requested, p.position, _iso(p.at), sorted(p.awaiting), p.persistent_status]
                    for k, p in state.pending.items()},
    }
    if (plain(s.value for s in state.persistent.values()) and plain(s.value for s in state.live.values())
            and plain(state.capabilities.values()) and plain(p.requested for p in state.pending.values())):
        return dumps_plain(snapshot)
    return dumps(snapshot)


def state_from_json(text: str) -> DomainState:
    """Return the domain state a snapshot text holds."""
    d = loads(text)

    def slots(m: dict) -> dict[str, Slot]:
        return {k: Slot(value=v, position=p, request_id=r) for k, (v, p, r) in m.items()}

    return DomainState(
        uuid=d["uuid"], name=d["name"], guest_type=d["guest_type"],
        defined=d["defined"], running=d["running"], version=d["version"], position=d["position"],
        persistent=slots(d["persistent"]), live=slots(d["live"]),
        marks={k: Mark(cause=c, request_id=r, position=p, at=datetime.fromisoformat(t))
               for k, (c, r, p, t) in d["marks"].items()},
        capabilities=d["capabilities"], locked_trays=frozenset(d["locked_trays"]),
        pending={k: Pending(request_id=k, property=prop, requested=req, position=p,
                            at=datetime.fromisoformat(t), awaiting=frozenset(aw), persistent_status=ps)
                 for k, (prop, req, p, t, aw, ps) in d["pending"].items()},
    )


@attrs.define
class Model:
    """Domain states and history records, fed records in log order."""

    states: dict[str, DomainState] = attrs.field(factory=dict)
    history: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    position: int = 0

    def feed(self, rec: RecordedEvent) -> None:
        """Apply one record to the domain states and the history."""
        before = self.states.get(rec.stream)
        after = apply(before, rec)
        self.states[rec.stream] = after
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
            scopes = {
                s: {"status": "in_flight", "value": None, "reason": None, "message": None}
                for s, wanted in (("persistent", concerns_persistent(e.scope, running)),
                                  ("live", concerns_live(e.scope, running)))
                if wanted
            }
            self.history[e.request_id] = {
                "request_id": e.request_id, "domain": rec.stream, "domain_name": name,
                "property": e.property, "requested": e.value, "scope": e.scope,
                "principal": e.principal, "reason": e.reason,
                "requested_at": _iso(rec.recorded_at), "position": rec.position,
                "outcomes": scopes, "completed_at": None,
            }
        elif isinstance(e, ChangeOutcome):
            record = self.history.get(e.request_id)
            if record is None:
                raise ValueError(f"outcome at position {rec.position} for unknown request {e.request_id}")
            outcomes = dict(record["outcomes"])
            outcomes[e.scope] = {"status": e.outcome.status, "value": e.value,
                                 "reason": e.reason, "message": e.message}
            done = all(o["status"] != Outcome.REQUESTED.status for o in outcomes.values())
            self.history[e.request_id] = {
                **record, "outcomes": outcomes,
                "completed_at": _iso(rec.recorded_at) if done else None,
            }

    def feed_all(self, records: Iterable[RecordedEvent]) -> None:
        """Apply records in order."""
        for rec in records:
            self.feed(rec)

    # Rows, in the column order of TABLES.

    def domain_rows(self, uuid: str) -> dict[str, list[tuple]]:
        """Return the rows of every per-domain table for one domain."""
        s = self.states[uuid]
        rows: dict[str, list[tuple]] = {
            "domains": [(s.uuid, s.name, s.guest_type, int(s.defined), int(s.running),
                         s.version, s.position, state_to_json(s))],
            "persistent": [(uuid, k, dumps_value(v.value), v.position, v.request_id)
                           for k, v in sorted(s.persistent.items())],
            "live": [(uuid, k, dumps_value(v.value), v.position, v.request_id)
                     for k, v in sorted(s.live.items())] if s.running else [],
            "drift": [(uuid, prop, dumps_value(p.value), dumps_value(l.value), m.cause, m.request_id,
                       m.position, _iso(m.at)) for prop, p, l, m in s.drifting()],
        }
        return rows

    def history_row(self, request_id: str) -> tuple:
        """Return the history row of one request."""
        r = self.history[request_id]
        # Outcomes hold only what the event classes admit: text, integers, null.
        return (r["request_id"], r["domain"], r["domain_name"], r["property"], dumps_value(r["requested"]),
                r["scope"], r["principal"], r["reason"], r["requested_at"], r["position"],
                dumps_plain(r["outcomes"]), r["completed_at"])

    def all_rows(self) -> dict[str, list[tuple]]:
        """Return every row of every projection table, sorted by key."""
        rows: dict[str, list[tuple]] = {t: [] for t in TABLES}
        for uuid in sorted(self.states):
            for table, part in self.domain_rows(uuid).items():
                rows[table].extend(part)
        rows["history"] = [self.history_row(r) for r in sorted(self.history)]
        for table, (_, key) in TABLES.items():
            rows[table].sort(key=lambda row: row[:key])
        return rows


def history_from_row(row: tuple) -> dict[str, Any]:
    """Return the history record a stored row holds."""
    cols = TABLES["history"][0]
    r = dict(zip(cols, row))
    r["requested"] = loads(r["requested"])
    r["outcomes"] = loads(r["outcomes"])
    return r
