"""Pure decisions: which events a request produces on a given domain state."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from vmledger.eventstore.catalogue import Outcome, Reason
from vmledger.eventstore.decisions import SetRequest, decide_live, decide_observed, decide_persistent, decide_set
from vmledger.eventstore.errors import InvalidRequestError, UnknownDomainError, UnknownPropertyError
from vmledger.eventstore.events import (
    DeviceAttached,
    DeviceDetached,
    DomainDefined,
    DomainStarted,
    LiveValueObserved,
    MediaTrayLocked,
    MediaTrayUnlocked,
    PersistentValueObserved,
)
from vmledger.eventstore.hypervisor import LiveResult, Observation
from vmledger.eventstore.log import Metadata, RecordedEvent
from vmledger.eventstore.state import DomainState, apply, fold

GiB = 2**30
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
CONFIG = {"memory": GiB, "max_memory": 4 * GiB, "vcpus": 2, "max_vcpus": 4, "numa_nodes": 1, "media:hdc": ""}


def _state(running: bool) -> DomainState:
    events = [DomainDefined(domain="web", uuid="u1", guest_type="pv", config=CONFIG, capabilities={"balloon": True})]
    if running:
        events.append(DomainStarted(config=CONFIG))
    records = [RecordedEvent(position=i, stream="u1", version=i, event=e, metadata=Metadata(), recorded_at=T0)
               for i, e in enumerate(events, start=1)]
    state = fold(records)
    assert state is not None
    return state


def _request(prop: str, value: object, scope: str = "both") -> SetRequest:
    return SetRequest(request_id="r1", domain="web", property=prop, value=value, scope=scope, principal="alice")  # type: ignore[arg-type]


def _summary(events: tuple) -> list[tuple]:
    return [(e.name, getattr(e, "scope", None), getattr(e, "reason", None)) for e in events]


def test_both_on_running_domain_defers_to_hypervisor() -> None:
    """A valid RW change with scope both records Requested and leaves both scopes to the hypervisor."""
    d = decide_set(_request("memory", 2 * GiB), _state(running=True))
    assert (_summary(d.events), d.persistent_value, d.live_value) == (
        [("MemoryChangeRequested", "both", None)], 2 * GiB, 2 * GiB)


def test_stopped_domain_both_is_persistent_only_and_live_is_refused() -> None:
    """On a stopped domain, both means persistent only, and live is refused domain_not_running."""
    stopped = _state(running=False)
    both = decide_set(_request("vcpus", 3), stopped)
    live = decide_set(_request("vcpus", 3, "live"), stopped)
    assert (both.persistent_value, both.live_value) == (3, None)
    assert _summary(live.events)[1:] == [("VcpusChangeRefused", "live", "domain_not_running")]


@pytest.mark.parametrize("prop,value,scope,expected", [
    ("memory", 5 * GiB, "live", [("MemoryChangeRefused", "live", "out_of_range")]),
    ("memory", 0, "persistent", [("MemoryChangeRefused", "persistent", "out_of_range")]),
    ("max_vcpus", 1, "persistent", [("MaxVcpusChangeRefused", "persistent", "out_of_range")]),
    ("power_state", "off", "both", [("PowerStateChangeRefused", "persistent", "read_only"),
                                    ("PowerStateChangeRefused", "live", "read_only")]),
])
def test_rules_refuse_without_the_hypervisor(prop: str, value: object, scope: str, expected: list) -> None:
    """Read-only, restart-only and out-of-range requests are refused by the rules and recorded."""
    d = decide_set(_request(prop, value, scope), _state(running=True))
    assert (_summary(d.events)[1:], d.live_value) == (expected, None)


@pytest.mark.parametrize("request_,error", [
    (_request("memory", "1GiB"), InvalidRequestError),
    (_request("memory", -1), InvalidRequestError),
    (_request("memory", True), InvalidRequestError),
    (_request("nope", 1), UnknownPropertyError),
    (_request("media:hdx", "/a.iso"), UnknownPropertyError),
    (_request("media:hdc", "relative.iso"), InvalidRequestError),
    (_request("memory", GiB, "sideways"), InvalidRequestError),
    (SetRequest(request_id="r", domain="other", property="memory", value=GiB, principal="a"), UnknownDomainError),
])
def test_caller_errors_raise(request_: SetRequest, error: type) -> None:
    """A malformed request, or one naming an unknown domain, property or device, raises."""
    state = _state(running=True) if request_.domain == "web" else None
    with pytest.raises(error):
        decide_set(request_, state)


def test_fixed_property_live_is_left_to_the_hypervisor() -> None:
    """A live change of a property fixed while running goes to the hypervisor, whose refusal is recorded."""
    d = decide_set(_request("max_memory", 8 * GiB, "live"), _state(running=True))
    assert (_summary(d.events), d.live_value) == ([("MaxMemoryChangeRequested", "live", None)], 8 * GiB)
    refusal = LiveResult.refused(4 * GiB, Reason.REQUIRES_RESTART, "cannot resize the maximum memory on an active domain")
    (event,) = decide_live(_request("max_memory", 8 * GiB, "live"), _state(True), refusal)
    assert (event.name, event.reason, event.message) == (
        "MaxMemoryChangeRefused", "requires_restart", "cannot resize the maximum memory on an active domain")


def test_live_answer_that_delivers_less_is_partial() -> None:
    """A hypervisor that says applied but reports less than asked gives a partial outcome."""
    (event,) = decide_live(_request("memory", 2 * GiB), _state(True), LiveResult.applied(GiB + 5))
    assert (event.name, event.value, event.requested) == ("MemoryChangePartiallyApplied", GiB + 5, 2 * GiB)


def test_failed_live_answer_keeps_value_in_force() -> None:
    """A failed live change records the value still in force and the reason."""
    (event,) = decide_live(_request("memory", 2 * GiB), _state(True),
                           LiveResult.failed(None, Reason.TIMEOUT, "late"))
    assert (event.outcome, event.value, event.reason, event.message) == (Outcome.FAILED, GiB, "timeout", "late")


@pytest.mark.parametrize("answer", [
    LiveResult.refused(2 * GiB, Reason.GUEST_UNSUPPORTED, "no balloon"),
    LiveResult.failed(2 * GiB, Reason.HYPERVISOR_ERROR, "broke"),
], ids=["refused", "failed"])
def test_a_live_answer_that_finds_a_value_the_log_lacks_records_it_observed_first(answer: LiveResult) -> None:
    """Refused or failed with the domain at 2 GiB where the log says 1 GiB: the 2 GiB is recorded as an out-of-band change.

    The outcome's value is the value in force afterwards: the fold must hold it too.
    """
    events = decide_live(_request("memory", 3 * GiB // 2), _state(True), answer)
    assert [(e.name, e.value, getattr(e, "previous", None)) for e in events] == [
        ("LiveValueObserved", 2 * GiB, GiB), (f"MemoryChange{answer.outcome.value}", 2 * GiB, None)]


def test_a_change_refused_for_a_locked_tray_records_the_lock_the_log_lacks() -> None:
    """A tray the log has unlocked, found locked by a live media change, is recorded locked, once; an applied change records it unlocked."""
    refused = LiveResult.refused("", Reason.TRAY_LOCKED, "the guest locked the tray")
    request = _request("media:hdc", "/iso/a.iso")
    events = decide_live(request, _state(True), refused)
    assert [(e.name, getattr(e, "device", None)) for e in events] == [
        ("MediaTrayLocked", "hdc"), ("MediaChangeRefused", None)]
    locked = apply(_state(True), RecordedEvent(position=3, stream="u1", version=3, event=events[0],
                                               metadata=Metadata(), recorded_at=T0))
    assert [e.name for e in decide_live(request, locked, refused)] == ["MediaChangeRefused"]
    applied = LiveResult.applied("/iso/a.iso")
    assert [e.name for e in decide_live(request, locked, applied)] == ["MediaTrayUnlocked", "MediaChangeApplied"]
    assert [e.name for e in decide_live(request, _state(True), applied)] == ["MediaChangeApplied"]


@pytest.mark.parametrize("known", [True, False], ids=["known", "not-known"])
def test_observe_keeps_the_tray_locks_the_log_has_where_the_hypervisor_cannot_tell(known: bool) -> None:
    """A hypervisor that reports no lock unlocks the tray the log has locked only if it can tell locks at all."""
    state = apply(_state(True), RecordedEvent(position=3, stream="u1", version=3, event=MediaTrayLocked(device="hdc"),
                                              metadata=Metadata(), recorded_at=T0))
    seen = attrs.evolve(_seen(True, CONFIG, CONFIG), trays_known=known)
    assert decide_observed(state, seen, T0) == ([MediaTrayUnlocked(device="hdc")] if known else [])


def _pending(state: DomainState, prop: str, value: int, scope: str = "live") -> DomainState:
    (requested,) = decide_set(_request(prop, value, scope), state).events
    return apply(state, RecordedEvent(position=3, stream="u1", version=3, event=requested, metadata=Metadata(),
                                      recorded_at=T0))


@pytest.mark.parametrize("actual, made", [
    (3 * GiB, ["MemoryChangeApplied"]),
    (2 * GiB, ["MemoryChangePartiallyApplied"]),  # from 1 GiB toward 3 GiB
    (GiB, ["MemoryChangeFailed"]),
    (GiB // 2, ["LiveValueObserved", "MemoryChangeFailed"]),  # away from the request
    (4 * GiB, ["LiveValueObserved", "MemoryChangeFailed"]),  # past it
])
def test_an_abandoned_live_request_is_credited_only_with_a_value_it_led_to(actual: int, made: list) -> None:
    """observe resolves an old request from the live value: a value the request did not lead to is an observation."""
    state = _pending(_state(True), "memory", 3 * GiB)
    live = {**CONFIG, "memory": actual}
    seen = Observation(running=True, live=tuple(sorted(live.items())), capabilities=(("balloon", True),))
    events = decide_observed(state, seen, T0 + timedelta(days=1))
    assert [e.name for e in events] == made
    assert events[-1].value == actual


@pytest.mark.parametrize("later, actual, made", [
    ("request", 3 * GiB, ["MemoryChangeFailed"]),  # the later request's value, not this one's doing
    ("request", 2 * GiB, ["LiveValueObserved", "MemoryChangeFailed"]),
    ("observed", 3 * GiB, ["MemoryChangeApplied"]),  # seen by another's refusal: this request's doing, maybe
])
def test_an_abandoned_live_request_is_not_credited_with_what_a_later_request_made(
        later: str, actual: int, made: list) -> None:
    """A value a later request recorded, after the abandoned one's, is that request's doing: the abandoned one failed.

    A request's hypervisor call comes before any later request's of its
    scope (`Ledger.set` holds the scope's lock), so a later outcome's value
    is the last the hypervisor was asked for.  A value merely observed since
    is judged as any other.
    """
    state = _pending(_state(True), "memory", 3 * GiB)
    other = SetRequest(request_id="r2", domain="web", property="memory", value=3 * GiB, scope="live",
                       principal="bob")
    observed = LiveValueObserved(property="memory", value=3 * GiB, previous=GiB)
    steps = ([lambda s: decide_set(other, s).events, lambda s: decide_live(other, s, LiveResult.applied(3 * GiB))]
             if later == "request" else [lambda s: (observed,)])
    for position, decide in enumerate(steps, start=4):
        (event,) = decide(state)
        state = apply(state, RecordedEvent(position=position, stream="u1", version=position, event=event,
                                           metadata=Metadata(), recorded_at=T0))
    live = {**CONFIG, "memory": actual}
    seen = Observation(running=True, live=tuple(sorted(live.items())), capabilities=(("balloon", True),))
    events = decide_observed(state, seen, T0 + timedelta(days=1))
    assert [e.name for e in events] == made
    assert (events[-1].request_id, events[-1].value) == ("r1", actual)


def test_persistent_write_error_is_failed() -> None:
    """A hypervisor error while writing the persistent config records a failed persistent outcome."""
    (event,) = decide_persistent(_request("vcpus", 3), _state(True), "disk full")
    assert (event.name, event.value, event.reason) == ("VcpusChangeFailed", 2, "hypervisor_error")


@pytest.mark.parametrize("scope", [["both"], {"live": 1}, None, 1], ids=repr)
def test_a_scope_that_is_not_text_is_invalid(scope: object) -> None:
    """A scope of another type, unhashable ones included, is an InvalidRequestError (issue #6)."""
    with pytest.raises(InvalidRequestError, match="^invalid scope "):
        decide_set(_request("vcpus", 3, scope=scope), _state(True))  # type: ignore[arg-type]


def test_observe_leaves_a_young_request_to_its_caller_and_resolves_an_old_one() -> None:
    """An unanswered request younger than the staleness bound gets no outcome from observe; an older one gets both."""
    state = _state(True)
    (requested,) = decide_set(_request("vcpus", 3), state).events
    state = apply(state, RecordedEvent(position=3, stream="u1", version=3, event=requested, metadata=Metadata(),
                                       recorded_at=T0))
    config = {**CONFIG, "vcpus": 3}
    seen = Observation(running=True, live=tuple(sorted(config.items())), capabilities=(("balloon", True),),
                       persistent=tuple(sorted(config.items())))
    young = decide_observed(state, seen, T0)
    old = decide_observed(state, seen, T0 + timedelta(microseconds=1))
    assert (_summary(young), _summary(old)) == (
        [], [("VcpusChangeApplied", "persistent", None), ("VcpusChangeApplied", "live", None)])


def test_observed_live_value_records_the_value_the_log_held() -> None:
    """An out-of-band live value is recorded with the live value the log held before, or None where it held none."""
    live = {**CONFIG, "memory": 2 * GiB, "memory_actual": 900 * 2**20}
    seen = Observation(running=True, live=tuple(sorted(live.items())), capabilities=(("balloon", True),))
    assert decide_observed(_state(True), seen, T0) == [
        LiveValueObserved(property="memory", value=2 * GiB, previous=GiB),
        LiveValueObserved(property="memory_actual", value=900 * 2**20, previous=None),
    ]


def _seen(running: bool, live: dict, persistent: dict) -> Observation:
    return Observation(running=running, live=tuple(sorted(live.items())) if running else (),
                       capabilities=(("balloon", True),), persistent=tuple(sorted(persistent.items())))


@pytest.mark.parametrize("running", [True, False], ids=["running", "stopped"])
def test_observe_records_a_persistent_value_changed_out_of_band(running: bool) -> None:
    """Persistent values the hypervisor holds that differ from the log's are recorded as PersistentValueObserved, running or not; a new CD-ROM as DeviceAttached (issue 16)."""
    config = {**CONFIG, "vcpus": 3, "max_vcpus": 6, "media:hdd": "/iso/new.iso"}
    assert decide_observed(_state(running), _seen(running, CONFIG, config), T0) == [
        PersistentValueObserved(property="max_vcpus", value=6, previous=CONFIG["max_vcpus"]),
        PersistentValueObserved(property="vcpus", value=3, previous=CONFIG["vcpus"]),
        DeviceAttached(device="hdd", scope="persistent", media="/iso/new.iso")]


def test_observe_records_cdroms_detached_and_attached_live_and_the_fold_follows() -> None:
    """A CD-ROM gone from the live and the persistent config is DeviceDetached per scope, one attached live DeviceAttached, and the fold drops and adds its property (issue 16)."""
    state = _state(True)
    live = {k: v for k, v in CONFIG.items() if k != "media:hdc"} | {"media:hdd": ""}
    persistent = {k: v for k, v in CONFIG.items() if k != "media:hdc"}
    events = decide_observed(state, _seen(True, live, persistent), T0)
    assert events == [DeviceDetached(device="hdc", scope="persistent"), DeviceDetached(device="hdc", scope="live"),
                      DeviceAttached(device="hdd", scope="live", media="")]
    for version, event in enumerate(events, start=state.version + 1):
        state = apply(state, RecordedEvent(position=version, stream="u1", version=version, event=event,
                                           metadata=Metadata(), recorded_at=T0))
    assert ({k: s.value for k, s in state.persistent.items()}, {k: s.value for k, s in state.live.items()},
            state.devices, decide_observed(state, _seen(True, live, persistent), T0)) == (
        persistent, live, (), [])


def test_observe_leaves_a_persistent_value_a_request_awaits() -> None:
    """A persistent value differing for a property whose request awaits its persistent outcome is left to that request."""
    state = _state(False)
    (requested,) = decide_set(_request("vcpus", 3), state).events
    state = apply(state, RecordedEvent(position=2, stream="u1", version=2, event=requested, metadata=Metadata(),
                                       recorded_at=T0))
    config = {**CONFIG, "vcpus": 3, "memory": 2 * GiB}
    assert decide_observed(state, _seen(False, CONFIG, config), T0) == [
        PersistentValueObserved(property="memory", value=2 * GiB, previous=CONFIG["memory"])]


def test_persistent_value_observed_updates_the_config_and_drifts_external() -> None:
    """Folding PersistentValueObserved sets the persistent value; on a running domain the difference drifts external."""
    records = [RecordedEvent(position=3, stream="u1", version=3, event=PersistentValueObserved(property="vcpus", value=3, previous=2),
                             metadata=Metadata(), recorded_at=T0 + timedelta(seconds=1))]
    running, stopped = fold(records, _state(True)), fold(records, _state(False))
    assert running is not None and stopped is not None
    assert [(p, s.value, s.position, s.request_id, l.value, m.cause, m.request_id, m.position)
            for p, s, l, m in running.drifting()] == [("vcpus", 3, 3, None, 2, "external", None, 3)]
    assert (stopped.persistent["vcpus"].value, stopped.marks, stopped.drifting()) == (3, {}, [])


def test_a_cdrom_recorded_before_device_attached_existed_folds_as_device_attached_does() -> None:
    """A log written before issue 16 recorded a CD-ROM attached live as LiveValueObserved with no previous value; it folds to the live config DeviceAttached gives."""
    def live_after(event: Any) -> tuple:
        state = apply(_state(True), RecordedEvent(position=3, stream="u1", version=3, event=event,
                                                  metadata=Metadata(), recorded_at=T0))
        return ({k: s.value for k, s in state.live.items()}, dict(state.marks))

    assert live_after(LiveValueObserved(property="media:hdd", value="/iso/a.iso", previous=None)) == live_after(
        DeviceAttached(device="hdd", scope="live", media="/iso/a.iso")) == ({**CONFIG, "media:hdd": "/iso/a.iso"}, {})
