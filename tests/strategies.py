"""Hypothesis strategies shared by the property tests: events, set requests, values and sizes.

Every strategy yields values of the shape the product accepts unless its name
says `malformed`; business bounds are deliberately ignored (a value may be out
of range), because a refused request must still be recordable.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from hypothesis import strategies as st

from vmledger.eventstore.catalogue import (
    MAX_BYTES,
    MAX_COUNT,
    Capability,
    GuestType,
    Outcome,
    Reason,
    Scope,
    media_property,
)
from vmledger.eventstore.decisions import SetRequest
from vmledger.eventstore.events import (
    EVENT_TYPES,
    ChangeOutcome,
    ChangeRequested,
    DeviceAttached,
    DeviceDetached,
    DomainDefined,
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
from vmledger.eventstore.log import Metadata, RecordedEvent

__all__ = [
    "any_logs",
    "recorded",
    "LOG_START",
    "KiB",
    "MiB",
    "GiB",
    "DOMAIN_NAMES",
    "DEVICES",
    "SETTABLE",
    "SCOPES",
    "OUTCOME_SCOPES",
    "domain_names",
    "request_ids",
    "principals",
    "texts",
    "devices",
    "property_names",
    "values",
    "sizes",
    "size_texts",
    "counts",
    "media_paths",
    "scopes",
    "outcome_scopes",
    "reasons",
    "capability_pairs",
    "observed_capability_pairs",
    "config_pairs",
    "well_formed_value",
    "malformed_value",
    "set_requests",
    "event_strategy",
    "events",
]

KiB, MiB, GiB = 2**10, 2**20, 2**30

#: The small fixed pool of domain names that requests and machines use.
DOMAIN_NAMES = ("web", "db", "cache")
#: The CD-ROM devices the tests give their domains.
DEVICES = ("hdc",)
#: The properties a `set` may name in the tests: RW, RO(ins), media and one RO(run).
SETTABLE = ("memory", "vcpus", "max_memory", "max_vcpus", "media:hdc", "power_state")
SCOPES = tuple(s.value for s in Scope)
OUTCOME_SCOPES = (Scope.LIVE.value, Scope.PERSISTENT.value)

_BYTES_PROPS = ("memory", "max_memory", "memory_actual")
_COUNT_PROPS = ("vcpus", "max_vcpus", "numa_nodes")
_STATE_PROPS = ("power_state",)

#: Text that requests accept: no control characters, line separators, bidi controls or lone surrogates.
texts = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp"),
                           exclude_characters="\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"),
    min_size=1, max_size=24,
)


def domain_names() -> st.SearchStrategy[str]:
    """Return valid domain names: the fixed pool, and random ones within the name rules."""
    free = st.from_regex(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,20}", fullmatch=True)
    return st.one_of(st.sampled_from(DOMAIN_NAMES), free)


def request_ids() -> st.SearchStrategy[str]:
    """Return request ids: short printable text, as clients give or uuid4 hex as generated."""
    return st.one_of(st.uuids().map(lambda u: u.hex), texts)


def principals() -> st.SearchStrategy[str]:
    """Return principal names."""
    return st.one_of(st.sampled_from(("vmledger", "alice", "bob@example.org")), texts)


def devices() -> st.SearchStrategy[str]:
    """Return device names (letters and digits), mostly the devices the tests define."""
    return st.one_of(st.sampled_from(DEVICES), st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True))


def property_names() -> st.SearchStrategy[str]:
    """Return property names of the catalogue, including `media:<device>` ones."""
    plain = st.sampled_from(("memory", "max_memory", "vcpus", "max_vcpus", "numa_nodes",
                             "power_state", "memory_actual"))
    return st.one_of(plain, devices().map(media_property))


def sizes() -> st.SearchStrategy[int]:
    """Return sizes in bytes: round binary sizes mostly, any byte count up to 16 TiB sometimes."""
    round_ = st.sampled_from((256 * MiB, 512 * MiB, 1 * GiB, 2 * GiB, 4 * GiB, 8 * GiB))
    return st.one_of(round_, st.integers(0, MAX_BYTES))


def size_texts() -> st.SearchStrategy[tuple[str, int]]:
    """Return `(text, bytes)` pairs such as `("2GiB", 2147483648)` or `("1024", 1024)`."""
    units = st.sampled_from((("", 1), ("B", 1), ("KiB", KiB), ("MiB", MiB), ("GiB", GiB), ("TiB", 2**40)))
    return st.tuples(st.integers(0, 4096), units).map(
        lambda nu: (f"{nu[0]}{nu[1][0]}", nu[0] * nu[1][1])
    )


def counts() -> st.SearchStrategy[int]:
    """Return counts (vCPUs, nodes): small ones mostly, up to the sanity bound sometimes."""
    return st.one_of(st.integers(0, 8), st.integers(0, MAX_COUNT))


def media_paths() -> st.SearchStrategy[str]:
    """Return media paths: empty (eject), a few ISO images, or any absolute path."""
    fixed = st.sampled_from(("", "/iso/a.iso", "/iso/b.iso", "/srv/images/ubuntu 24.04.iso"))
    return st.one_of(fixed, texts.map(lambda t: "/" + t.replace("/", "_")))


def values() -> st.SearchStrategy[int | str]:
    """Return any event value: an int or a str."""
    return st.one_of(st.integers(0, MAX_BYTES), texts, media_paths())


def scopes() -> st.SearchStrategy[str]:
    """Return request scopes: live, persistent, both or current."""
    return st.sampled_from(SCOPES)


def outcome_scopes() -> st.SearchStrategy[str]:
    """Return the scopes an outcome concerns: live or persistent."""
    return st.sampled_from(OUTCOME_SCOPES)


def reasons() -> st.SearchStrategy[str]:
    """Return reason codes."""
    return st.sampled_from(tuple(r.value for r in Reason))


def capability_pairs(*, min_size: int = 0) -> st.SearchStrategy[tuple[tuple[str, bool | None], ...]]:
    """Return capability pairs (true, false or unknown), sorted by name, as events hold them."""
    return st.dictionaries(
        st.sampled_from(tuple(c.value for c in Capability)), st.sampled_from((True, False, None)),
        min_size=min_size,
    ).map(lambda d: tuple(sorted(d.items())))


def observed_capability_pairs() -> st.SearchStrategy[tuple[tuple[str, bool | None], ...]]:
    """Return non-empty capability pairs, as an observation reports them."""
    return capability_pairs(min_size=1)


#: Values near the bounds the tests define domains with, in range and out of it.
_CURATED: dict[str, tuple[int | str, ...]] = {
    "bytes": (0, 256 * MiB, 512 * MiB, 1 * GiB, 2 * GiB, 3 * GiB, 4 * GiB, 8 * GiB, 16 * GiB),
    "count": (0, 1, 2, 3, 4, 5, 8),
    "media": ("", "/iso/a.iso", "/iso/b.iso"),
    "state": ("running", "shut off", "paused"),
}


def _kind(prop: str) -> str:
    base = prop.split(":", 1)[0]
    if base in _BYTES_PROPS:
        return "bytes"
    if base in _COUNT_PROPS:
        return "count"
    return "media" if base == "media" else "state"


def well_formed_value(prop: str, *, curated: bool = False) -> st.SearchStrategy[int | str]:
    """Return values of the right shape for `prop`, in range or not.

    With `curated`, only a few values near the bounds the tests define domains
    with, so that requests often land in range and collide with each other.
    """
    kind = _kind(prop)
    if curated:
        return st.sampled_from(_CURATED[kind])
    wild = {"bytes": sizes, "count": counts, "media": media_paths, "state": lambda: texts}[kind]()
    return st.one_of(st.sampled_from(_CURATED[kind]), wild)


def malformed_value(prop: str) -> st.SearchStrategy[Any]:
    """Return values whose shape `prop` rejects (wrong type, negative, absurdly large, bad path)."""
    kind = _kind(prop)
    if kind in ("bytes", "count"):
        limit = MAX_BYTES if kind == "bytes" else MAX_COUNT
        return st.one_of(
            st.integers(max_value=-1), st.integers(min_value=limit + 1), st.booleans(),
            st.sampled_from(("2GiB", "", "1.5")), st.just(1.5),
        )
    if kind == "media":
        return st.one_of(
            st.sampled_from(("iso/a.iso", "a.iso", "/iso/\x00.iso", "/iso/\x7f")),
            st.integers(0, 10), st.just("/" + "a" * 4096),
        )
    return st.one_of(st.just(""), st.integers(0, 10), st.just("x" * 65), st.just("run\nning"))


def config_pairs(*, devices: tuple[str, ...] = DEVICES) -> st.SearchStrategy[tuple[tuple[str, int | str], ...]]:
    """Return a persistent config as sorted pairs: sizes, counts and one media path per device."""
    fields: dict[str, st.SearchStrategy[Any]] = {
        "memory": sizes(), "max_memory": sizes(), "vcpus": counts(),
        "max_vcpus": counts(), "numa_nodes": counts(),
    }
    fields.update({media_property(d): media_paths() for d in devices})
    return st.fixed_dictionaries(fields).map(lambda d: tuple(sorted(d.items())))


def set_requests(
    domains: tuple[str, ...] = DOMAIN_NAMES,
    properties: tuple[str, ...] = SETTABLE,
    *,
    request_id: st.SearchStrategy[str] | None = None,
) -> st.SearchStrategy[SetRequest]:
    """Return well-formed `SetRequest`s against `domains` (values may be out of range)."""

    @st.composite
    def build(draw: Callable[[st.SearchStrategy[Any]], Any]) -> SetRequest:
        prop = draw(st.sampled_from(properties))
        return SetRequest(
            request_id=draw(request_id if request_id is not None else request_ids()),
            domain=draw(st.sampled_from(domains)),
            property=prop,
            value=draw(well_formed_value(prop)),
            scope=draw(scopes()),
            principal=draw(principals()),
            reason=draw(st.none() | texts),
        )

    return build()


def _change_requested(cls: type[Event]) -> st.SearchStrategy[Event]:
    return st.builds(
        cls, request_id=request_ids(), property=property_names(), value=values(),
        scope=scopes(), principal=principals(), reason=st.none() | texts,
    )


def _change_outcome(cls: type[Event]) -> st.SearchStrategy[Event]:
    return st.builds(
        cls, request_id=request_ids(), property=property_names(), scope=outcome_scopes(),
        requested=values(), value=st.none() | values(), reason=st.none() | reasons(),
        message=st.none() | texts,
    )


_LIFECYCLE: dict[type[Event], Callable[[], st.SearchStrategy[Event]]] = {
    DomainDefined: lambda: st.builds(
        DomainDefined, domain=domain_names(), uuid=st.uuids().map(str),
        guest_type=st.sampled_from(tuple(g.value for g in GuestType)),
        config=config_pairs(), capabilities=capability_pairs(),
    ),
    DomainStarted: lambda: st.builds(DomainStarted, config=config_pairs()),
    DomainStopped: lambda: st.builds(DomainStopped),
    DomainUndefined: lambda: st.builds(DomainUndefined),
    GuestCapabilitiesObserved: lambda: st.builds(
        GuestCapabilitiesObserved, capabilities=capability_pairs()),
    MediaTrayLocked: lambda: st.builds(MediaTrayLocked, device=devices()),
    MediaTrayUnlocked: lambda: st.builds(MediaTrayUnlocked, device=devices()),
    LiveValueObserved: lambda: st.builds(
        LiveValueObserved, property=property_names(), value=values(), previous=st.none() | values()),
    PersistentValueObserved: lambda: st.builds(PersistentValueObserved, property=property_names(), value=values(),
                                               previous=st.none() | values()),
    DeviceAttached: lambda: st.builds(DeviceAttached, device=devices(), scope=outcome_scopes(), media=texts),
    DeviceDetached: lambda: st.builds(DeviceDetached, device=devices(), scope=outcome_scopes()),
}


def event_strategy(cls: type[Event]) -> st.SearchStrategy[Event]:
    """Return a strategy for valid events of exactly the class `cls` (any of `EVENT_TYPES`)."""
    if cls in _LIFECYCLE:
        return _LIFECYCLE[cls]()
    if issubclass(cls, ChangeRequested):
        return _change_requested(cls)
    if issubclass(cls, ChangeOutcome):
        return _change_outcome(cls)
    raise TypeError(f"no strategy for {cls.__name__}")


def events() -> st.SearchStrategy[Event]:
    """Return valid events of every type in `EVENT_TYPES`."""
    return st.sampled_from(sorted(EVENT_TYPES)).flatmap(lambda name: event_strategy(EVENT_TYPES[name]))


#: The time of the first event of a log `recorded` makes.
LOG_START = datetime(2026, 1, 31, 12, 0, tzinfo=timezone.utc)
#: The properties of `any_logs`: few, so that outcomes meet each other.
_ANY_PROPS = ("memory", "vcpus", "media:hdc")


@st.composite
def any_logs(draw: Any, max_events: int = 40) -> list[RecordedEvent]:
    """Return a log of two domains whose change events come in any order, with any outcome, in any scope.

    Decisions never write most of these sequences (a live outcome before the
    persistent one, a second outcome, a `current` request while stopped...),
    but a rebuild must fold whatever the log holds as the incremental path did.
    Request ids are unique, as the incremental path ensures.
    """
    events: list[tuple[str, Event]] = []
    for uuid in ("a", "b"):
        config = draw(config_pairs(devices=DEVICES))
        events.append((uuid, DomainDefined(domain=uuid, uuid=uuid, guest_type="pv", config=config,
                                           capabilities=draw(capability_pairs()))))
        if draw(st.booleans()):
            events.append((uuid, DomainStarted(config=config)))
    requested: list[tuple[str, str]] = []  # request ids and their domains
    for _ in range(draw(st.integers(0, max_events))):
        uuid, prop = draw(st.sampled_from(("a", "b"))), draw(st.sampled_from(_ANY_PROPS))
        kind = draw(st.sampled_from(
            ("request", "request", "outcome", "outcome", "outcome", "start", "stop", "other")))
        if kind == "request" or (kind == "outcome" and not requested):
            request_id = f"r{len(requested)}"
            requested.append((request_id, uuid))
            event: Event = change_event(prop, Outcome.REQUESTED)(
                request_id=request_id, property=prop, value=draw(well_formed_value(prop)),
                scope=draw(st.sampled_from(("live", "persistent", "both", "current"))), principal="p",
                reason=draw(st.none() | texts))
        elif kind == "outcome":
            # Mostly on the request's own domain, where it is pending.
            request_id, home = draw(st.sampled_from(requested[-3:]) | st.sampled_from(requested))
            uuid = draw(st.sampled_from((home, home, home, uuid)))
            outcome = draw(st.sampled_from([o for o in Outcome if o is not Outcome.REQUESTED]))
            event = change_event(prop, outcome)(
                request_id=request_id, property=prop,
                scope=draw(st.sampled_from(("live", "persistent"))), requested=draw(well_formed_value(prop)),
                value=draw(st.none() | well_formed_value(prop)),
                reason=draw(st.none() | st.just(Reason.REQUIRES_RESTART.value) | reasons()),
                message=draw(st.none() | texts))
        elif kind == "start":
            event = DomainStarted(config=draw(config_pairs(devices=DEVICES)))
        elif kind == "stop":
            event = draw(st.sampled_from((DomainStopped(), DomainUndefined())))
        else:
            event = draw(st.one_of(
                well_formed_value(prop).map(lambda v: LiveValueObserved(property=prop, value=v, previous=None)),
                well_formed_value(prop).map(lambda v: PersistentValueObserved(property=prop, value=v, previous=None)),
                observed_capability_pairs().map(lambda c: GuestCapabilitiesObserved(capabilities=c)),
                st.sampled_from((MediaTrayLocked(device="hdc"), MediaTrayUnlocked(device="hdc"))),
                st.builds(DeviceAttached, device=st.sampled_from(("hdc", "hdd")),
                          scope=st.sampled_from(("live", "persistent")), media=st.sampled_from(("", "/iso/a.iso"))),
                st.builds(DeviceDetached, device=st.sampled_from(("hdc", "hdd")),
                          scope=st.sampled_from(("live", "persistent"))),
            ))
        events.append((uuid, event))
    return recorded(events)


def recorded(events: list[tuple[str, Event]]) -> list[RecordedEvent]:
    """Return `(stream, event)`s recorded in order, two to a second."""
    versions: dict[str, int] = {}
    records = []
    for position, (uuid, event) in enumerate(events, start=1):
        versions[uuid] = versions.get(uuid, 0) + 1
        records.append(RecordedEvent(position=position, stream=uuid, version=versions[uuid], event=event,
                                     metadata=Metadata(principal="p"),
                                     recorded_at=LOG_START + timedelta(seconds=position // 2)))
    return records
