"""Decisions: `request + domain state -> events`, pure functions with no I/O.

A set request is decided in two steps.  `decide_set` validates the request
(a caller error raises and writes nothing), records `…Requested`, decides
every scope the rules settle on their own, and says which live change is
left for the hypervisor.  `decide_live` turns the hypervisor's answer into
the live outcome event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable, Mapping, cast

import attrs

from vmledger.eventstore.catalogue import (
    MEDIA_PREFIX,
    Kind,
    Outcome,
    Property,
    Reason,
    Scope,
    check_name,
    check_principal,
    check_reason,
    check_request_id,
    check_value,
    lookup,
    shown,
    size_text,
)
from vmledger.eventstore.errors import InvalidRequestError, UnknownDomainError, UnknownPropertyError
from vmledger.eventstore.events import (
    DeviceAttached,
    DeviceDetached,
    DomainStarted,
    DomainStopped,
    DomainUndefined,
    Event,
    GuestCapabilitiesObserved,
    LiveValueObserved,
    MediaTrayLocked,
    MediaTrayUnlocked,
    PersistentValueObserved,
    change_event,
)
from vmledger.eventstore.hypervisor import LiveResult, Observation, Value
from vmledger.eventstore.state import DomainState, Pending, Slot, concerns_live, concerns_persistent

__all__ = [
    "SetRequest", "Decision", "decide_set", "decide_persistent", "decide_live", "decide_stop",
    "decide_undefine", "decide_observed", "validate", "out_of_range",
]

#: Who resolves a request its caller left unfinished.
RESOLVER = "vmledger"


@attrs.frozen(kw_only=True)
class SetRequest:
    """One `set` call: who asks for which value of which property, in which scope."""

    request_id: str
    domain: str
    property: str
    value: Value
    scope: str = Scope.BOTH.value
    principal: str
    reason: str | None = None


@attrs.frozen(kw_only=True)
class Decision:
    """The events to record now, and the live change still to ask the hypervisor for."""

    events: tuple[Event, ...]
    #: The value still to write into the persistent config (None: nothing to write).
    persistent_value: Value | None = None
    #: The value still to ask of the running domain (None: nothing to ask).
    live_value: Value | None = None


def validate(request: SetRequest, state: DomainState | None) -> Property:
    """Check a request's shape against the catalogue and the domain; return its property.

    Raises:
        InvalidRequestError: a malformed field or value.
        UnknownDomainError: the domain is not defined.
        UnknownPropertyError: no such property, or no such device on this domain.
    """
    check_name(request.domain)
    check_request_id(request.request_id)
    check_principal(request.principal)
    if request.reason is not None:
        check_reason(request.reason)
    if not isinstance(request.scope, str) or request.scope not in {s.value for s in Scope}:
        raise InvalidRequestError(
            f"invalid scope {shown(request.scope)} (use live, persistent, both or current)"
        )
    prop = lookup(request.property)
    check_value(prop, request.value)
    if state is None or not state.defined:
        raise UnknownDomainError(f"unknown domain {request.domain!r}")
    if not state.has_property(request.property):
        devices = ", ".join(state.devices) or "none"
        raise UnknownPropertyError(
            f"domain {request.domain!r} has no CD-ROM {request.property[6:]!r} (devices: {devices})"
        )
    return prop


def _config(slots: Mapping[str, Slot]) -> dict[str, Value]:
    return {k: s.value for k, s in slots.items()}


def out_of_range(prop: Property, value: Value, config: Mapping[str, Value]) -> str | None:
    """Return why `value` breaks `prop`'s bounds in `config`, or None if it fits."""
    if not isinstance(value, int):
        return None

    def text(n: Value) -> str:
        # Messages are read by people: sizes in binary units, exactly (the values stay bytes).
        return size_text(n) if prop.type == "bytes" and isinstance(n, int) else str(n)

    if value < prop.minimum:
        return f"{prop.name} must be at least {text(prop.minimum)}"
    if prop.upper and prop.upper in config and value > config[prop.upper]:
        return f"{prop.name} {text(value)} exceeds {prop.upper} {text(config[prop.upper])}"
    if prop.lower and prop.lower in config and value < config[prop.lower]:
        return f"{prop.name} {text(value)} is below {prop.lower} {text(config[prop.lower])}"
    return None


def _outcome(request: SetRequest, scope: str, outcome: Outcome, value: Value | None,
             reason: Reason | None = None, message: str | None = None) -> Event:
    cls = change_event(request.property, outcome)
    return cls(
        request_id=request.request_id, property=request.property, scope=scope,
        requested=request.value, value=value,
        reason=reason.value if reason else None, message=message,
    )


def decide_set(request: SetRequest, state: DomainState | None) -> Decision:
    """Decide a set request on the domain's current state.

    Raises:
        InvalidRequestError: the request is malformed or names an unknown domain,
            property or device (nothing is to be written).
    """
    prop = validate(request, state)
    state = cast(DomainState, state)  # validate raised for a missing domain
    requested = change_event(request.property, Outcome.REQUESTED)(
        request_id=request.request_id, property=request.property, value=request.value,
        scope=request.scope, principal=request.principal, reason=request.reason,
    )
    events: list[Event] = [requested]
    persistent_value: Value | None = None
    live_value: Value | None = None
    persistent = state.persistent.get(request.property)
    live = state.live.get(request.property)
    p_now = persistent.value if persistent else None
    l_now = live.value if live else None
    P, L = Scope.PERSISTENT.value, Scope.LIVE.value

    if concerns_persistent(request.scope, state.running):
        if prop.kind is Kind.RO_RUN:
            events.append(_outcome(request, P, Outcome.REFUSED, p_now, Reason.READ_ONLY,
                                   f"{prop.name} is computed at run time and cannot be set"))
        elif why := out_of_range(prop, request.value, _config(state.persistent)):
            events.append(_outcome(request, P, Outcome.REFUSED, p_now, Reason.OUT_OF_RANGE, why))
        else:
            persistent_value = request.value

    if concerns_live(request.scope, state.running):
        if not state.running:
            events.append(_outcome(request, L, Outcome.REFUSED, None, Reason.DOMAIN_NOT_RUNNING,
                                   f"domain {state.name!r} is not running"))
        elif prop.kind is Kind.RO_RUN:
            events.append(_outcome(request, L, Outcome.REFUSED, l_now, Reason.READ_ONLY,
                                   f"{prop.name} is computed at run time and cannot be set"))
        elif prop.kind is Kind.RO_INS:
            # Fixed while running: the hypervisor refuses it, in its own words,
            # which the record keeps (it is never bounds-checked against itself).
            live_value = request.value
        elif why := out_of_range(prop, request.value, _config(state.live)):
            events.append(_outcome(request, L, Outcome.REFUSED, l_now, Reason.OUT_OF_RANGE, why))
        else:
            live_value = request.value
    return Decision(events=tuple(events), persistent_value=persistent_value, live_value=live_value)


def decide_persistent(request: SetRequest, state: DomainState, error: str | None,
                      reason: Reason = Reason.HYPERVISOR_ERROR, *, refused: bool = False) -> tuple[Event, ...]:
    """Return the persistent outcome once the hypervisor wrote the config (or `error` said why not, for `reason`).

    `refused`: the hypervisor refused the value (`HypervisorRefusedError`), rather than failing to write it.
    """
    if error is None:
        return (_outcome(request, Scope.PERSISTENT.value, Outcome.APPLIED, request.value),)
    slot = state.persistent.get(request.property)
    return (_outcome(request, Scope.PERSISTENT.value, Outcome.REFUSED if refused else Outcome.FAILED,
                     slot.value if slot else None, reason, error),)


def decide_live(request: SetRequest, state: DomainState, result: LiveResult) -> tuple[Event, ...]:
    """Turn the hypervisor's answer to a live change into the live outcome event.

    What the answer shows the log lacks comes first, as `observe` would
    record it: a value changed behind the ledger's back, a tray the guest
    locked (the change was refused for it) or unlocked (its tray opened for the change).
    """
    live = state.live.get(request.property)
    in_force = result.value if result.value is not None else (live.value if live else None)
    outcome = result.outcome
    if outcome is Outcome.APPLIED and in_force != request.value:
        outcome = Outcome.PARTIALLY_APPLIED  # the hypervisor said yes but delivered less
    if outcome is Outcome.REQUESTED:
        raise ValueError("a live result cannot be Requested")
    made = _outcome(request, Scope.LIVE.value, outcome, in_force, result.reason, result.message)
    seen: list[Event] = []
    if outcome in (Outcome.REFUSED, Outcome.FAILED) and live is not None and in_force != live.value:
        # The domain holds a value the log does not explain, which this request did not make: a change
        # made behind the ledger's back, recorded as `observe` would, so that the outcome's value is in force.
        seen.append(LiveValueObserved(property=request.property, value=in_force, previous=live.value))
    if request.property.startswith(MEDIA_PREFIX):
        device = request.property[len(MEDIA_PREFIX):]
        if result.reason == Reason.TRAY_LOCKED and device not in state.locked_trays:
            seen.append(MediaTrayLocked(device=device))  # the guest locked it: what `observe` would record
        elif outcome is Outcome.APPLIED and device in state.locked_trays:
            seen.append(MediaTrayUnlocked(device=device))  # its tray opened for the change: no longer locked
    return (*seen, made)


def _awaiting(state: DomainState, scope: str) -> list[Pending]:
    """Return the pending requests still awaiting an outcome in `scope`, oldest first."""
    return sorted((p for p in state.pending.values() if p.awaits(scope)), key=lambda p: p.position)


def _as_request(state: DomainState, pending: Pending, scope: str) -> SetRequest:
    return SetRequest(request_id=pending.request_id, domain=state.name, property=pending.property,
                      value=pending.requested, scope=scope, principal=RESOLVER)


def _live_gone(state: DomainState) -> list[Event]:
    """Fail the live outcome of every pending request: a stopped domain has no live value left to ask about."""
    return [
        _outcome(_as_request(state, p, Scope.LIVE.value), Scope.LIVE.value, Outcome.FAILED, None,
                 Reason.DOMAIN_NOT_RUNNING,
                 "the domain stopped before this request's live outcome was recorded; its live value is gone")
        for p in _awaiting(state, Scope.LIVE.value)
    ]


def decide_stop(state: DomainState) -> list[Event]:
    """Return the events of a domain that stopped: pending live outcomes failed, then `DomainStopped`."""
    return [*_live_gone(state), DomainStopped()]


def decide_undefine(state: DomainState) -> list[Event]:
    """Return the events of a domain undefined: pending outcomes failed, then `DomainUndefined`."""
    gone = "the domain was undefined before this request's persistent outcome was recorded"
    return [
        *_live_gone(state),
        *(_outcome(_as_request(state, p, Scope.PERSISTENT.value), Scope.PERSISTENT.value, Outcome.FAILED, None,
                   Reason.HYPERVISOR_ERROR, gone)
          for p in _awaiting(state, Scope.PERSISTENT.value)),
        DomainUndefined(),
    ]


def _resolve_persistent(state: DomainState, pending: Pending, actual: Value | None) -> Event:
    """Decide the persistent outcome of an abandoned request from the config the hypervisor really holds."""
    request = _as_request(state, pending, Scope.PERSISTENT.value)
    if actual == pending.requested:
        return _outcome(request, Scope.PERSISTENT.value, Outcome.APPLIED, actual)
    return _outcome(request, Scope.PERSISTENT.value, Outcome.FAILED, actual, Reason.HYPERVISOR_ERROR,
                    "the request's outcome was never recorded; the persistent config kept its value")


def _resolve_live(state: DomainState, pending: Pending, actual: Value | None) -> tuple[Event, ...]:
    """Decide the live outcome of an abandoned request from the value the running domain really has.

    A live value a later request's outcome recorded was asked of the
    hypervisor after this request's call, if it was made: the request led to
    nothing the domain has now.  (A value observed since may be this
    request's doing, and is judged as any other.)
    """
    before = state.live.get(pending.property)
    if before is not None and before.request_id is not None and before.position > pending.position:
        result = LiveResult.failed(actual, Reason.HYPERVISOR_ERROR,
                                   "the request's outcome was never recorded; a later change made the live value")
    elif actual == pending.requested:
        result = LiveResult.applied(actual)
    elif before is not None and _between(before.value, actual, pending.requested):
        result = LiveResult.partial(actual, "resolved by observation")
    else:  # kept its value, or moved where the request did not lead it: an out-of-band change (`decide_live`)
        result = LiveResult.failed(actual, Reason.HYPERVISOR_ERROR,
                                   "the request's outcome was never recorded; the domain kept its value")
    return decide_live(_as_request(state, pending, Scope.LIVE.value), state, result)


def _between(before: Value | None, actual: Value | None, requested: Value) -> bool:
    """Tell whether a number moved from `before` toward `requested` without reaching it: what a partial change does."""
    numbers = [x for x in (before, actual, requested) if isinstance(x, int) and not isinstance(x, bool)]
    return len(numbers) == 3 and (before < actual < requested or requested < actual < before)  # type: ignore[operator]


def _persistent_observed(state: DomainState, persistent: Mapping[str, Value], awaited: set[str]) -> list[Event]:
    """Return a `PersistentValueObserved` for each persistent value the hypervisor holds that the log does not explain.

    Only properties the persistent projection holds are compared (a CD-ROM
    added or removed behind the ledger's back is not a value change), and
    not one a request awaits: its caller, or its resolution, records it.
    """
    return [
        PersistentValueObserved(property=prop, value=value, previous=state.persistent[prop].value)
        for prop, value in sorted(persistent.items())
        if prop not in awaited and prop in state.persistent and state.persistent[prop].value != value
    ]


def _devices_observed(held: Mapping[str, Slot], seen: Mapping[str, Value], scope: str,
                      awaited: set[str]) -> list[Event]:
    """Return a `DeviceAttached` for each CD-ROM the hypervisor has in `scope` that the log lacks, a `DeviceDetached` for each gone.

    A CD-ROM a request awaits is left to that request.
    """
    def media(props: Iterable[str]) -> set[str]:
        return {p for p in props if p.startswith(MEDIA_PREFIX) and p not in awaited}

    start = len(MEDIA_PREFIX)
    return [
        *(DeviceDetached(device=p[start:], scope=scope) for p in sorted(media(held) - media(seen))),
        *(DeviceAttached(device=p[start:], scope=scope, media=str(seen[p])) for p in sorted(media(seen) - media(held))),
    ]


def decide_observed(state: DomainState, observation: Observation, stale_before: datetime) -> list[Event]:
    """Return the events that bring the log in line with what the hypervisor reports.

    A request recorded before `stale_before` whose caller never recorded an
    outcome is abandoned: its outcome is decided from what the hypervisor
    really holds (the persistent config, the running domain's live value),
    never guessed; a younger one may still have its caller waiting on the
    hypervisor, and is left alone.  A stopped domain fails every pending
    live outcome at once: its live value is gone, whatever the caller saw.
    A persistent or live value that differs from the log's and that no
    request awaits was changed behind the ledger's back: it is recorded as
    observed (`PersistentValueObserved`, `LiveValueObserved`), and so is a
    CD-ROM attached or detached (`DeviceAttached`, `DeviceDetached`).  A domain the
    hypervisor no longer has was undefined behind the ledger's back: it is
    recorded undefined, as `decide_undefine` does.
    """
    if not observation.defined:
        return decide_undefine(state)
    events: list[Event] = []
    persistent = dict(observation.persistent)
    awaited_persistent = set()
    for pending in _awaiting(state, Scope.PERSISTENT.value):
        awaited_persistent.add(pending.property)
        if pending.at < stale_before and pending.property in persistent:
            events.append(_resolve_persistent(state, pending, persistent[pending.property]))
    events += _persistent_observed(state, persistent, awaited_persistent)
    if persistent:  # an observation that reports no persistent config tells nothing of its devices
        events += _devices_observed(state.persistent, persistent, Scope.PERSISTENT.value, awaited_persistent)
    if not observation.running:
        return events + (decide_stop(state) if state.running else _live_gone(state))
    if not state.running:
        return events + _live_gone(state) + [DomainStarted(config=observation.live)]
    live = dict(observation.live)
    awaited = set()
    for pending in _awaiting(state, Scope.LIVE.value):
        awaited.add(pending.property)
        if pending.at < stale_before:
            events += _resolve_live(state, pending, live.get(pending.property))
    caps = {k: v for k, v in observation.capabilities if state.capabilities.get(k) != v}
    if caps:
        events.append(GuestCapabilitiesObserved(capabilities=caps))
    if observation.trays_known:  # a hypervisor that cannot tell leaves the locks the log has
        for device in sorted(observation.locked_trays - state.locked_trays):
            events.append(MediaTrayLocked(device=device))
        for device in sorted(state.locked_trays - observation.locked_trays):
            events.append(MediaTrayUnlocked(device=device))
    events += _devices_observed(state.live, live, Scope.LIVE.value, awaited)
    for prop, value in sorted(live.items()):
        slot = state.live.get(prop)
        if slot is None and prop.startswith(MEDIA_PREFIX):
            continue  # a CD-ROM attached live: just recorded
        if prop not in awaited and (slot is None or slot.value != value):
            events.append(LiveValueObserved(property=prop, value=value, previous=slot.value if slot else None))
    return events
