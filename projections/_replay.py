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

import contextlib
import gc
from datetime import datetime, timezone
from typing import Any, Callable, Generator, Iterator, Sequence

from eventstore.backends._common import Change, as_change, scan
from eventstore.catalogue import Cause, Outcome, Reason, Scope
from eventstore.codec import dumps, dumps_plain, dumps_value, loads, plain
from eventstore.log import RecordedEvent, timestamp
from eventstore.state import DomainState, Mark, Pending, Slot, apply
from projections.model import TABLES

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
# The columns of a history row that a record holds as objects, not JSON.
_OUTCOMES, _COMPLETED_AT = TABLES["history"][0].index("outcomes"), TABLES["history"][0].index("completed_at")
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
        is_plain = (plain(v for v, _, _ in persistent.values()) and plain(v for v, _, _ in live.values())
                    and plain(self.capabilities.values()) and plain(p[1] for p in self.pending.values()))
        drift = []
        if running:
            for prop, (value, _, _) in sorted(persistent.items()):
                seen = live.get(prop)
                if seen is None or seen[0] == value:
                    continue
                cause, request_id, since, _, at = marks.get(prop) or (_C_EXTERNAL, None, seen[1], None, _NEVER)
                drift.append((uuid, prop, dumps_value(value), dumps_value(seen[0]), cause, request_id, since, at))
        return {
            "domains": [(uuid, self.name, self.guest_type, int(self.defined), int(running),
                         self.version, self.position, dumps_plain(snapshot) if is_plain else dumps(snapshot))],
            "persistent": [(uuid, k, dumps_value(v), p, r) for k, (v, p, r) in sorted(persistent.items())],
            "live": [(uuid, k, dumps_value(v), p, r) for k, (v, p, r) in sorted(live.items())] if running else [],
            "drift": drift,
        }


class Replay:
    """Domain states and open requests' history records, fed stored rows in log order.

    A history record is a list in the columns of its row, its requested
    value and outcomes not yet written as JSON.
    """

    def __init__(self) -> None:
        self.domains: dict[str, _Domain] = {}
        self.history: dict[str, list[Any]] = {}
        self._completed: list[str] = []  # requests completed since the last `completed()`
        self._folding = self._fold([])

    def fold(self, rows: Sequence[Sequence[Any]],
             decode: Callable[[Sequence[Sequence[Any]]], list[Change | RecordedEvent]] = scan) -> str | None:
        """Fold stored rows (`SCAN_COLUMNS`) in order, as `decode` reads them; return None when done.

        An outcome of a request whose record is not held (the caller wrote it
        out, completed) stops the fold and returns the request id: call
        `resume` with the request's stored history row to go on.

        Raises:
            StorageError: a row does not decode.
            ValueError: an event precedes its domain's definition, or an
                outcome names a request never recorded (as `Model.feed`).
        """
        with _collector_paused():
            self._folding = self._fold(decode(rows))
        return self.resume(None)

    def resume(self, row: tuple | None) -> str | None:
        """Go on with the fold `fold` stopped, given the stored history row it asked for (None if there is none).

        Returns and raises as `fold`.
        """
        with _collector_paused():
            try:
                return self._folding.send(row)
            except StopIteration:
                return None

    def _fold(self, items: list[Change | RecordedEvent]) -> Generator[str, tuple | None, None]:
        """Fold `items`, yielding the id of a request whose stored history row is needed, to be sent back."""
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
            if status == _IN_FLIGHT:
                w = domains.get(stream)
                if w is None:
                    raise ValueError(f"{name} at position {position} precedes DomainDefined")
                # eventstore.state._requested (concerns_persistent, concerns_live), and the
                # history record Model.feed starts with an outcome in flight per scope awaited.
                if scope == _BOTH:
                    awaiting = _AW_BOTH if w.running else _AW_PERSISTENT
                elif scope == _PERSISTENT:
                    awaiting = _AW_PERSISTENT
                elif scope == _LIVE:
                    awaiting = _AW_LIVE
                else:  # current
                    awaiting = _AW_LIVE if w.running else _AW_PERSISTENT
                if awaiting is _AW_BOTH:
                    outcomes = {_PERSISTENT: {"status": _IN_FLIGHT, "value": None, "reason": None, "message": None},
                                _LIVE: {"status": _IN_FLIGHT, "value": None, "reason": None, "message": None}}
                elif awaiting is _AW_PERSISTENT:
                    outcomes = {_PERSISTENT: {"status": _IN_FLIGHT, "value": None, "reason": None, "message": None}}
                else:
                    outcomes = {_LIVE: {"status": _IN_FLIGHT, "value": None, "reason": None, "message": None}}
                w.pending[request_id] = [prop, requested, position, at, awaiting, None, at_text]
                w.version, w.position = version, position
                history[request_id] = [request_id, stream, w.name, prop, requested, scope, extra, reason,
                                       at_text, position, outcomes, None]
                continue
            record = history.get(request_id)
            if record is None:  # a late outcome of a request written out: take its row back
                found = yield request_id
                if found is not None:
                    record = history[request_id] = _record(found)
            w = domains.get(stream)
            if w is None:
                raise ValueError(f"{name} at position {position} precedes DomainDefined")
            running = w.running
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
            # eventstore.state._outcome.
            if scope == _PERSISTENT:
                if value is not None and (status == _APPLIED or status == _PARTIAL):
                    w.persistent[prop] = (value, position, request_id)
                    if running:
                        cause = (_C_IN_FLIGHT if pending is not None and _LIVE in pending[4]
                                 else _C_REQUIRES_RESTART)
                        w.marks[prop] = (cause, request_id, position, at, at_text)
            elif running:
                if status == _APPLIED:
                    if value is not None:
                        w.live[prop] = (value, position, request_id)
                    first = pending[5] if pending is not None else None
                    cause = first if first in _REFUSED_FIRST else _C_LIVE_ONLY
                elif status == _PARTIAL:
                    if value is not None:
                        w.live[prop] = (value, position, request_id)
                    cause = _C_PARTIAL
                elif reason == _REQUIRES_RESTART:
                    cause = _C_REQUIRES_RESTART
                elif status == _REFUSED:
                    cause = _C_REFUSED
                else:
                    cause = _C_FAILED
                w.marks[prop] = (cause, request_id, position, at, at_text)
            w.version, w.position = version, position
            # The history record, as Model.feed completes it: once no scope is in flight.
            if record is None:
                raise ValueError(f"outcome at position {position} for unknown request {request_id}")
            outcomes = record[_OUTCOMES]
            outcomes[scope] = {"status": status, "value": value, "reason": reason, "message": extra}
            for o in outcomes.values():
                if o["status"] == _IN_FLIGHT:
                    break
            else:
                record[_COMPLETED_AT] = at_text
                completed.append(request_id)

    def _apply(self, rec: RecordedEvent) -> None:
        """Fold an event other than a change through `eventstore.state.apply`."""
        w = self.domains.get(rec.stream)
        self.domains[rec.stream] = _Domain(apply(None if w is None else w.state(), rec))

    def completed(self) -> list[tuple]:
        """Return the history rows of the requests completed so far, and forget them."""
        rows = []
        with _collector_paused():
            for request_id in self._completed:
                record = self.history.get(request_id)
                if record is not None and record[_COMPLETED_AT] is not None:
                    rows.append(_history_row(record))
                    del self.history[request_id]
        self._completed = []
        return rows

    def rows(self) -> Iterator[tuple[str, list[tuple]]]:
        """Yield `(table, rows)` for every domain and every request still open, in batches."""
        uuids = sorted(self.domains)
        for start in range(0, len(uuids), _ROWS_BATCH):
            batch: dict[str, list[tuple]] = {t: [] for t in TABLES if t != "history"}
            with _collector_paused():
                for uuid in uuids[start:start + _ROWS_BATCH]:
                    for table, part in self.domains[uuid].rows().items():
                        batch[table].extend(part)
            yield from batch.items()
        with _collector_paused():
            history = [_history_row(self.history[r]) for r in sorted(self.history)]
        yield "history", history


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector, if it runs, for one stretch of the rebuild.

    The fold makes no reference cycles, but it allocates several small
    containers per event while it holds many long-lived ones, and the
    collector's passes over them took about a fifth of its time.  A pause
    covers one synchronous stretch (about a chunk), never a `yield`, so other
    threads' cycles wait no longer than that, and it always ends.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _history_row(r: list[Any]) -> tuple:
    """Return the history row of a record, as `Model.history_row` writes it."""
    return (r[0], r[1], r[2], r[3], dumps_value(r[4]), r[5], r[6], r[7], r[8], r[9], dumps_plain(r[_OUTCOMES]),
            r[_COMPLETED_AT])


def _record(row: tuple) -> list[Any]:
    """Return the record of a stored history row."""
    record = list(row)
    record[4], record[_OUTCOMES] = loads(record[4]), loads(record[_OUTCOMES])
    return record


_AW_BOTH, _AW_PERSISTENT, _AW_LIVE = frozenset((_PERSISTENT, _LIVE)), frozenset((_PERSISTENT,)), frozenset((_LIVE,))
# `awaiting - {scope}` for the sets a request starts with.
_WITHOUT = {(aw, scope): aw - {scope} for aw in (_AW_BOTH, _AW_PERSISTENT, _AW_LIVE) for scope in (_PERSISTENT, _LIVE)}
