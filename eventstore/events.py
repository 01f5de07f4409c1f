"""The event classes: frozen attrs values with a stable stored name and schema version.

Lifecycle and observation events are written out one by one.  Change events
follow `<Property>Change<Outcome>` for every catalogue property and are made
by `_change_events` so that the table of names can never drift from the
catalogue; `change_event(property, outcome)` finds one.
"""

from __future__ import annotations

from typing import ClassVar, Union

import attrs
from attrs import validators as v

from vmledger.eventstore.catalogue import CATALOGUE, Capability, GuestType, Outcome, Reason, Scope, nearest, shown
from vmledger.eventstore.errors import InvalidRequestError

__all__ = [
    "Event",
    "DomainDefined",
    "DomainStarted",
    "DomainStopped",
    "DomainUndefined",
    "GuestCapabilitiesObserved",
    "MediaTrayLocked",
    "MediaTrayUnlocked",
    "LiveValueObserved",
    "PersistentValueObserved",
    "DeviceAttached",
    "DeviceDetached",
    "ChangeRequested",
    "ChangeOutcome",
    "EVENT_TYPES",
    "change_event",
    "event_type",
    "config_dict",
]

Value = Union[int, str]
Pairs = tuple  # tuple[tuple[str, Value], ...], sorted by key

_SCOPES = {s.value for s in Scope}
_OUTCOME_SCOPES = {Scope.LIVE.value, Scope.PERSISTENT.value}
_REASONS = {r.value for r in Reason}
_CAPS = {c.value for c in Capability}
_opt_str = v.optional(v.instance_of(str))
_value = v.instance_of((int, str))


def _pairs(value: object) -> tuple:
    """Convert a mapping or iterable of pairs to a sorted tuple of pairs."""
    items = value.items() if isinstance(value, dict) else value
    return tuple(sorted((str(k), x) for k, x in items))  # type: ignore[union-attr]


def config_dict(pairs: tuple) -> dict:
    """Return the pairs of a config or capability field as a dict."""
    return dict(pairs)


class Event:
    """Base of every event; subclasses set `name` and `schema_version`."""

    __slots__ = ()
    name: ClassVar[str]
    schema_version: ClassVar[int] = 1


@attrs.frozen(kw_only=True)
class DomainDefined(Event):
    """A domain was defined with its initial persistent config and guest type."""

    name: ClassVar[str] = "DomainDefined"
    domain: str = attrs.field(validator=v.instance_of(str))
    uuid: str = attrs.field(validator=v.instance_of(str))
    guest_type: str = attrs.field(validator=v.in_({g.value for g in GuestType}))
    config: Pairs = attrs.field(converter=_pairs)
    capabilities: Pairs = attrs.field(converter=_pairs)


@attrs.frozen(kw_only=True)
class DomainStarted(Event):
    """The domain booted; `config` is its live config as the hypervisor reports it."""

    name: ClassVar[str] = "DomainStarted"
    config: Pairs = attrs.field(converter=_pairs)


@attrs.frozen(kw_only=True)
class DomainStopped(Event):
    """The domain shut off; it has no live config until it starts again."""

    name: ClassVar[str] = "DomainStopped"


@attrs.frozen(kw_only=True)
class DomainUndefined(Event):
    """The domain was undefined; its stream stays for audit."""

    name: ClassVar[str] = "DomainUndefined"


@attrs.frozen(kw_only=True)
class GuestCapabilitiesObserved(Event):
    """The guest's capabilities were learnt (true, false or unknown as None)."""

    name: ClassVar[str] = "GuestCapabilitiesObserved"
    capabilities: Pairs = attrs.field(converter=_pairs)

    def __attrs_post_init__(self) -> None:
        for cap, _ in self.capabilities:
            if cap not in _CAPS:
                raise ValueError(f"unknown capability {cap!r}")


@attrs.frozen(kw_only=True)
class MediaTrayLocked(Event):
    """The guest locked the tray of a CD-ROM device."""

    name: ClassVar[str] = "MediaTrayLocked"
    device: str = attrs.field(validator=v.instance_of(str))


@attrs.frozen(kw_only=True)
class MediaTrayUnlocked(Event):
    """The guest unlocked the tray of a CD-ROM device."""

    name: ClassVar[str] = "MediaTrayUnlocked"
    device: str = attrs.field(validator=v.instance_of(str))


@attrs.frozen(kw_only=True)
class LiveValueObserved(Event):
    """The hypervisor reported a live value the log did not explain; `previous` is the one the log held, or None.

    An observation records an out-of-band change.  `previous` is the live
    value the log held for the property just before (None when it held
    none); version 2 added it, and a version-1 row, which did not record it,
    is read with `previous` None.
    """

    name: ClassVar[str] = "LiveValueObserved"
    schema_version: ClassVar[int] = 2
    property: str = attrs.field(validator=v.instance_of(str))
    value: Value = attrs.field(validator=_value)
    previous: Value | None = attrs.field(validator=v.optional(_value))


@attrs.frozen(kw_only=True)
class PersistentValueObserved(Event):
    """The hypervisor reported a persistent value the log did not explain; `previous` is the one the log held.

    An observation records a change to the config made out of band.
    """

    name: ClassVar[str] = "PersistentValueObserved"
    property: str = attrs.field(validator=v.instance_of(str))
    value: Value = attrs.field(validator=_value)
    previous: Value | None = attrs.field(validator=v.optional(_value))


@attrs.frozen(kw_only=True)
class DeviceAttached(Event):
    """A CD-ROM device appeared in one scope behind the ledger's back, holding `media` (empty: no media).

    Its `media:<device>` property starts with `media` in that scope.
    """

    name: ClassVar[str] = "DeviceAttached"
    device: str = attrs.field(validator=v.instance_of(str))
    scope: str = attrs.field(validator=v.in_(_OUTCOME_SCOPES))
    media: str = attrs.field(validator=v.instance_of(str))


@attrs.frozen(kw_only=True)
class DeviceDetached(Event):
    """A CD-ROM device went away in one scope behind the ledger's back; its `media:<device>` property goes with it."""

    name: ClassVar[str] = "DeviceDetached"
    device: str = attrs.field(validator=v.instance_of(str))
    scope: str = attrs.field(validator=v.in_(_OUTCOME_SCOPES))


@attrs.frozen(kw_only=True)
class ChangeRequested(Event):
    """Base of `<Property>ChangeRequested`: somebody asked for a change."""

    outcome: ClassVar[Outcome] = Outcome.REQUESTED
    request_id: str = attrs.field(validator=v.instance_of(str))
    property: str = attrs.field(validator=v.instance_of(str))
    value: Value = attrs.field(validator=_value)
    scope: str = attrs.field(validator=v.in_(_SCOPES))
    principal: str = attrs.field(validator=v.instance_of(str))
    reason: str | None = attrs.field(default=None, validator=_opt_str)


@attrs.frozen(kw_only=True)
class ChangeOutcome(Event):
    """Base of the outcome events: what happened to a request in one scope.

    `value` is the value in force in that scope afterwards; `reason` and
    `message` say why when the change was refused or failed.
    """

    outcome: ClassVar[Outcome]
    request_id: str = attrs.field(validator=v.instance_of(str))
    property: str = attrs.field(validator=v.instance_of(str))
    scope: str = attrs.field(validator=v.in_(_OUTCOME_SCOPES))
    requested: Value = attrs.field(validator=_value)
    value: Value | None = attrs.field(validator=v.optional(_value))
    reason: str | None = attrs.field(default=None, validator=v.optional(v.in_(_REASONS)))
    message: str | None = attrs.field(default=None, validator=_opt_str)


_DOC_WORDS = {
    Outcome.REQUESTED: "was requested",
    Outcome.APPLIED: "was applied in one scope",
    Outcome.PARTIALLY_APPLIED: "was applied only in part in one scope",
    Outcome.REFUSED: "was refused in one scope",
    Outcome.FAILED: "failed in one scope",
}
_CHANGE_EVENTS: dict[tuple[str, Outcome], type[Event]] = {}


def _change_events() -> dict[str, type[Event]]:
    made: dict[str, type[Event]] = {}
    for prop in CATALOGUE.values():
        for outcome in Outcome:
            base = ChangeRequested if outcome is Outcome.REQUESTED else ChangeOutcome
            name = f"{prop.event_prefix}Change{outcome.value}"
            doc = f"A change of `{prop.name}` {_DOC_WORDS[outcome]} (fields: see `{base.__name__}`)."
            # A plain slotted subclass: it adds no field, so the base's generated methods serve it as they are
            # (they name and compare by `self.__class__`), and importing the module builds no code per class.
            cls = type(name, (base,), {"__slots__": (), "name": name, "outcome": outcome, "__doc__": doc})
            made[name] = cls
            _CHANGE_EVENTS[(prop.name, outcome)] = cls
    return made


EVENT_TYPES: dict[str, type[Event]] = {
    cls.name: cls
    for cls in (
        DomainDefined,
        DomainStarted,
        DomainStopped,
        DomainUndefined,
        GuestCapabilitiesObserved,
        MediaTrayLocked,
        MediaTrayUnlocked,
        LiveValueObserved,
        PersistentValueObserved,
        DeviceAttached,
        DeviceDetached,
    )
}
EVENT_TYPES.update(_change_events())
globals().update({k: c for k, c in EVENT_TYPES.items() if "Change" in k})


def change_event(prop: str, outcome: Outcome) -> type[Event]:
    """Return the event class for a change of `prop` (e.g. `media:hdc`) with `outcome`."""
    base = prop.split(":", 1)[0]
    return _CHANGE_EVENTS[(base, outcome)]


def event_type(name: object) -> type[Event]:
    """Return the event class of the type name a caller gives, such as `MemoryChangeApplied`.

    Raises:
        InvalidRequestError: no event type has that name (naming the nearest one).
    """
    cls = EVENT_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        near = nearest(str(name), EVENT_TYPES)
        raise InvalidRequestError(f"unknown event type {shown(name)}" + (f": did you mean {near!r}?" if near else ""))
    return cls
