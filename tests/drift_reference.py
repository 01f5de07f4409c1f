"""The drift rule of docs/reference.md written plainly, as the tests' reference for every drift row.

For each event: did it change the persistent or the live value of a
property?  The latest event that did names the current difference; its
cause is read from what the event was and from its request's outcomes so far.
"""

from __future__ import annotations

from typing import Any, Iterable

from vmledger.eventstore.events import (
    ChangeOutcome, ChangeRequested, DomainDefined, DomainStarted, DomainStopped, DomainUndefined,
    LiveValueObserved, PersistentValueObserved,
)
from vmledger.eventstore.log import RecordedEvent, timestamp
from vmledger.results import DriftRow

FIXED_WHILE_RUNNING = {"max_memory", "max_vcpus", "numa_nodes"}


def _live_cause(outcome: ChangeOutcome) -> str:
    status = outcome.outcome.status
    if status in ("partial", "applied"):
        return "partial" if status == "partial" else "live_only"
    return "requires_restart" if outcome.reason == "requires_restart" else status


def _cause(rec: RecordedEvent, requests: dict[str, Any]) -> str:
    e = rec.event
    if not isinstance(e, ChangeOutcome):
        return "external"
    scope, running_then, outcomes = requests[e.request_id]
    if e.scope == "persistent":
        other = outcomes.get("live")
        if not (scope == "live" or (running_then and scope in ("both", "current"))):
            return "requires_restart" if e.property in FIXED_WHILE_RUNNING else "persistent_only"
        return "in_flight" if other is None else _live_cause(other)
    if e.outcome.status == "partial":
        return "partial"
    other = outcomes.get("persistent")
    if other is None and (scope in ("persistent", "both") or (scope == "current" and not running_then)):
        return "in_flight"
    return other.outcome.status if other is not None and other.outcome.status in ("refused", "failed") else "live_only"


def reference_drift(events: Iterable[RecordedEvent]) -> list[DriftRow]:
    """Return the drift rows after `events`, sorted by domain name and property, as `Ledger.drift` gives them."""
    config: dict[str, dict] = {}
    live: dict[str, dict | None] = {}
    names: dict[str, str] = {}
    made: dict[tuple[str, str], RecordedEvent] = {}
    requests: dict[str, Any] = {}
    for rec in events:
        e, s = rec.event, rec.stream
        values = lambda: {p: (config[s].get(p), (live[s] or {}).get(p)) for p in {*config[s], *(live[s] or {})}}  # noqa: E731
        before = values() if s in config else {}
        if isinstance(e, DomainDefined):
            config[s], live[s], names[s] = dict(e.config), None, e.domain
        elif isinstance(e, DomainStarted):
            live[s] = dict(e.config)
        elif isinstance(e, (DomainStopped, DomainUndefined)):
            live[s] = None
        elif isinstance(e, ChangeRequested):
            requests[e.request_id] = (e.scope, live[s] is not None, {})
        elif isinstance(e, ChangeOutcome):
            requests[e.request_id][2][e.scope] = e
            if e.outcome.status in ("applied", "partial") and e.value is not None:
                if e.scope == "persistent":
                    config[s][e.property] = e.value
                elif live[s] is not None:
                    live[s][e.property] = e.value
        elif isinstance(e, PersistentValueObserved):
            config[s][e.property] = e.value
        elif isinstance(e, LiveValueObserved) and live[s] is not None:
            live[s][e.property] = e.value
        after = values()
        for prop in {*before, *after}:
            if before.get(prop, (None, None)) != after.get(prop, (None, None)):
                made[(s, prop)] = rec
    rows = []
    for (s, prop), rec in made.items():
        p, l = config[s].get(prop), (live[s] or {}).get(prop)
        if p is not None and l is not None and p != l:
            rows.append({"domain": names[s], "property": prop, "persistent": p, "live": l,
                         "cause": _cause(rec, requests), "request_id": getattr(rec.event, "request_id", None),
                         "since_position": rec.position, "since": timestamp(rec.recorded_at)})
    return [DriftRow.from_dict(r) for r in sorted(rows, key=lambda r: (r["domain"], r["property"]))]
