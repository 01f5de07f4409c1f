"""The shapes of the HTTP API's bodies: request bodies as attrs classes, answers as typed dicts.

Litestar reads these annotations to validate requests and to write the
OpenAPI document, so the document is the code's.  Answers are the ledger's
results as `vmledger._wire.plain` makes them; the typed dicts name the keys
a client may rely on, and a result may carry more.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, TypedDict, Union

import attrs
from litestar.params import KwargDefinition

from vmledger.eventstore.catalogue import Scope

__all__ = [
    "DefineBody", "SetBody", "AdoptBody", "VerifyBody", "TokenBody", "SimBody",
    "Problem", "DomainView", "DomainProperty", "Outcome", "RequestRecord", "PropertyValue", "DriftRow",
    "EventRecord", "Position", "TokenInfo", "NewToken", "CheckpointBody", "Health",
    "RevertBody", "OutcomeCount", "ReasonCount", "DriftEpisode", "DomainDrift", "AuditReport", "ConfigChange",
    "ConfigDiff", "RevertStep", "Unrevertible", "RevertReport",
]

#: A property value: bytes or a count (int), a media path (str), or nothing known (null).
Value = Optional[Union[int, str]]


def _documented(description: str, **schema: Any) -> KwargDefinition:
    """Return what documents a field as `schema` says without validating it: the ledger checks it, in its words.

    So a field the document types more narrowly than its annotation is
    refused by the ledger, with the message and code `vmledger.open()` and
    the command line give, not with the framework's.
    """
    return KwargDefinition(description=description, schema_extra=schema)


@attrs.frozen(kw_only=True)
class DefineBody:
    """A domain to define: sizes in bytes, counts, and CD-ROM devices mapped to media paths."""

    name: Annotated[Any, _documented("the domain's name", type="string")]
    guest_type: Annotated[Any, _documented("pv or hvm", type="string", enum=["pv", "hvm"])]
    memory: Annotated[Any, _documented("bytes", type="integer")]
    max_memory: Annotated[Any, _documented("bytes", type="integer")]
    vcpus: Annotated[Any, _documented("a count", type="integer")]
    max_vcpus: Annotated[Any, _documented("a count", type="integer")]
    numa_nodes: Annotated[Any, _documented("a count", type="integer")] = 1
    cdroms: Annotated[Any, _documented("CD-ROM devices mapped to media paths (empty: no disc)", type="object",
                                       additionalProperties={"type": "string"})] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class SetBody:
    """A request to change a property: the value, the scope, and why (the principal is the token's name)."""

    property: str
    value: Annotated[Any, _documented("bytes or a count (integer), or a media path (string)",
                                     oneOf=[{"type": "integer"}, {"type": "string"}])]
    scope: Annotated[str, _documented("live, persistent, both or current", enum=[s.value for s in Scope])] = "both"
    reason: Optional[str] = None


@attrs.frozen(kw_only=True)
class RevertBody:
    """A revert: the log position or ISO time to go back to, the scope, and whether only to plan it."""

    to: Union[int, str]
    scope: Annotated[str, _documented("persistent or both", enum=[Scope.PERSISTENT.value, Scope.BOTH.value])] = "both"
    dry_run: bool = False


@attrs.frozen(kw_only=True)
class AdoptBody:
    """The domains to adopt by name, or all the hypervisor lists."""

    names: list[str] = attrs.field(factory=list)
    all: bool = False


@attrs.frozen(kw_only=True)
class CheckpointBody:
    """A checkpoint as `verify --checkpoint` saves it."""

    position: int
    hash: str
    domains: dict[str, str] = attrs.field(factory=dict)
    #: The fold rules its digests were made by; absent from an older vmledger's checkpoint.
    rules: Optional[int] = None


@attrs.frozen(kw_only=True)
class VerifyBody:
    """Where to start verifying: a position to trust the chain up to, or a checkpoint to check since."""

    from_position: int = 0
    since: Optional[CheckpointBody] = None
    checkpoint: bool = False


@attrs.frozen(kw_only=True)
class TokenBody:
    """A token to create: its name (the principal it records) and role."""

    name: str
    role: Literal["reader", "operator", "admin"]


@attrs.frozen(kw_only=True)
class SimBody:
    """A perturbation of the simulated hypervisor; each action reads the fields it needs."""

    domain: Optional[str] = None
    size: Optional[int] = None
    property: Optional[str] = None
    value: Annotated[Any, _documented("the config value (`config`): bytes or a count, or a media path",
                                     oneOf=[{"type": "integer"}, {"type": "string"}, {"type": "null"}])] = None
    device: Optional[str] = None
    capability: Optional[str] = None
    on: Optional[bool] = None
    kind: Optional[str] = None


class Problem(TypedDict):
    """An error, as RFC 9457 problem details with the ledger's reason code."""

    type: str
    title: str
    status: int
    detail: str
    code: str


class DomainProperty(TypedDict):
    """One property of a domain: both configs and why they differ."""

    property: str
    persistent: Value
    live: Value
    drift: Optional[str]


class DomainView(TypedDict):
    """Both configs of a domain side by side, with capabilities, tray locks and requests in flight."""

    domain: str
    uuid: str
    guest_type: str
    power_state: str
    properties: list[DomainProperty]
    capabilities: dict[str, Optional[bool]]
    locked_trays: list[str]
    pending: list[str]


class Outcome(TypedDict):
    """What came of a request in one scope."""

    status: str
    value: Value
    reason: Optional[str]
    message: Optional[str]


class RequestRecord(TypedDict):
    """A request with its outcome per scope."""

    request_id: str
    domain: str
    property: str
    requested: Value
    scope: str
    principal: str
    reason: Optional[str]
    requested_at: str
    outcomes: dict[str, Outcome]


class PropertyValue(TypedDict):
    """One property's value in one config."""

    domain: str
    property: str
    scope: str
    value: Value


class DriftRow(TypedDict):
    """Where a running domain's live value differs from its persistent one, why, and since when."""

    domain: str
    property: str
    persistent: Value
    live: Value
    cause: str
    request_id: Optional[str]
    since_position: int
    since: str


class OutcomeCount(TypedDict):
    """How many requests of one principal for one property had each outcome in one scope."""

    principal: str
    property: str
    scope: str
    requests: int
    applied: int
    partial: int
    refused: int
    failed: int
    in_flight: int


class ReasonCount(TypedDict):
    """How many outcomes were refused or failed for one reason."""

    status: str
    reason: Optional[str]
    count: int


class DriftEpisode(TypedDict):
    """One drift row's life, and its seconds within the period."""

    domain: str
    property: str
    cause: str
    request_id: Optional[str]
    since_position: int
    started: str
    ended_position: Optional[int]
    ended: Optional[str]
    duration: float


class DomainDrift(TypedDict):
    """A domain's time in drift within the period."""

    domain: str
    episodes: int
    seconds: float


class AuditReport(TypedDict):
    """A period's outcomes per principal, property and scope, its top reasons, and its drift episodes."""

    since: Optional[str]
    until: str
    domain: Optional[str]
    principal: Optional[str]
    requests: list[OutcomeCount]
    reasons: list[ReasonCount]
    episodes: list[DriftEpisode]
    drift: list[DomainDrift]


class ConfigChange(TypedDict):
    """One value of a config moved by one event."""

    scope: str
    property: str
    before: Value
    after: Value
    position: int
    event: str
    request_id: Optional[str]
    at: str


class ConfigDiff(TypedDict):
    """Every change of a domain's configs between two positions."""

    domain: str
    from_position: int
    to_position: int
    changes: list[ConfigChange]


class RevertStep(TypedDict):
    """One request of a revert: property, scope, the value it goes back to, the value now."""

    property: str
    scope: str
    value: Value
    current: Value


class Unrevertible(TypedDict):
    """A value a revert cannot bring back, and why."""

    property: str
    scope: str
    value: Value
    current: Value
    why: str


class RevertReport(TypedDict):
    """A revert's requests, their records, and the values it cannot bring back."""

    domain: str
    to_position: int
    correlation_id: str
    dry_run: bool
    steps: list[RevertStep]
    records: list[RequestRecord]
    unrevertible: list[Unrevertible]


class EventRecord(TypedDict):
    """A recorded event: its position, stream, version, type, data and metadata."""

    position: int
    stream: str
    version: int
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Optional[str]]
    recorded_at: str
    hash: str


class Position(TypedDict):
    """A log position: the head after an import, rebuild or verify."""

    position: int


class TokenInfo(TypedDict):
    """A token's public fields; never its secret."""

    name: str
    role: Literal["reader", "operator", "admin"]
    created_at: str


class NewToken(TypedDict):
    """A token just created, with its secret, shown this once."""

    name: str
    role: Literal["reader", "operator", "admin"]
    token: str


class Health(TypedDict):
    """Whether the process, the database and the hypervisor answer."""

    status: str
