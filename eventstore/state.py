"""The domain state fold: the one set of rules every projection is made by.

`DomainFold` holds one domain's state, mutable, and applies each event to it
with the rules: what a request awaits, how each outcome moves the persistent
and the live value, and why the two differ (the drift rule).  Everything
that folds events calls it: `apply` (the frozen `DomainState` that decisions
read and appends project), and the rebuild and `verify` (which keep one
`DomainFold` per domain and feed it the change events' fields unboxed).
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Iterable, Mapping, NamedTuple

import attrs

from vmledger.eventstore.catalogue import MEDIA_PREFIX, Cause, Kind, Outcome, Reason, Scope, lookup
from vmledger.eventstore.errors import VmledgerError
from vmledger.eventstore.events import (
    ChangeOutcome,
    ChangeRequested,
    DeviceAttached,
    DeviceDetached,
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
from vmledger.eventstore.hypervisor import Value
from vmledger.eventstore.log import RecordedEvent

__all__ = ["Slot", "Mark", "Pending", "DomainState", "DomainFold", "apply", "fold", "drifting", "drift_marks",
           "concerns_live", "concerns_persistent", "awaiting", "live_cause"]


# Slots, marks and pending requests are named tuples, not attrs classes: the rebuild makes one or
# more per event of the log, and a tuple costs a third of a frozen attrs instance to make.


class Slot(NamedTuple):
    """A value in force, and the position and request that put it there."""

    value: Value
    position: int
    request_id: str | None = None


class Mark(NamedTuple):
    """Why a property's live value differs from its persistent one: the event that made the difference.

    `position` and `at` are that event's; `request_id` is the request it
    belongs to (None for an observed change).
    """

    cause: str
    request_id: str | None
    position: int
    at: datetime


class Pending(NamedTuple):
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
    #: The status of the persistent outcome, once recorded while the live one is awaited.
    persistent_status: str | None = None
    #: The drift cause the live outcome gives (`live_cause`), once recorded while the persistent one is awaited.
    live_cause: str | None = None

    def awaits(self, scope: str) -> bool:
        """Tell whether the outcome of `scope` is still to be recorded."""
        return scope in self.awaiting


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
        return drifting(self)


# `tuple.__new__` makes a named tuple from a tuple of all its fields in C, without the Python-level
# `__new__` that checks arguments: the fold's hot path, with every field given.
_new = tuple.__new__


def drifting(state: "DomainState | DomainFold") -> list[tuple[str, Slot, Slot, Mark]]:
    """Return `(property, persistent, live, mark)` wherever a running domain's live value differs, sorted."""
    if not state.running:
        return []
    rows = []
    for prop, mark in sorted(state.marks.items()):
        p, l = state.persistent.get(prop), state.live.get(prop)
        # The fold keeps a mark exactly where both values differ; a snapshot written by an older fold may not.
        if p is not None and l is not None and p.value != l.value:
            rows.append((prop, p, l, mark))
    return rows


def drift_marks(state: "DomainState | DomainFold") -> dict[str, Mark]:
    """Return the mark of every property of a running domain whose live value differs, by property."""
    return {prop: mark for prop, _, _, mark in drifting(state)}


# Enum values read once: a member's `.value` costs a descriptor call, and the fold reads them per event.
_PERSISTENT, _LIVE, _BOTH, _CURRENT = (s.value for s in (Scope.PERSISTENT, Scope.LIVE, Scope.BOTH, Scope.CURRENT))
_APPLIED, _PARTIAL, _REFUSED, _FAILED = (o.status for o in (
    Outcome.APPLIED, Outcome.PARTIALLY_APPLIED, Outcome.REFUSED, Outcome.FAILED))
_C_EXTERNAL, _C_LIVE_ONLY, _C_PERSISTENT_ONLY, _C_PARTIAL, _C_REQUIRES_RESTART, _C_REFUSED, _C_FAILED, _C_IN_FLIGHT = (
    c.value for c in (Cause.EXTERNAL, Cause.LIVE_ONLY, Cause.PERSISTENT_ONLY, Cause.PARTIAL, Cause.REQUIRES_RESTART,
                      Cause.REFUSED, Cause.FAILED, Cause.IN_FLIGHT))
_R_REQUIRES_RESTART = Reason.REQUIRES_RESTART.value
_AW_BOTH, _AW_PERSISTENT, _AW_LIVE = frozenset((_PERSISTENT, _LIVE)), frozenset((_PERSISTENT,)), frozenset((_LIVE,))


def concerns_live(scope: str, running: bool) -> bool:
    """Tell whether a request with `scope` concerns the live config."""
    return scope == _LIVE or (running and scope in (_BOTH, _CURRENT))


def concerns_persistent(scope: str, running: bool) -> bool:
    """Tell whether a request with `scope` concerns the persistent config."""
    return scope in (_PERSISTENT, _BOTH) or (scope == _CURRENT and not running)


def awaiting(scope: str, running: bool) -> frozenset[str]:
    """Return the scopes a request with `scope` awaits an outcome in (one of three shared sets)."""
    if scope == _BOTH:
        return _AW_BOTH if running else _AW_PERSISTENT
    if scope == _CURRENT:
        return _AW_LIVE if running else _AW_PERSISTENT
    return _AW_LIVE if scope == _LIVE else _AW_PERSISTENT


def live_cause(status: str, reason: str | None) -> str:
    """Return the drift cause a live outcome gives when the live value ends up differing from the persistent one."""
    if status == _PARTIAL:
        return _C_PARTIAL
    if status == _APPLIED:
        return _C_LIVE_ONLY
    if reason == _R_REQUIRES_RESTART:
        return _C_REQUIRES_RESTART
    return _C_REFUSED if status == _REFUSED else _C_FAILED


@functools.lru_cache(maxsize=256)
def _fixed_while_running(prop: str) -> bool:
    """Tell whether `prop` is RO(ins): settable in the persistent config only (False for a name not in the catalogue)."""
    try:
        return lookup(prop).kind is Kind.RO_INS
    except VmledgerError:
        return False


class DomainFold:
    """One domain's state, mutable, and the rules that fold each event into it.

    Maps are this fold's own (a `DomainState`'s are copied in), holding
    frozen `Slot`, `Mark` and `Pending` values that are replaced, never changed.

    The drift rule: a mark exists exactly where the running domain has both
    values and they differ, and names the event that made the current
    difference, the latest that changed either value while they differ.  An
    event that changes neither value leaves the mark alone, but for one
    thing: the outcome that settles the other scope of a request whose mark
    says `in_flight` gives the mark its cause (its event and time stay).
    """

    __slots__ = ("uuid", "name", "guest_type", "defined", "running", "version", "position",
                 "persistent", "live", "marks", "capabilities", "locked_trays", "pending")

    def __init__(self, state: DomainState) -> None:
        self.uuid, self.name, self.guest_type = state.uuid, state.name, state.guest_type
        self.defined, self.running, self.version, self.position = (
            state.defined, state.running, state.version, state.position)
        self.persistent: dict[str, Slot] = dict(state.persistent)
        self.live: dict[str, Slot] = dict(state.live)
        self.marks: dict[str, Mark] = dict(state.marks)
        self.capabilities: dict[str, bool | None] = dict(state.capabilities)
        self.locked_trays: frozenset[str] = state.locked_trays
        self.pending: dict[str, Pending] = dict(state.pending)

    @classmethod
    def defined_by(cls, rec: RecordedEvent) -> "DomainFold":
        """Return the fold of a domain its `DomainDefined` record starts."""
        e = rec.event
        return cls(DomainState(
            uuid=rec.stream, name=e.domain, guest_type=e.guest_type,
            persistent={k: Slot(value=v, position=rec.position) for k, v in e.config},
            capabilities=dict(e.capabilities), version=rec.version, position=rec.position,
        ))

    def state(self, *, share: bool = False) -> DomainState:
        """Return the frozen state this fold stands for, with maps of its own unless `share` (the fold is done)."""
        own = (lambda m: m) if share else dict
        return DomainState(
            uuid=self.uuid, name=self.name, guest_type=self.guest_type, defined=self.defined,
            running=self.running, version=self.version, position=self.position,
            persistent=own(self.persistent), live=own(self.live), marks=own(self.marks),
            capabilities=own(self.capabilities), locked_trays=self.locked_trays, pending=own(self.pending),
        )

    # The drift rule.

    def _remark(self, prop: str, value: Value, other: Slot | None, cause: str, request_id: str | None,
                position: int, at: datetime) -> None:
        """Mark `prop` after an event that changed one of its values to `value`, the other being `other`.

        The event's mark if they differ now, none if they agree (or one is missing).
        """
        if other is None or other[0] == value:
            self.marks.pop(prop, None)
        else:
            self.marks[prop] = _new(Mark, (cause, request_id, position, at))

    def _settle(self, prop: str, request_id: str, cause: str) -> None:
        """Give an `in_flight` mark of `request_id` its cause, now that the request's other scope is settled."""
        mark = self.marks.get(prop)
        if mark is not None and mark.cause == _C_IN_FLIGHT and mark.request_id == request_id:
            self.marks[prop] = _new(Mark, (cause, request_id, mark.position, mark.at))

    # Change events, with their fields unboxed (the rebuild calls these directly).

    def requested(self, position: int, version: int, at: datetime, request_id: str, prop: str, scope: str,
                  value: Value) -> frozenset[str]:
        """Fold a `…Requested`: the request now awaits an outcome in each scope it concerns; return those scopes."""
        scopes = awaiting(scope, self.running)
        self.pending[request_id] = _new(Pending, (request_id, prop, value, position, at, scopes, None, None))
        self.version, self.position = version, position
        return scopes

    def outcome(self, position: int, version: int, at: datetime, request_id: str, prop: str, scope: str,
                status: str, value: Value | None, reason: str | None) -> None:
        """Fold an outcome of `scope`: settle what the request awaits, move the value, apply the drift rule."""
        self.version, self.position = version, position
        persistent = scope == _PERSISTENT
        pending = self.pending.get(request_id)
        if pending is not None:
            scopes = pending[5]  # awaiting
            if scope not in scopes:
                pending = None  # an outcome the request did not await (no decision writes one) settles nothing
            elif len(scopes) == 2:  # both: the other one remains
                self.pending[request_id] = _new(Pending, (
                    request_id, pending[1], pending[2], pending[3], pending[4],
                    _AW_LIVE if persistent else _AW_PERSISTENT,
                    status if persistent else pending[6], pending[7] if persistent else live_cause(status, reason)))
            else:
                del self.pending[request_id]  # it awaited `scope` alone
        moves = value is not None and (status == _APPLIED or status == _PARTIAL)
        running = self.running
        if persistent:
            if moves:
                old = self.persistent.get(prop)
                self.persistent[prop] = _new(Slot, (value, position, request_id))
                if running and (old is None or old[0] != value):
                    self._remark(prop, value, self.live.get(prop), self._persistent_cause(prop, pending),
                                 request_id, position, at)
                    return
            if running:
                self._settle(prop, request_id, status if status in (_REFUSED, _FAILED) else _C_LIVE_ONLY)
            return
        if not running:
            return
        if moves:
            old = self.live.get(prop)
            self.live[prop] = _new(Slot, (value, position, request_id))
            if old is None or old[0] != value:
                cause = _C_PARTIAL if status == _PARTIAL else self._live_applied_cause(pending)
                self._remark(prop, value, self.persistent.get(prop), cause, request_id, position, at)
                return
        self._settle(prop, request_id, live_cause(status, reason))

    def _persistent_cause(self, prop: str, pending: Pending | None) -> str:
        """Return why a persistent change by the request `pending` (before this outcome) leaves live different."""
        if pending is not None and _LIVE in pending.awaiting:
            return _C_IN_FLIGHT
        if pending is not None and pending.live_cause is not None:
            return pending.live_cause
        return _C_REQUIRES_RESTART if _fixed_while_running(prop) else _C_PERSISTENT_ONLY

    @staticmethod
    def _live_applied_cause(pending: Pending | None) -> str:
        """Return why a live value applied by the request `pending` (before this outcome) differs from persistent."""
        if pending is not None and _PERSISTENT in pending.awaiting:
            return _C_IN_FLIGHT
        if pending is not None and pending.persistent_status in (_REFUSED, _FAILED):
            return pending.persistent_status
        return _C_LIVE_ONLY

    # Every event.

    @staticmethod
    def folded(working: "DomainFold | None", rec: RecordedEvent) -> "DomainFold":
        """Return the fold of `rec`'s domain after `rec`: `working` stepped, or a new one for `DomainDefined`.

        A `DomainDefined` on a stream already defined starts it afresh, as
        the log's first one does (no decision writes one).

        Raises:
            ValueError: an event precedes its domain's `DomainDefined`, or has no fold.
        """
        if isinstance(rec.event, DomainDefined):
            return DomainFold.defined_by(rec)
        if working is None:
            raise ValueError(f"{rec.event.name} at position {rec.position} precedes DomainDefined")
        working.step(rec)
        return working

    def step(self, rec: RecordedEvent) -> None:
        """Fold one event of this domain's stream (any but `DomainDefined`: see `folded`).

        Raises:
            ValueError: an event with no fold.
        """
        e, position, at = rec.event, rec.position, rec.recorded_at
        if isinstance(e, ChangeOutcome):
            self.outcome(position, rec.version, at, e.request_id, e.property, e.scope, e.outcome.status,
                         e.value, e.reason)
            return
        if isinstance(e, ChangeRequested):
            self.requested(position, rec.version, at, e.request_id, e.property, e.scope, e.value)
            return
        if isinstance(e, DomainStarted):
            self.running, self.locked_trays = True, frozenset()
            self.live = {k: Slot(value=v, position=position) for k, v in e.config}
            # A domain that boots with values other than its persistent config was changed outside.
            self.marks = {}
            for prop, slot in self.live.items():
                self._remark(prop, slot[0], self.persistent.get(prop), _C_EXTERNAL, None, position, at)
        elif isinstance(e, (DomainStopped, DomainUndefined)):
            self.running, self.live, self.marks, self.locked_trays = False, {}, {}, frozenset()
            self.defined = not isinstance(e, DomainUndefined)
        elif isinstance(e, GuestCapabilitiesObserved):
            self.capabilities.update(e.capabilities)
        elif isinstance(e, MediaTrayLocked):
            self.locked_trays = self.locked_trays | {e.device}
        elif isinstance(e, MediaTrayUnlocked):
            self.locked_trays = self.locked_trays - {e.device}
        elif isinstance(e, (LiveValueObserved, PersistentValueObserved)):
            values, other = (self.live, self.persistent) if isinstance(e, LiveValueObserved) else (
                self.persistent, self.live)
            old = values.get(e.property)
            values[e.property] = Slot(value=e.value, position=position)
            if self.running and (old is None or old.value != e.value):
                self._remark(e.property, e.value, other.get(e.property), _C_EXTERNAL, None, position, at)
        elif isinstance(e, DeviceAttached):
            prop, live = MEDIA_PREFIX + e.device, e.scope == _LIVE
            if not live or self.running:
                values, other = (self.live, self.persistent) if live else (self.persistent, self.live)
                values[prop] = Slot(value=e.media, position=position)
                if self.running:
                    self._remark(prop, e.media, other.get(prop), _C_EXTERNAL, None, position, at)
        elif isinstance(e, DeviceDetached):
            prop = MEDIA_PREFIX + e.device
            (self.live if e.scope == _LIVE else self.persistent).pop(prop, None)
            self.marks.pop(prop, None)
            if e.scope == _LIVE:
                self.locked_trays = self.locked_trays - {e.device}
        else:
            raise ValueError(f"no fold for {e.name}")
        self.version, self.position = rec.version, position


def apply(state: DomainState | None, rec: RecordedEvent) -> DomainState:
    """Return the domain state after `rec`; `state` is None before `DomainDefined`.

    Raises:
        ValueError: an event precedes its domain's `DomainDefined`, or the fold refuses it.
    """
    return fold((rec,), state)  # type: ignore[return-value]


def fold(records: Iterable[RecordedEvent], state: DomainState | None = None) -> DomainState | None:
    """Return the state after applying `records` in order to `state`.

    Raises:
        ValueError: as `apply`.
    """
    working = None if state is None else DomainFold(state)
    for rec in records:
        working = DomainFold.folded(working, rec)
    return state if working is None else working.state(share=True)
