"""The typed results of the `Ledger`'s methods: request records, domain views, drift rows, values.

Each is a frozen attrs class with a `to_dict()` that gives the JSON shape
the CLI prints with `--json` (sizes in bytes, times in ISO 8601 text).
Indexing a result by a key of that shape (`record["outcomes"]`) still
works, for code written when the results were plain dicts; it reads
`to_dict()`, so prefer the attributes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

import attrs

from vmledger.eventstore.hypervisor import Value
from vmledger.eventstore.log import timestamp

__all__ = ["Outcome", "RequestRecord", "PropertyRow", "DomainView", "DriftRow", "PropertyValue", "OutcomeCount",
           "ReasonCount", "DriftEpisode", "DomainDrift", "AuditReport", "ConfigChange", "ConfigDiff", "RevertStep",
           "Unrevertible", "RevertReport"]


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _text(when: datetime | None) -> str | None:
    return None if when is None else timestamp(when)


class _Indexable:
    """Lets a result be read as the dict it used to be: `result[key]` is `result.to_dict()[key]`."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - every result defines it
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]


@attrs.frozen(kw_only=True)
class Outcome(_Indexable):
    """What became of a request in one scope: `applied`, `partial`, `refused`, `failed` (or `requested`)."""

    #: The status word, as `history` prints it.
    status: str
    #: The value in force in that scope after the outcome: obtained, or kept when refused or failed.
    value: Value | None
    #: The reason code when refused or failed (`tray_locked`, `out_of_range`, ...), else None.
    reason: str | None
    #: The hypervisor's or the rules' message, if any.
    message: str | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Outcome":
        """Return the outcome of its JSON shape."""
        return cls(status=d["status"], value=d["value"], reason=d["reason"], message=d["message"])

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape: status, value, reason, message."""
        return {"status": self.status, "value": self.value, "reason": self.reason, "message": self.message}


@attrs.frozen(kw_only=True)
class RequestRecord(_Indexable):
    """A request with its outcome per scope: what `set` returns and `history` lists."""

    request_id: str
    domain: str
    property: str
    #: The value asked for.
    requested: Value
    #: The scope asked for: `live`, `persistent`, `both` or `current`.
    scope: str
    principal: str | None
    reason: str | None
    requested_at: datetime
    #: When the last outcome was recorded; None while a scope awaits its outcome.
    completed_at: datetime | None
    #: The log position of the request's `…Requested` event.
    position: int
    #: The outcome of each scope the request concerns, by scope (`persistent`, `live`).
    outcomes: Mapping[str, Outcome]
    #: True when `set` answered a request id it had recorded before, and appended nothing.
    replayed: bool = attrs.field(default=False, eq=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, replayed: bool = False) -> "RequestRecord":
        """Return the record of its JSON shape."""
        return cls(
            request_id=d["request_id"], domain=d["domain"], property=d["property"], requested=d["requested"],
            scope=d["scope"], principal=d["principal"], reason=d["reason"],
            requested_at=_time(d["requested_at"]), completed_at=_time(d["completed_at"]), position=d["position"],
            # Persistent first, as the CLI prints them.
            outcomes={s: Outcome.from_dict(o)
                      for s, o in sorted(d["outcomes"].items(), key=lambda item: item[0] != "persistent")},
            replayed=replayed,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape `history --json` prints (`replayed` is not part of it)."""
        return {
            "request_id": self.request_id, "domain": self.domain, "property": self.property,
            "requested": self.requested, "scope": self.scope, "principal": self.principal, "reason": self.reason,
            "requested_at": _text(self.requested_at), "completed_at": _text(self.completed_at),
            "position": self.position, "outcomes": {s: o.to_dict() for s, o in self.outcomes.items()},
        }

    @property
    def applied(self) -> bool:
        """Return whether every scope concerned was applied exactly."""
        return all(o.status == "applied" for o in self.outcomes.values())


@attrs.frozen(kw_only=True)
class PropertyRow(_Indexable):
    """One property of a domain view: its persistent and live values, and its drift cause if they differ."""

    property: str
    persistent: Value | None
    live: Value | None
    drift: str | None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape: property, persistent, live, drift."""
        return {"property": self.property, "persistent": self.persistent, "live": self.live, "drift": self.drift}


@attrs.frozen(kw_only=True)
class DomainView(_Indexable):
    """A domain's two configs side by side, with capabilities, locked trays and requests in flight."""

    domain: str
    uuid: str
    guest_type: str
    defined: bool
    #: `running` or `shut off`.
    power_state: str
    #: The log position of the domain's last event.
    position: int
    properties: tuple[PropertyRow, ...]
    #: Each guest capability: True, False, or None when unknown.
    capabilities: Mapping[str, bool | None]
    locked_trays: tuple[str, ...]
    #: The ids of requests still awaiting an outcome.
    pending: tuple[str, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DomainView":
        """Return the view of its JSON shape."""
        return cls(
            domain=d["domain"], uuid=d["uuid"], guest_type=d["guest_type"], defined=d["defined"],
            power_state=d["power_state"], position=d["position"],
            properties=tuple(PropertyRow(**p) for p in d["properties"]),
            capabilities=dict(d["capabilities"]), locked_trays=tuple(d["locked_trays"]), pending=tuple(d["pending"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape `show --json` prints."""
        return {
            "domain": self.domain, "uuid": self.uuid, "guest_type": self.guest_type, "defined": self.defined,
            "power_state": self.power_state, "position": self.position,
            "properties": [p.to_dict() for p in self.properties], "capabilities": dict(self.capabilities),
            "locked_trays": list(self.locked_trays), "pending": list(self.pending),
        }

    def row(self, prop: str) -> PropertyRow:
        """Return the row of one property.

        Raises:
            KeyError: the domain has no such property.
        """
        for p in self.properties:
            if p.property == prop:
                return p
        raise KeyError(prop)


@attrs.frozen(kw_only=True)
class DriftRow(_Indexable):
    """Where a running domain's live value differs from its persistent one: cause, request and since when."""

    domain: str
    property: str
    persistent: Value | None
    live: Value | None
    #: `partial`, `refused`, `failed`, `requires_restart`, `persistent_only`, `live_only`, `external` or `in_flight`.
    cause: str
    request_id: str | None
    #: The position of the event that made the current difference.
    since_position: int
    since: datetime

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DriftRow":
        """Return the row of its JSON shape."""
        return cls(domain=d["domain"], property=d["property"], persistent=d["persistent"], live=d["live"],
                   cause=d["cause"], request_id=d["request_id"], since_position=d["since_position"],
                   since=datetime.fromisoformat(d["since"]))

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape `drift --json` prints."""
        return {"domain": self.domain, "property": self.property, "persistent": self.persistent, "live": self.live,
                "cause": self.cause, "request_id": self.request_id, "since_position": self.since_position,
                "since": _text(self.since)}


@attrs.frozen(kw_only=True)
class PropertyValue(_Indexable):
    """One property's value in one config, as `get` returns it."""

    domain: str
    property: str
    #: The config read: `live` or `persistent` (`current` is resolved).
    scope: str
    value: Value | None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape `get --json` prints."""
        return {"domain": self.domain, "property": self.property, "scope": self.scope, "value": self.value}


@attrs.frozen(kw_only=True)
class OutcomeCount(_Indexable):
    """How many requests of one principal for one property had each outcome in one scope, in an audit's period."""

    principal: str
    property: str
    #: The scope of the outcomes counted: `persistent` or `live`.
    scope: str
    #: The requests with an outcome in that scope: the sum of the five counts.
    requests: int
    applied: int
    partial: int
    refused: int
    failed: int
    in_flight: int

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape: principal, property, scope, requests and a count per outcome."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class ReasonCount(_Indexable):
    """How many outcomes in an audit's period were refused or failed for one reason."""

    #: `refused` or `failed`.
    status: str
    reason: str | None
    count: int

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape: status, reason, count."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class DriftEpisode(_Indexable):
    """One drift row's life: from the event that made the difference to the one that ended it or made another."""

    domain: str
    property: str
    cause: str
    request_id: str | None
    since_position: int
    started: datetime
    #: The position and time of the event that ended the episode; None while it is open.
    ended_position: int | None
    ended: datetime | None
    #: Seconds of the episode within the audit's period (up to its end, or the period's while open).
    duration: float

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DriftEpisode":
        """Return the episode of its JSON shape."""
        return cls(**{**d, "started": _time(d["started"]), "ended": _time(d["ended"])})

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape, times in ISO 8601 text and the duration in seconds."""
        return {"domain": self.domain, "property": self.property, "cause": self.cause,
                "request_id": self.request_id, "since_position": self.since_position,
                "started": _text(self.started), "ended_position": self.ended_position,
                "ended": _text(self.ended), "duration": self.duration}


@attrs.frozen(kw_only=True)
class DomainDrift(_Indexable):
    """How long a domain had any property in drift within an audit's period."""

    domain: str
    #: The episodes of the domain that overlap the period.
    episodes: int
    #: Seconds within the period in which at least one of its properties drifted.
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape: domain, episodes, seconds."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class AuditReport(_Indexable):
    """What `audit` reports for a period: outcomes counted, the top reasons, and drift episodes."""

    #: The period, both ends included; `until` is the time the report was made when none was asked.
    since: datetime | None
    until: datetime
    domain: str | None
    principal: str | None
    requests: tuple[OutcomeCount, ...]
    #: The refusal and failure reasons, most frequent first.
    reasons: tuple[ReasonCount, ...]
    episodes: tuple[DriftEpisode, ...]
    #: The time in drift of each domain with an episode in the period, by name.
    drift: tuple[DomainDrift, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AuditReport":
        """Return the report of its JSON shape."""
        return cls(since=_time(d["since"]), until=_time(d["until"]), domain=d["domain"], principal=d["principal"],
                   requests=tuple(OutcomeCount(**r) for r in d["requests"]),
                   reasons=tuple(ReasonCount(**r) for r in d["reasons"]),
                   episodes=tuple(DriftEpisode.from_dict(e) for e in d["episodes"]),
                   drift=tuple(DomainDrift(**x) for x in d["drift"]))

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape `audit --format json` prints."""
        return {"since": _text(self.since), "until": _text(self.until), "domain": self.domain,
                "principal": self.principal, "requests": [r.to_dict() for r in self.requests],
                "reasons": [r.to_dict() for r in self.reasons], "episodes": [e.to_dict() for e in self.episodes],
                "drift": [d.to_dict() for d in self.drift]}


@attrs.frozen(kw_only=True)
class ConfigChange(_Indexable):
    """One value of a domain's persistent or live config moved by one event."""

    #: `persistent` or `live`.
    scope: str
    property: str
    #: The value before the event (None when the config had none: a live config before a start).
    before: Value | None
    after: Value | None
    position: int
    #: The event's type, e.g. `MemoryChangeApplied`, `LiveValueObserved`, `DomainStarted`.
    event: str
    #: The request the event belongs to, None for lifecycle and observation events.
    request_id: str | None
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape: scope, property, before, after, position, event, request_id, at."""
        return {"scope": self.scope, "property": self.property, "before": self.before, "after": self.after,
                "position": self.position, "event": self.event, "request_id": self.request_id,
                "at": _text(self.at)}


@attrs.frozen(kw_only=True)
class ConfigDiff(_Indexable):
    """How a domain's configs changed between two log positions, change by change."""

    domain: str
    from_position: int
    to_position: int
    changes: tuple[ConfigChange, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ConfigDiff":
        """Return the diff of its JSON shape."""
        return cls(domain=d["domain"], from_position=d["from_position"], to_position=d["to_position"],
                   changes=tuple(ConfigChange(**{**c, "at": _time(c["at"])}) for c in d["changes"]))

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape `diff --json` prints."""
        return {"domain": self.domain, "from_position": self.from_position, "to_position": self.to_position,
                "changes": [c.to_dict() for c in self.changes]}


@attrs.frozen(kw_only=True)
class RevertStep(_Indexable):
    """One request a revert makes (or plans): a property, the scope, the value it had then and has now."""

    property: str
    scope: str
    value: Value
    current: Value | None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape: property, scope, value, current."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class Unrevertible(_Indexable):
    """A value a revert cannot bring back, and why."""

    property: str
    #: `persistent` or `live`.
    scope: str
    #: The value at the revert's position (None: the property did not exist then).
    value: Value | None
    #: The value now (None: the property no longer exists).
    current: Value | None
    why: str

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape: property, scope, value, current, why."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class RevertReport(_Indexable):
    """What `revert` did (or, dry, would do): its requests, their records, and the values it cannot bring back."""

    domain: str
    to_position: int
    #: The correlation id every request of the revert shares.
    correlation_id: str
    dry_run: bool
    steps: tuple[RevertStep, ...]
    #: Each request's record, in the order of `steps`; empty on a dry run.
    records: tuple[RequestRecord, ...]
    unrevertible: tuple[Unrevertible, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RevertReport":
        """Return the report of its JSON shape."""
        return cls(domain=d["domain"], to_position=d["to_position"], correlation_id=d["correlation_id"],
                   dry_run=d["dry_run"], steps=tuple(RevertStep(**s) for s in d["steps"]),
                   records=tuple(RequestRecord.from_dict(r) for r in d["records"]),
                   unrevertible=tuple(Unrevertible(**u) for u in d["unrevertible"]))

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape `revert --json` prints."""
        return {"domain": self.domain, "to_position": self.to_position, "correlation_id": self.correlation_id,
                "dry_run": self.dry_run, "steps": [s.to_dict() for s in self.steps],
                "records": [r.to_dict() for r in self.records],
                "unrevertible": [u.to_dict() for u in self.unrevertible]}

    @property
    def applied(self) -> bool:
        """Return whether every request was applied exactly and nothing was left that could not go back."""
        return all(r.applied for r in self.records) and not self.unrevertible
