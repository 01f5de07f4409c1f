"""The domain state fold: `apply(state, recorded) -> state`, pure.

Decisions read this state; the projections materialise it.  Dicts inside the
frozen classes are never mutated: every change builds new ones.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping

import attrs

from eventstore.catalogue import Cause, Outcome, Reason, Scope
from eventstore.events import (
    ChangeOutcome,
    ChangeRequested,
    DomainDefined,
    DomainStarted,
    DomainStopped,
    DomainUndefined,
    GuestCapabilitiesObserved,
    LiveValueObserved,
    MediaTrayLocked,
    MediaTrayUnlocked,
    PersistentValueObserved,
)
from eventstore.hypervisor import Value
from eventstore.log import RecordedEvent

__all__ = ["Slot", "Mark", "Pending", "DomainState", "apply", "fold", "concerns_live"]


@attrs.frozen(kw_only=True)
class Slot:
    """A value in force, and the position and request that put it there."""

    value: Value
    position: int
    request_id: str | None = None


@attrs.frozen(kw_only=True)
class Mark:
    """Why a property's live value last came to differ from its persistent one."""

    cause: str
    request_id: str | None
    position: int
    at: datetime


@attrs.frozen(kw_only=True)
class Pending:
    """A request with a scope whose outcome is not yet recorded.

    Only an outcome ends it: a stop, start or undefinition leaves it pending,
    as its history record stays in flight, so the decisions that stop or
    observe a domain see it and record its outcome.
    """

    request_id: str
    property: str
    requested: Value
    position: int
    at: datetime
    #: The scopes (`persistent`, `live`) still without an outcome; never empty.
    awaiting: frozenset[str]
    persistent_status: str | None = None

    def awaits(self, scope: str) -> bool:
        """Tell whether the outcome of `scope` is still to be recorded."""
        return scope in self.awaiting


# Enum values read once: a member's `.value` costs a descriptor call, and the fold reads them per event.
_PERSISTENT, _LIVE, _BOTH, _CURRENT = (s.value for s in (Scope.PERSISTENT, Scope.LIVE, Scope.BOTH, Scope.CURRENT))
_C_EXTERNAL, _C_LIVE_ONLY, _C_PARTIAL, _C_REQUIRES_RESTART, _C_REFUSED, _C_FAILED, _C_IN_FLIGHT = (c.value for c in (
    Cause.EXTERNAL, Cause.LIVE_ONLY, Cause.PARTIAL, Cause.REQUIRES_RESTART, Cause.REFUSED, Cause.FAILED, Cause.IN_FLIGHT))
_R_REQUIRES_RESTART = Reason.REQUIRES_RESTART.value


@attrs.frozen(kw_only=True)
class DomainState:
    """Everything the log says about one domain at one position."""

    uuid: str
    name: str
    guest_type: str
    defined: bool = True
    running: bool = False
    version: int = 0
    position: int = 0
    persistent: Mapping[str, Slot] = attrs.field(factory=dict)
    live: Mapping[str, Slot] = attrs.field(factory=dict)
    marks: Mapping[str, Mark] = attrs.field(factory=dict)
    capabilities: Mapping[str, bool | None] = attrs.field(factory=dict)
    locked_trays: frozenset[str] = frozenset()
    pending: Mapping[str, Pending] = attrs.field(factory=dict)

    @property
    def devices(self) -> tuple[str, ...]:
        """Return the CD-ROM devices of the domain, sorted."""
        return tuple(sorted(p.split(":", 1)[1] for p in self.persistent if p.startswith("media:")))

    def has_property(self, prop: str) -> bool:
        """Tell whether the domain has `prop` (every catalogue property, its own media)."""
        return not prop.startswith("media:") or prop in self.persistent

    def drifting(self) -> list[tuple[str, Slot, Slot, Mark]]:
        """Return `(property, persistent, live, mark)` wherever live differs, sorted."""
        if not self.running:
            return []
        rows = []
        for prop in sorted(self.persistent):
            p, l = self.persistent[prop], self.live.get(prop)
            if l is None or l.value == p.value:
                continue
            mark = self.marks.get(prop) or Mark(
                cause=_C_EXTERNAL, request_id=None, position=l.position, at=datetime.min.replace(tzinfo=timezone.utc)
            )
            rows.append((prop, p, l, mark))
        return rows


def _evolve(state: DomainState, **changes: Any) -> DomainState:
    """Return `attrs.evolve(state, **changes)` without its per-call introspection: the fold's hot path."""
    values = {name: getattr(state, name) for name in _STATE_FIELDS}
    values.update(changes)
    return DomainState(**values)


_STATE_FIELDS = tuple(a.name for a in attrs.fields(DomainState))


def concerns_live(scope: str, running: bool) -> bool:
    """Tell whether a request with `scope` concerns the live config."""
    return scope == _LIVE or (running and scope in (_BOTH, _CURRENT))


def concerns_persistent(scope: str, running: bool) -> bool:
    """Tell whether a request with `scope` concerns the persistent config."""
    return scope in (_PERSISTENT, _BOTH) or (
        scope == _CURRENT and not running
    )


def _with(mapping: Mapping, key: str, value: object) -> dict:
    new = dict(mapping)
    new[key] = value
    return new


def _without(mapping: Mapping, key: str) -> dict:
    new = dict(mapping)
    new.pop(key, None)
    return new


def _slots(config: tuple, position: int) -> dict[str, Slot]:
    return {k: Slot(value=val, position=position) for k, val in config}


def _start_marks(state: DomainState, live: dict[str, Slot], rec: RecordedEvent) -> dict[str, Mark]:
    """A domain that boots with values other than its persistent config was changed outside."""
    return {
        prop: Mark(cause=_C_EXTERNAL, request_id=None, position=rec.position, at=rec.recorded_at)
        for prop, slot in live.items()
        if prop in state.persistent and state.persistent[prop].value != slot.value
    }


def _requested(state: DomainState, e: ChangeRequested, rec: RecordedEvent) -> dict[str, Any]:
    # The scopes the history record shows in flight; outcomes in the same append end them.
    awaiting = frozenset(scope for scope, concerned in (
        (_PERSISTENT, concerns_persistent(e.scope, state.running)),
        (_LIVE, concerns_live(e.scope, state.running)),
    ) if concerned)
    pending = Pending(
        request_id=e.request_id, property=e.property, requested=e.value,
        position=rec.position, at=rec.recorded_at, awaiting=awaiting,
    )
    return {"pending": _with(state.pending, e.request_id, pending)}


def _settled(state: DomainState, e: ChangeOutcome) -> tuple[dict[str, Any], Pending | None]:
    """Return the change that ends the awaiting of `e`'s scope, and the request's pending entry before."""
    pending = state.pending.get(e.request_id)
    if pending is None:
        return {}, None
    awaiting = pending.awaiting - {e.scope}
    status = e.outcome.status if e.scope == _PERSISTENT else pending.persistent_status
    if not awaiting:
        return {"pending": _without(state.pending, e.request_id)}, pending
    still = attrs.evolve(pending, awaiting=awaiting, persistent_status=status)
    return {"pending": _with(state.pending, e.request_id, still)}, pending


def _outcome(state: DomainState, e: ChangeOutcome, rec: RecordedEvent) -> dict[str, Any]:
    prop, applied = e.property, e.outcome in (Outcome.APPLIED, Outcome.PARTIALLY_APPLIED)
    mark = lambda cause: Mark(cause=cause, request_id=e.request_id, position=rec.position, at=rec.recorded_at)  # noqa: E731
    changes, pending = _settled(state, e)
    if e.scope == _PERSISTENT:
        if not applied or e.value is None:
            return changes
        changes["persistent"] = _with(state.persistent, prop,
                                      Slot(value=e.value, position=rec.position, request_id=e.request_id))
        if state.running:
            live_to_come = pending is not None and pending.awaits(_LIVE)
            cause = _C_IN_FLIGHT if live_to_come else _C_REQUIRES_RESTART
            changes["marks"] = _with(state.marks, prop, mark(cause))
        return changes
    # Live scope.
    if not state.running:
        return changes
    if applied and e.value is not None:
        changes["live"] = _with(state.live, prop, Slot(value=e.value, position=rec.position, request_id=e.request_id))
    if e.outcome is Outcome.APPLIED:
        refused_first = pending is not None and pending.persistent_status in ("refused", "failed")
        cause = pending.persistent_status if refused_first else _C_LIVE_ONLY
    elif e.outcome is Outcome.PARTIALLY_APPLIED:
        cause = _C_PARTIAL
    elif e.reason == _R_REQUIRES_RESTART:
        cause = _C_REQUIRES_RESTART
    elif e.outcome is Outcome.REFUSED:
        cause = _C_REFUSED
    else:
        cause = _C_FAILED
    changes["marks"] = _with(state.marks, prop, mark(cause))
    return changes


def _observed(rec: RecordedEvent) -> Mark:
    return Mark(cause=_C_EXTERNAL, request_id=None, position=rec.position, at=rec.recorded_at)


def apply(state: DomainState | None, rec: RecordedEvent) -> DomainState:
    """Return the domain state after `rec`; `state` is None before `DomainDefined`."""
    e = rec.event
    if isinstance(e, DomainDefined):
        return DomainState(
            uuid=rec.stream, name=e.domain, guest_type=e.guest_type,
            persistent=_slots(e.config, rec.position), capabilities=dict(e.capabilities),
            version=rec.version, position=rec.position,
        )
    if state is None:
        raise ValueError(f"{e.name} at position {rec.position} precedes DomainDefined")
    # Each event makes one set of changes, and one new state: building states is the fold's main cost.
    changes: dict[str, Any]
    if isinstance(e, ChangeOutcome):
        changes = _outcome(state, e, rec)
    elif isinstance(e, ChangeRequested):
        changes = _requested(state, e, rec)
    elif isinstance(e, DomainStarted):
        live = _slots(e.config, rec.position)
        changes = {"running": True, "live": live, "marks": _start_marks(state, live, rec),
                   "locked_trays": frozenset()}
    elif isinstance(e, (DomainStopped, DomainUndefined)):
        changes = {"running": False, "live": {}, "marks": {}, "locked_trays": frozenset(),
                   "defined": not isinstance(e, DomainUndefined)}
    elif isinstance(e, GuestCapabilitiesObserved):
        changes = {"capabilities": {**state.capabilities, **dict(e.capabilities)}}
    elif isinstance(e, MediaTrayLocked):
        changes = {"locked_trays": state.locked_trays | {e.device}}
    elif isinstance(e, MediaTrayUnlocked):
        changes = {"locked_trays": state.locked_trays - {e.device}}
    elif isinstance(e, LiveValueObserved):
        changes = {"live": _with(state.live, e.property, Slot(value=e.value, position=rec.position)),
                   "marks": _with(state.marks, e.property, _observed(rec))}
    elif isinstance(e, PersistentValueObserved):
        changes = {"persistent": _with(state.persistent, e.property, Slot(value=e.value, position=rec.position))}
        if state.running:  # the live value now differs from the config, or agrees again, because of this change
            changes["marks"] = _with(state.marks, e.property, _observed(rec))
    else:
        raise ValueError(f"no fold for {e.name}")
    changes["version"], changes["position"] = rec.version, rec.position
    return _evolve(state, **changes)


def fold(records: "list[RecordedEvent] | tuple[RecordedEvent, ...]", state: DomainState | None = None) -> DomainState | None:
    """Return the state after applying `records` in order to `state`."""
    for rec in records:
        state = apply(state, rec)
    return state
