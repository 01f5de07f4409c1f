"""The rebuild's fold: what `Model` computes, over mutable working state.

`Model.feed` builds new frozen states for every event, which an append needs
(its states are shared and snapshotted) and a rebuild of millions of events
cannot afford.  `Replay` keeps one mutable `_Domain` per stream and folds the
change events (`…Requested` and the outcomes, nearly all of a log) in place,
with the rules of `eventstore.state.apply` and `Model.feed` written out once
more; every other event goes through `apply` itself, on a `DomainState` made
for it.  Rows are written as `Model.domain_rows` and `Model.history_row`
write them, text for text.  The property tests in tests/property/test_fold.py
hold the two folds, their states and their rows equal.
"""

from __future__ import annotations

from datetime import datetime, timezone
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any, Generator, Iterable, Iterator

from eventstore.backends._common import Change, as_change
from eventstore.catalogue import Cause, Outcome, Reason, Scope
from eventstore.codec import dumps
from eventstore.log import RecordedEvent, timestamp
from eventstore.state import DomainState, Mark, Pending, Slot, apply
from projections.model import TABLES

try:  # orjson (the `bench` extra) writes JSON faster, and the same text: see `_dumps`.
    from orjson import OPT_SORT_KEYS
    from orjson import dumps as _orjson_dumps
except ImportError:  # pragma: no cover - depends on the environment
    _orjson_dumps = None

__all__ = ["Replay"]

_IN_FLIGHT, _APPLIED, _PARTIAL, _REFUSED, _FAILED = (
    Outcome.REQUESTED.status, Outcome.APPLIED.status, Outcome.PARTIALLY_APPLIED.status,
    Outcome.REFUSED.status, Outcome.FAILED.status)
_PERSISTENT, _LIVE, _BOTH, _CURRENT = Scope.PERSISTENT.value, Scope.LIVE.value, Scope.BOTH.value, Scope.CURRENT.value
_REQUIRES_RESTART = Reason.REQUIRES_RESTART.value
_REFUSED_FIRST = (_REFUSED, _FAILED)
_C_IN_FLIGHT, _C_REQUIRES_RESTART, _C_LIVE_ONLY, _C_PARTIAL, _C_REFUSED, _C_FAILED = (
    Cause.IN_FLIGHT.value, Cause.REQUIRES_RESTART.value, Cause.LIVE_ONLY.value, Cause.PARTIAL.value,
    Cause.REFUSED.value, Cause.FAILED.value)
_C_EXTERNAL = Cause.EXTERNAL.value
# The time `DomainState.drifting` gives a drift with no mark.
_NEVER = timestamp(datetime.min.replace(tzinfo=timezone.utc))
# The values orjson writes as `codec.dumps` does (with the limits `_dumps` catches).
_PLAIN = frozenset((str, int, bool, type(None)))
# Domains turned into rows per batch at the end: bounds the rows held at once.
_ROWS_BATCH = 1000


class _Domain:
    """One domain's `DomainState`, mutable.

    Slots are `(value, position, request_id)`, marks `(cause, request_id,
    position, at, at as text)`, and pending requests `[property, requested,
    position, at, awaiting, persistent_status, at as text]`.
    """

    __slots__ = ("uuid", "name", "guest_type", "defined", "running", "version", "position",
                 "persistent", "live", "marks", "capabilities", "locked_trays", "pending")

    def __init__(self, s: DomainState) -> None:
        self.uuid, self.name, self.guest_type = s.uuid, s.name, s.guest_type
        self.defined, self.running, self.version, self.position = s.defined, s.running, s.version, s.position
        self.persistent = {k: (v.value, v.position, v.request_id) for k, v in s.persistent.items()}
        self.live = {k: (v.value, v.position, v.request_id) for k, v in s.live.items()}
        self.marks = {k: (m.cause, m.request_id, m.position, m.at, timestamp(m.at)) for k, m in s.marks.items()}
        self.capabilities = dict(s.capabilities)
        self.locked_trays = s.locked_trays
        self.pending = {k: [p.property, p.requested, p.position, p.at, p.awaiting, p.persistent_status,
                            timestamp(p.at)] for k, p in s.pending.items()}

    def state(self) -> DomainState:
        """Return the frozen state this working state stands for."""
        return DomainState(
            uuid=self.uuid, name=self.name, guest_type=self.guest_type, defined=self.defined,
            running=self.running, version=self.version, position=self.position,
            persistent={k: Slot(value=v, position=p, request_id=r) for k, (v, p, r) in self.persistent.items()},
            live={k: Slot(value=v, position=p, request_id=r) for k, (v, p, r) in self.live.items()},
            marks={k: Mark(cause=c, request_id=r, position=p, at=at) for k, (c, r, p, at, _) in self.marks.items()},
            capabilities=dict(self.capabilities), locked_trays=self.locked_trays,
            pending={k: Pending(request_id=k, property=prop, requested=req, position=p, at=at,
                                awaiting=aw, persistent_status=st)
                     for k, (prop, req, p, at, aw, st, _) in self.pending.items()},
        )

    def rows(self) -> dict[str, list[tuple]]:
        """Return `model.domain_rows(self.state())`, without making the state."""
        uuid, running, persistent, live, marks = self.uuid, self.running, self.persistent, self.live, self.marks
        snapshot = {
            "uuid": uuid, "name": self.name, "guest_type": self.guest_type,
            "defined": self.defined, "running": running, "version": self.version, "position": self.position,
            "persistent": {k: [v, p, r] for k, (v, p, r) in persistent.items()},
            "live": {k: [v, p, r] for k, (v, p, r) in live.items()},
            "marks": {k: [c, r, p, t] for k, (c, r, p, _, t) in marks.items()},
            "capabilities": dict(self.capabilities),
            "locked_trays": sorted(self.locked_trays),
            "pending": {k: [prop, req, p, t, sorted(aw), st]
                        for k, (prop, req, p, _, aw, st, t) in self.pending.items()},
        }
        plain = (_plain(v for v, _, _ in persistent.values()) and _plain(v for v, _, _ in live.values())
                 and _plain(self.capabilities.values()) and _plain(p[1] for p in self.pending.values()))
        drift = []
        if running:
            for prop, (value, _, _) in sorted(persistent.items()):
                seen = live.get(prop)
                if seen is None or seen[0] == value:
                    continue
                cause, request_id, since, _, at = marks.get(prop) or (_C_EXTERNAL, None, seen[1], None, _NEVER)
                drift.append((uuid, prop, _json(value), _json(seen[0]), cause, request_id, since, at))
        return {
            "domains": [(uuid, self.name, self.guest_type, int(self.defined), int(running),
                         self.version, self.position, _dumps(snapshot) if plain else dumps(snapshot))],
            "persistent": [(uuid, k, _json(v), p, r) for k, (v, p, r) in sorted(persistent.items())],
            "live": [(uuid, k, _json(v), p, r) for k, (v, p, r) in sorted(live.items())] if running else [],
            "drift": drift,
        }


class Replay:
    """Domain states and open requests' history records, fed change events and records in log order."""

    def __init__(self) -> None:
        self.domains: dict[str, _Domain] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self._completed: list[str] = []  # requests completed since the last `completed()`

    def fold(self, items: list[Change | RecordedEvent]) -> Generator[str, dict[str, Any] | None, None]:
        """Fold `items` in order.

        An outcome of a request whose record is not held (the caller wrote it
        out, completed) yields the request id; send back its stored record, or
        None if there is none.

        Raises:
            ValueError: an event precedes its domain's definition, or an
                outcome names a request never recorded (as `Model.feed`).
        """
        domains, history, completed = self.domains, self.history, self._completed
        for item in items:
            if item.__class__ is not tuple:
                rec: RecordedEvent = item  # type: ignore[assignment]
                item = as_change(rec)
                if item is None:
                    self._apply(rec)
                    continue
            (position, stream, version, at, at_text, name, status, request_id, prop, scope,
             requested, value, reason, extra) = item
            if status != _IN_FLIGHT and request_id not in history:
                found = yield request_id
                if found is not None:
                    history[request_id] = found
            w = domains.get(stream)
            if w is None:
                raise ValueError(f"{name} at position {position} precedes DomainDefined")
            running = w.running
            if status == _IN_FLIGHT:
                # eventstore.state._requested, and the history record Model.feed starts.
                persistent = scope == _PERSISTENT or scope == _BOTH or (scope == _CURRENT and not running)
                live = scope == _LIVE or (running and (scope == _BOTH or scope == _CURRENT))
                awaiting = _AWAITING[persistent, live]
                w.pending[request_id] = [prop, requested, position, at, awaiting, None, at_text]
                w.version, w.position = version, position
                scopes = {}
                if persistent:
                    scopes[_PERSISTENT] = {"status": _IN_FLIGHT, "value": None, "reason": None, "message": None}
                if live:
                    scopes[_LIVE] = {"status": _IN_FLIGHT, "value": None, "reason": None, "message": None}
                history[request_id] = {
                    "request_id": request_id, "domain": stream, "domain_name": w.name, "property": prop,
                    "requested": requested, "scope": scope, "principal": extra, "reason": reason,
                    "requested_at": at_text, "position": position, "outcomes": scopes, "completed_at": None,
                }
                continue
            # eventstore.state._settled: the request's pending entry before, and after.
            pending = w.pending.get(request_id)
            if pending is not None:
                awaiting = _WITHOUT.get((pending[4], scope))
                if awaiting is None:
                    awaiting = pending[4] - {scope}
                if awaiting:
                    w.pending[request_id] = [pending[0], pending[1], pending[2], pending[3], awaiting,
                                             status if scope == _PERSISTENT else pending[5], pending[6]]
                else:
                    del w.pending[request_id]
            applied = status == _APPLIED or status == _PARTIAL
            # eventstore.state._outcome.
            if scope == _PERSISTENT:
                if applied and value is not None:
                    w.persistent[prop] = (value, position, request_id)
                    if running:
                        cause = (_C_IN_FLIGHT if pending is not None and _LIVE in pending[4]
                                 else _C_REQUIRES_RESTART)
                        w.marks[prop] = (cause, request_id, position, at, at_text)
            elif running:
                if applied and value is not None:
                    w.live[prop] = (value, position, request_id)
                if status == _APPLIED:
                    first = pending[5] if pending is not None else None
                    cause = first if first in _REFUSED_FIRST else _C_LIVE_ONLY
                elif status == _PARTIAL:
                    cause = _C_PARTIAL
                elif reason == _REQUIRES_RESTART:
                    cause = _C_REQUIRES_RESTART
                elif status == _REFUSED:
                    cause = _C_REFUSED
                else:
                    cause = _C_FAILED
                w.marks[prop] = (cause, request_id, position, at, at_text)
            w.version, w.position = version, position
            # The history record, as Model.feed completes it.
            record = history.get(request_id)
            if record is None:
                raise ValueError(f"outcome at position {position} for unknown request {request_id}")
            outcomes = record["outcomes"]
            outcomes[scope] = {"status": status, "value": value, "reason": reason, "message": extra}
            for o in outcomes.values():
                if o["status"] == _IN_FLIGHT:
                    record["completed_at"] = None
                    break
            else:
                record["completed_at"] = at_text
                completed.append(request_id)

    def _apply(self, rec: RecordedEvent) -> None:
        """Fold an event other than a change through `eventstore.state.apply`."""
        w = self.domains.get(rec.stream)
        self.domains[rec.stream] = _Domain(apply(None if w is None else w.state(), rec))

    def completed(self) -> list[tuple]:
        """Return the history rows of the requests completed so far, and forget them."""
        rows = []
        for request_id in self._completed:
            record = self.history.get(request_id)
            if record is not None and record["completed_at"] is not None:
                rows.append(_history_row(record))
                del self.history[request_id]
        self._completed = []
        return rows

    def rows(self) -> Iterator[tuple[str, list[tuple]]]:
        """Yield `(table, rows)` for every domain and every request still open, in batches."""
        uuids = sorted(self.domains)
        for start in range(0, len(uuids), _ROWS_BATCH):
            batch: dict[str, list[tuple]] = {t: [] for t in TABLES if t != "history"}
            for uuid in uuids[start:start + _ROWS_BATCH]:
                for table, part in self.domains[uuid].rows().items():
                    batch[table].extend(part)
            yield from batch.items()
        yield "history", [_history_row(self.history[r]) for r in sorted(self.history)]


def _dumps(obj: Any) -> str:
    """Return `codec.dumps(obj)` for an object holding no float, through orjson when it is installed.

    For text, integers within 64 bits, booleans, null, and lists and dicts
    of them with text keys, orjson with sorted keys writes the very text of
    `codec.dumps`; it refuses other integers and lone surrogates, which take
    `dumps`.  It writes floats differently (`1e16`, not `1e+16`), so callers
    keep them away: history outcomes hold only what the event classes admit
    (integers and text), and a snapshot is checked first.
    """
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(obj, option=OPT_SORT_KEYS).decode()
        except TypeError:
            pass
    return dumps(obj)


def _plain(values: Iterable[Any]) -> bool:
    """Tell whether `_dumps` may write every one of `values` (a config value may be a float, or hold one)."""
    return all(v.__class__ in _PLAIN for v in values)


def _json(value: Any) -> str:
    """Return `codec.dumps(value)`, quicker for text and integers (written as `json` writes them)."""
    kind = value.__class__
    if kind is str:
        return encode_basestring(value)
    if kind is int:
        return int.__repr__(value)
    return dumps(value)


def _history_row(r: dict[str, Any]) -> tuple:
    """Return `model.history_row(r)`."""
    return (r["request_id"], r["domain"], r["domain_name"], r["property"], _json(r["requested"]),
            r["scope"], r["principal"], r["reason"], r["requested_at"], r["position"],
            _dumps(r["outcomes"]), r["completed_at"])


_AWAITING = {
    (p, l): frozenset(s for s, wanted in ((_PERSISTENT, p), (_LIVE, l)) if wanted)
    for p in (False, True) for l in (False, True)
}
# `awaiting - {scope}` for the sets `_AWAITING` makes.
_WITHOUT = {(aw, scope): aw - {scope} for aw in _AWAITING.values() for scope in (_PERSISTENT, _LIVE)}
