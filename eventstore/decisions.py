"""Decisions: `request + domain state -> events`, pure functions with no I/O.

A set request is decided in two steps.  `decide_set` validates the request
(a caller error raises and writes nothing), records `…Requested`, decides
every scope the rules settle on their own, and says which live change is
left for the hypervisor.  `decide_live` turns the hypervisor's answer into
the live outcome event.
"""

from __future__ import annotations

from typing import Mapping, cast

import attrs

from eventstore.catalogue import (
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
)
from eventstore.errors import InvalidRequestError, UnknownDomainError, UnknownPropertyError
from eventstore.events import Event, change_event
from eventstore.hypervisor import LiveResult, Value
from eventstore.state import DomainState, Slot, concerns_live, concerns_persistent

__all__ = ["SetRequest", "Decision", "decide_set", "decide_persistent", "decide_live", "validate", "out_of_range"]


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
    if value < prop.minimum:
        return f"{prop.name} must be at least {prop.minimum}"
    if prop.upper and prop.upper in config and value > config[prop.upper]:
        return f"{prop.name} {value} exceeds {prop.upper} {config[prop.upper]}"
    if prop.lower and prop.lower in config and value < config[prop.lower]:
        return f"{prop.name} {value} is below {prop.lower} {config[prop.lower]}"
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


def decide_persistent(request: SetRequest, state: DomainState, error: str | None) -> tuple[Event, ...]:
    """Return the persistent outcome once the hypervisor wrote the config (or `error` said why not)."""
    if error is None:
        return (_outcome(request, Scope.PERSISTENT.value, Outcome.APPLIED, request.value),)
    slot = state.persistent.get(request.property)
    return (_outcome(request, Scope.PERSISTENT.value, Outcome.FAILED, slot.value if slot else None,
                     Reason.HYPERVISOR_ERROR, error),)


def decide_live(request: SetRequest, state: DomainState, result: LiveResult) -> tuple[Event, ...]:
    """Turn the hypervisor's answer to a live change into the live outcome event."""
    live = state.live.get(request.property)
    in_force = result.value if result.value is not None else (live.value if live else None)
    outcome = result.outcome
    if outcome is Outcome.APPLIED and in_force != request.value:
        outcome = Outcome.PARTIALLY_APPLIED  # the hypervisor said yes but delivered less
    if outcome is Outcome.REQUESTED:
        raise ValueError("a live result cannot be Requested")
    return (_outcome(request, Scope.LIVE.value, outcome, in_force, result.reason, result.message),)

