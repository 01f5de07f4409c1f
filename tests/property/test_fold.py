"""The pure fold: snapshots round-trip, folding in chunks equals folding at once, drift is live != persistent.

Event sequences are made the way the ledger makes them, by running the
decisions (`decide_set`, `decide_persistent`, `decide_live`, `decide_stop`,
`decide_undefine`, `decide_observed`) on the state folded so far, interleaved
with lifecycle and observation events; callers may die mid-request; no database.
The rebuild's own fold (`Replay`) is held equal to `Model` on the same sequences.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
from collections import Counter
from datetime import timedelta
from typing import Any, Callable

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmledger.eventstore.backends.common import record
from vmledger.projections.scan import scan
from vmledger.eventstore.catalogue import Cause, GuestType, Outcome, Reason
from vmledger.eventstore.codec import dumps, dumps_plain, dumps_value, encode
from vmledger.eventstore.decisions import (
    SetRequest,
    decide_live,
    decide_observed,
    decide_persistent,
    decide_set,
    decide_stop,
    decide_undefine,
)
from vmledger.eventstore.events import (
    ChangeOutcome,
    DeviceAttached,
    DeviceDetached,
    DomainDefined,
    DomainStarted,
    Event,
    GuestCapabilitiesObserved,
    LiveValueObserved,
    MediaTrayLocked,
    MediaTrayUnlocked,
    PersistentValueObserved,
    change_event,
)
from vmledger.eventstore.hypervisor import LiveResult, Observation
from vmledger.eventstore.log import Metadata, RecordedEvent, timestamp
from vmledger.eventstore.state import DomainFold, DomainState, Mark, Slot, apply
from vmledger.projections._replay import Replay
from vmledger.projections.model import (
    TABLES, Model, count_outcome_days, domain_rows, history_from_row, outcome_day_rows, outcome_rows, record_from_row,
    state_from_json, state_to_json,
)
from vmledger.projections.store import OUTCOME_DAYS_ROWS
from vmledger.projections import verify as verify_module
from vmledger.projections.verify import domain_groups, folded_rows
from tests.strategies import (
    DEVICES,
    DOMAIN_NAMES,
    LOG_START,
    any_logs,
    capability_pairs,
    config_pairs,
    observed_capability_pairs,
    set_requests,
    recorded,
    texts,
    well_formed_value,
)

SETTINGS = settings(database=None, deadline=None, max_examples=60)
BASE = LOG_START
#: A time after every record a history makes: every request is abandoned by then.
LATER = BASE + timedelta(days=1)
Draw = Callable[[st.SearchStrategy[Any]], Any]


@attrs.define
class History:
    """Records made by driving the decisions, with every state the fold passed through."""

    records: list[RecordedEvent] = attrs.field(factory=list)
    states: dict[str, DomainState] = attrs.field(factory=dict)
    seen: list[DomainState] = attrs.field(factory=list)
    #: Requests whose caller still waits for the hypervisor's live answer.
    pending: list[tuple[str, SetRequest]] = attrs.field(factory=list)
    streams: int = 0
    requests: int = 0

    def append(self, stream: str, events: tuple[Event, ...] | list[Event], micro: int) -> None:
        """Record `events` on `stream` at the next positions, folding each one."""
        for event in events:
            position = len(self.records) + 1
            before = self.states.get(stream)
            rec = RecordedEvent(
                position=position, stream=stream, version=(before.version if before else 0) + 1,
                event=event, metadata=Metadata(principal="test"),
                recorded_at=BASE + timedelta(seconds=position, microseconds=micro),
            )
            self.states[stream] = apply(before, rec)
            self.records.append(rec)
            self.seen.append(self.states[stream])

    def defined(self) -> list[str]:
        """Return the streams of defined domains, in order of definition."""
        return [u for u, s in self.states.items() if s.defined]


def _live_results(request: SetRequest, state: DomainState) -> st.SearchStrategy[LiveResult]:
    slot = state.live.get(request.property)
    current = slot.value if slot else None
    other = well_formed_value(request.property)
    reasons = st.sampled_from(list(Reason))
    return st.one_of(
        st.just(LiveResult.applied(request.value)),
        other.map(LiveResult.applied),  # "applied" but another value: a partial in disguise
        other.map(lambda v: LiveResult.partial(v, "balloon stopped short")),
        st.builds(LiveResult.refused, st.just(current), reasons, texts),
        st.builds(LiveResult.failed, st.sampled_from((None, current)), reasons, texts),
    )


def _define(draw: Draw, h: History, micro: int) -> None:
    taken = {h.states[u].name for u in h.defined()}
    name = draw(st.sampled_from([n for n in DOMAIN_NAMES if n not in taken]))
    h.streams += 1
    h.append(f"uuid-{h.streams}", [DomainDefined(
        domain=name, uuid=f"uuid-{h.streams}", guest_type=draw(st.sampled_from([g.value for g in GuestType])),
        config=draw(config_pairs(devices=DEVICES)), capabilities=draw(capability_pairs()),
    )], micro)


def _start(draw: Draw, h: History, uuid: str, micro: int) -> None:
    config = {k: s.value for k, s in h.states[uuid].persistent.items()}
    if draw(st.sampled_from((False, False, True))):  # booted with a value changed behind the ledger's back
        prop = draw(st.sampled_from(sorted(config)))
        config[prop] = draw(well_formed_value(prop))
    events: list[Event] = [DomainStarted(config=config)]
    if draw(st.booleans()):
        events.append(GuestCapabilitiesObserved(capabilities=draw(observed_capability_pairs())))
    h.append(uuid, events, micro)


def _set(draw: Draw, h: History, uuid: str, micro: int) -> None:
    h.requests += 1
    state = h.states[uuid]
    request = draw(set_requests((state.name,), request_id=st.just(f"req-{h.requests}")))
    if not state.has_property(request.property):
        return  # a CD-ROM detached behind the ledger's back: the request is an error that writes nothing
    decision = decide_set(request, state)
    h.append(uuid, decision.events, micro)
    # The caller may die right after `…Requested` or after the persistent outcome.
    dies = draw(st.sampled_from((None, None, None, "requested", "persistent")))
    if dies == "requested":
        return
    if decision.persistent_value is not None:
        error = draw(st.none() | texts)
        h.append(uuid, decide_persistent(request, h.states[uuid], error), micro)
    if dies == "persistent":
        return
    if decision.live_value is not None:
        if draw(st.booleans()):
            h.pending.append((uuid, request))  # the hypervisor has not answered yet
        else:
            result = draw(_live_results(request, h.states[uuid]))
            h.append(uuid, decide_live(request, h.states[uuid], result), micro)


def _resolve(draw: Draw, h: History, micro: int) -> None:
    uuid, request = h.pending.pop(draw(st.integers(0, len(h.pending) - 1)))
    result = draw(_live_results(request, h.states[uuid]))
    pending = h.states[uuid].pending.get(request.request_id)
    if pending is not None and pending.awaits("live"):  # a stop or observe may have recorded it: as the ledger does
        h.append(uuid, decide_live(request, h.states[uuid], result), micro)


def _observation(draw: Draw, state: DomainState) -> Observation:
    """Return what a hypervisor may report: running or not, pending requests' values taken or not, its config changed or not."""
    persistent = {k: s.value for k, s in state.persistent.items()}
    live = {k: s.value for k, s in state.live.items()} if state.running else dict(persistent)
    if draw(st.booleans()):  # the config was changed behind the ledger's back
        prop = draw(st.sampled_from(sorted(persistent)))
        persistent[prop] = draw(well_formed_value(prop))
    for p in state.pending.values():
        values = st.just(p.requested) | well_formed_value(p.property)
        live[p.property] = draw(values)
        persistent[p.property] = draw(values)
    awaited = {p.property for p in state.pending.values()}
    for config in (persistent, live):  # a CD-ROM no request awaits, attached or detached behind the ledger's back
        device = "media:" + draw(st.sampled_from(("hdc", "hdd")))
        if draw(st.booleans()) and device not in awaited:
            if config.pop(device, None) is None:
                config[device] = draw(st.sampled_from(("", "/iso/a.iso")))
    running = draw(st.booleans())
    return Observation(running=running, live=tuple(sorted(live.items())) if running else (),
                       capabilities=(), persistent=tuple(sorted(persistent.items())))


def _observe_hypervisor(draw: Draw, h: History, uuid: str, micro: int) -> None:
    state = h.states[uuid]
    stale_before = draw(st.sampled_from((BASE, LATER)))
    events = decide_observed(state, _observation(draw, state), stale_before)
    if events:
        h.append(uuid, events, micro)


def _observe(draw: Draw, h: History, uuid: str, micro: int) -> None:
    state = h.states[uuid]
    prop = draw(st.sampled_from(sorted(state.persistent)))
    held = state.live[prop].value if prop in state.live else None
    configured = state.persistent[prop].value
    event = draw(st.one_of(
        well_formed_value(prop).map(lambda v: LiveValueObserved(property=prop, value=v, previous=held)),
        well_formed_value(prop).map(lambda v: PersistentValueObserved(property=prop, value=v, previous=configured)),
        observed_capability_pairs().map(lambda c: GuestCapabilitiesObserved(capabilities=c)),
        st.sampled_from(DEVICES).map(lambda d: MediaTrayLocked(device=d)),
        st.sampled_from(DEVICES).map(lambda d: MediaTrayUnlocked(device=d)),
        st.builds(DeviceAttached, device=st.sampled_from(("hdc", "hdd")), scope=st.sampled_from(("live", "persistent")),
                  media=st.sampled_from(("", "/iso/a.iso"))),
        st.builds(DeviceDetached, device=st.sampled_from(("hdc", "hdd")), scope=st.sampled_from(("live", "persistent"))),
    ))
    h.append(uuid, [event], micro)


@st.composite
def histories(draw: Draw, max_steps: int = 30) -> History:
    """Return a history made by driving the decisions on the folded state, step by step."""
    h = History()
    for _ in range(draw(st.integers(0, max_steps))):
        micro = draw(st.sampled_from((0, 1, 500_000, 999_999)))
        defined = h.defined()
        running = [u for u in defined if h.states[u].running]
        stopped = [u for u in defined if not h.states[u].running]
        actions = ["define"] if len(defined) < len(DOMAIN_NAMES) else []
        actions += ["start", "undefine"] if stopped else []
        actions += ["stop", "observe"] if running else []
        actions += ["set"] * 4 + ["observe_hypervisor"] if defined else []
        actions += ["resolve"] if h.pending else []
        if not actions:
            break
        action = draw(st.sampled_from(actions))
        if action == "define":
            _define(draw, h, micro)
        elif action == "start":
            _start(draw, h, draw(st.sampled_from(stopped)), micro)
        elif action == "stop":
            uuid = draw(st.sampled_from(running))
            h.append(uuid, decide_stop(h.states[uuid]), micro)
        elif action == "undefine":
            uuid = draw(st.sampled_from(stopped))
            h.append(uuid, decide_undefine(h.states[uuid]), micro)
        elif action == "observe_hypervisor":
            _observe_hypervisor(draw, h, draw(st.sampled_from(defined)), micro)
        elif action == "set":
            _set(draw, h, draw(st.sampled_from(defined)), micro)
        elif action == "resolve":
            _resolve(draw, h, micro)
        else:
            _observe(draw, h, draw(st.sampled_from(running)), micro)
    return h


def _expected_drift(state: DomainState) -> list[tuple[str, str, str]]:
    """Return `(property, persistent, live)` JSON wherever a running domain's live value differs."""
    return [
        (prop, dumps(slot.value), dumps(state.live[prop].value))
        for prop, slot in sorted(state.persistent.items())
        if state.running and prop in state.live and state.live[prop].value != slot.value
    ]


@SETTINGS
@given(histories(), st.data())
def test_observed_cdroms_fold_into_the_hypervisors(h: History, data: st.DataObject) -> None:
    """After an observation's events are folded, each scope holds exactly the CD-ROMs the hypervisor reported, bar those a request awaits (issue 16)."""
    defined = h.defined()
    if not defined:
        return
    uuid = data.draw(st.sampled_from(defined))
    state = h.states[uuid]
    seen = _observation(data.draw, state)
    h.append(uuid, decide_observed(state, seen, LATER) or [], 0)
    after = h.states[uuid]
    # Fresh, for the awaited ones: the observation's live outcomes may have settled some.
    awaited = {p.property for p in state.pending.values()}

    def cdroms(pairs: Any) -> set:
        return {(k, v) for k, v in pairs if k.startswith("media:") and k not in awaited}

    expected_live = cdroms(seen.live) if seen.running else set()
    assert (cdroms((k, s.value) for k, s in after.persistent.items()),
            cdroms((k, s.value) for k, s in after.live.items())) == (cdroms(seen.persistent), expected_live)


@SETTINGS
@given(histories())
def test_state_snapshot_round_trips(h: History) -> None:
    """Every state the fold passes through survives `state_to_json` then `state_from_json`, text and all."""
    texts_ = [state_to_json(s) for s in h.seen]
    back = [state_from_json(t) for t in texts_]
    assert (back, [state_to_json(s) for s in back]) == (h.seen, texts_)


@SETTINGS
@given(st.data(), histories())
def test_fold_in_two_chunks_equals_fold_at_once(data: st.DataObject, h: History) -> None:
    """Folding a model seeded from a prefix's snapshots and history rows over the rest gives the whole fold."""
    split = data.draw(st.integers(0, len(h.records)), label="split")
    whole = Model()
    whole.feed_all(h.records)
    first = Model()
    first.feed_all(h.records[:split])
    second = Model(
        states={u: state_from_json(state_to_json(s)) for u, s in first.states.items()},
        history={r: record_from_row(first.history_row(r)) for r in first.history},
        position=first.position,
        ended=list(first.ended),  # written when they ended, as the stored rows hold them
    )
    second.feed_all(h.records[split:])
    assert (second.all_rows(), second.states, second.position, whole.states) == (
        whole.all_rows(), whole.states, len(h.records), h.states)


@SETTINGS
@given(histories())
def test_drift_rows_are_exactly_where_live_differs(h: History) -> None:
    """After every event, drift rows are exactly the running domain's properties whose live value != persistent."""
    model = Model()
    seen_rows, expected_rows = [], []
    for rec in h.records:
        model.feed(rec)
        seen_rows.append([row[1:4] for row in model.domain_rows(rec.stream)["drift"]])
        expected_rows.append(_expected_drift(model.states[rec.stream]))
    assert seen_rows == expected_rows


@SETTINGS
@given(histories())
def test_drift_causes_are_known_and_in_flight_means_pending(h: History) -> None:
    """Every drift cause is a known cause, and `in_flight` drift names a request still pending."""
    model = Model()
    causes = {c.value for c in Cause}
    wrong = []
    for rec in h.records:
        model.feed(rec)
        state = model.states[rec.stream]
        wrong += [
            (rec.position, prop, mark) for prop, _, _, mark in state.drifting()
            if mark.cause not in causes
            or (mark.cause == Cause.IN_FLIGHT.value and mark.request_id not in state.pending)
        ]
    assert wrong == []


def _in_flight(model: Model) -> set[tuple[str, str, str]]:
    """Return `(stream, request id, scope)` of every history outcome still in flight."""
    records = [history_from_row(model.history_row(r)) for r in model.history]
    return {(r["domain"], r["request_id"], scope) for r in records
            for scope, o in r["outcomes"].items() if o["status"] == "in_flight"}


def _awaited(model: Model) -> set[tuple[str, str, str]]:
    """Return `(stream, request id, scope)` of every scope the domain states still await."""
    return {(u, p.request_id, scope) for u, s in model.states.items()
            for p in s.pending.values() for scope in p.awaiting}


@SETTINGS
@given(histories())
def test_pending_is_exactly_what_history_shows_in_flight(h: History) -> None:
    """After every event (stops and undefinitions included) the states await exactly the scopes history shows in flight, and no scope gets two outcomes."""
    model = Model()
    mismatches = []
    for rec in h.records:
        model.feed(rec)
        if _awaited(model) != _in_flight(model):
            mismatches.append(rec.position)
    outcomes = [(r.event.request_id, r.event.scope) for r in h.records if isinstance(r.event, ChangeOutcome)]
    completed = {r["request_id"]: r["completed_at"] is not None
                 for r in (history_from_row(model.history_row(i)) for i in model.history)}
    assert (mismatches, len(outcomes), completed) == (
        [], len(set(outcomes)), {r: not any(i[1] == r for i in _in_flight(model)) for r in completed})


@SETTINGS
@given(st.data(), histories())
def test_observing_every_domain_resolves_every_abandoned_request(data: st.DataObject, h: History) -> None:
    """Once every request is older than the staleness bound, observing each defined domain leaves nothing in flight."""
    for uuid in h.defined():
        state = h.states[uuid]
        events = decide_observed(state, _observation(data.draw, state), LATER)
        if events:
            h.append(uuid, events, 0)
    model = Model()
    model.feed_all(h.records)
    assert (_in_flight(model), _awaited(model)) == (set(), set())


def _stored(rec: RecordedEvent) -> tuple[Any, ...]:
    """Return the row a backend stores for `rec`, in the columns the rebuild reads (`SCAN_COLUMNS`)."""
    return (rec.position, rec.stream, rec.version, *encode(rec.event), dumps(rec.metadata.to_dict()),
            timestamp(rec.recorded_at))


def _folded(fold: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
    """Return what a fold gives, or the type and text of the error it raises."""
    try:
        return ("folded", *fold())
    except ValueError as e:
        return ("raised", type(e), str(e))


def _replayed(rows: list[tuple[Any, ...]], size: int, via_record: set[int]) -> tuple[Any, ...]:
    """Fold stored rows as the rebuild does, `size` at a time, writing out completed requests after each chunk.

    Rows at the indices `via_record` reach the fold as records (as rows that
    `scan` leaves to `record` do); a late outcome gets its written record back.
    Returns the rows, and the domain states after each chunk.
    """
    replay, written, ended, states = Replay(), {}, [], []
    for start in range(0, len(rows), size):
        def decode(chunk: Any, start: int = start) -> list[Any]:
            return [record((*row, "")) if start + i in via_record else item
                    for i, (row, item) in enumerate(zip(chunk, scan(chunk)))]

        request_id = replay.fold(rows[start:start + size], decode)
        while request_id is not None:  # its row is taken out, as the rebuild takes it
            request_id = replay.resume(written.pop(request_id, None))
        done = dict(replay.completed())
        written.update((row[0], row) for row in done["history"])
        ended.extend(done["episodes"])
        states.append({u: w.state() for u, w in replay.domains.items()})
    tables: dict[str, list[tuple]] = {t: [] for t in (*TABLES, "outcome_days")}
    for table, part in replay.rows():
        tables[table].extend(part)
    tables["history"].extend(written.values())
    tables["episodes"].extend(ended)
    for table, (_, key) in TABLES.items():
        tables[table].sort(key=lambda row: row[:key])
    return tables, states


def _modelled(records: list[RecordedEvent], size: int) -> tuple[Any, ...]:
    """Fold records with `Model`, as the incremental path does; return the rows, and the states every `size` records."""
    model, states = Model(), []
    for start in range(0, len(records), size):
        model.feed_all(records[start:start + size])
        states.append(dict(model.states))
    return _with_days(model.all_rows()), states


def _with_days(rows: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
    """Return the rows with the `outcome_days` rows of the outcomes of their history rows."""
    days: Counter[tuple] = Counter()
    count_outcome_days(days, (o for h in rows["history"] for o in outcome_rows(record_from_row(h))))
    return {**rows, "outcome_days": outcome_day_rows(days)}


@SETTINGS
@given(st.data(), histories())
def test_rebuild_fold_equals_the_model(data: st.DataObject, h: History) -> None:
    """The rebuild's fold over the stored rows, in chunks, some decoded by `record`, late outcomes and all, gives the model's rows, and its states after every chunk, or its error."""
    outcomes = [r for r in h.records if isinstance(r.event, ChangeOutcome)]
    if outcomes:  # an outcome recorded again once its request is complete: the rebuild reads it back
        for rec in data.draw(st.lists(st.sampled_from(outcomes), max_size=3), label="outcomes again"):
            h.append(rec.stream, [rec.event], 0)
    records = list(h.records)
    if records:  # without an event, a domain may be undefined or a request unknown: both folds must say so
        drop = data.draw(st.sampled_from((None, None, None, 0, len(records) // 2)), label="drop")
        if drop is not None:
            del records[drop]
    rows = [_stored(r) for r in records]
    size = data.draw(st.integers(1, 3) | st.integers(1, max(1, len(rows))), label="chunk")
    via_record = data.draw(st.sets(st.integers(0, max(0, len(rows) - 1))), label="via record")
    assert _folded(lambda: _replayed(rows, size, via_record)) == _folded(lambda: _modelled(records, size))


def _request(scope: str, *outcomes: tuple[Outcome, str]) -> list[tuple[str, Event]]:
    """Return a `memory` request `r` on running domain `a`, and its outcomes `(outcome, scope)` in order."""
    config = {"memory": 2**30, "max_memory": 2**31}
    return [
        ("a", DomainDefined(domain="a", uuid="a", guest_type="pv", config=config, capabilities={})),
        ("a", DomainStarted(config=config)),
        ("a", change_event("memory", Outcome.REQUESTED)(
            request_id="r", property="memory", value=2**29, scope=scope, principal="p")),
        *(("a", change_event("memory", outcome)(request_id="r", property="memory", scope=where,
                                                requested=2**29, value=2**29)) for outcome, where in outcomes),
    ]


@SETTINGS
@given(any_logs(), st.integers(1, 3) | st.integers(1, 40), st.sets(st.integers(0, 40)))
# Live applied after the persistent scope was refused: the drift's cause is the refusal.
@example(records=recorded(_request("both", (Outcome.REFUSED, "persistent"), (Outcome.APPLIED, "live"))),
         size=1, via_record=set())
# Persistent applied first while the live outcome is awaited, or not: in flight, or requires restart.
@example(records=recorded(_request("both", (Outcome.APPLIED, "persistent"))), size=1, via_record=set())
@example(records=recorded(_request("persistent", (Outcome.APPLIED, "persistent"))), size=1, via_record=set())
def test_rebuild_fold_equals_the_model_on_any_log(
    records: list[RecordedEvent], size: int, via_record: set[int],
) -> None:
    """On logs with change events in any order and outcome, the rebuild's fold gives the model's rows, and its states after every chunk."""
    rows = [_stored(r) for r in records]
    assert _folded(lambda: _replayed(rows, size, via_record)) == _folded(lambda: _modelled(records, size))


def test_rebuild_fold_leaves_the_collector_as_it_found_it() -> None:
    """A fold that fails midway leaves the cyclic garbage collector running, or paused if its caller had paused it."""
    rows = [_stored(r) for r in recorded(_request("both", (Outcome.APPLIED, "persistent")))]
    rows = rows[:3] + [(4, "b", 1, *rows[3][3:])]  # an outcome on a stream never defined
    seen = []
    try:
        for running in (True, False):
            (gc.enable if running else gc.disable)()
            with pytest.raises(ValueError, match="at position 4 precedes DomainDefined"):
                Replay().fold(rows)
            seen.append(gc.isenabled())
    finally:
        gc.enable()
    assert seen == [True, False]


def test_rebuild_rows_write_float_values_as_json_does() -> None:
    """A fold whose config holds a float (which orjson would write as 1e-7) gets the state's rows, text for text."""
    state = DomainState(uuid="u", name="web", guest_type="pv", running=True, capabilities={"balloon": 0.5},
                        persistent={"memory": Slot(value=1e-07, position=1)}, live={"memory": Slot(value=2, position=2)},
                        marks={"memory": Mark(cause="external", request_id=None, position=2, at=BASE)})
    rows = domain_rows(DomainFold(state))
    assert (rows, rows["drift"][0][2], json.loads(rows["domains"][0][-1])["capabilities"]) == (
        Model(states={"u": state}).domain_rows("u"), "1e-07", {"balloon": 0.5})


_ANY_TEXT = st.text(st.characters(codec=None, categories=None, exclude_categories=()), max_size=6)
#: JSON values without floats: what history records and snapshots hold, lone surrogates and huge integers too.
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(2**63, 2**70) | _ANY_TEXT,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_ANY_TEXT, kids, max_size=3),
    max_leaves=8,
)


@SETTINGS
@given(_JSON_VALUES)
def test_fast_json_is_codec_json(value: Any) -> None:
    """The projections' quick JSON writers (orjson where installed) write any value but floats as `codec.dumps` does."""
    assert (dumps_plain(value), dumps_value(value)) == (dumps(value), dumps(value))


#: What a projection row's cell may hold once changed behind the ledger's back: floats, bytes, huge integers too.
_CELLS = (st.none() | st.booleans() | st.integers() | st.integers(2**63, 2**70) | st.floats() | st.binary(max_size=2)
          | _ANY_TEXT)


def _digest_by_json(rows: dict[str, list[tuple]]) -> tuple[Any, ...]:
    """Return the SHA-256 of the `json` text of the rows in table order, or the type of what writing it raises."""
    try:
        text = json.dumps([[t, rows.get(t, [])] for t in TABLES], sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)
        return ("gave", hashlib.sha256(text.encode()).hexdigest())
    except (TypeError, ValueError) as e:
        return ("raised", type(e))


@settings(database=None, deadline=None, max_examples=300)
@given(st.dictionaries(st.sampled_from(sorted(TABLES)), st.lists(st.tuples(_CELLS, _CELLS, _CELLS), max_size=3)))
@example({"live": [("a", "memory", 1e-07)]})  # orjson writes 1e-7, json 1e-07
@example({"drift": [("a", float("nan"), None)]})  # orjson writes null, json NaN
def test_a_digest_is_of_the_json_text_of_the_rows(rows: dict[str, list[tuple]]) -> None:
    """`verify.digest` (orjson where it writes the same) is the SHA-256 of the rows' `json` text, whatever they hold; so checkpoints stay valid."""
    try:
        got: tuple[Any, ...] = ("gave", verify_module.digest(rows))
    except (TypeError, ValueError) as e:
        got = ("raised", type(e))
    assert got == _digest_by_json(rows)


async def _stored_rows(records: list[RecordedEvent]) -> Any:
    for rec in records:
        yield (*_stored(rec), "a hash")


@SETTINGS
@given(any_logs(), st.integers(1, 3) | st.integers(1, 40), st.integers(1, 3) | st.just(verify_module.PAGE))
def test_verify_expects_the_model_s_rows_of_any_log(records: list[RecordedEvent], chunk: int, page: int) -> None:
    """The rows verify expects (the rebuild's fold, written to a scratch file, read a domain at a time) are the model's, or its error.

    Read in pages of a few rows too, so that a domain's rows span pages: each
    domain comes once, in order, with its own rows.
    """
    async def expected() -> dict[str, list[tuple]]:
        rows: dict[str, list[tuple]] = {table: [] for table in TABLES}
        seen: list[str] = []
        async with folded_rows(_stored_rows(records), chunk) as fetch_all:
            async for uuid, group in domain_groups(fetch_all):
                seen.append(uuid)
                for table, part in group.items():
                    column = TABLES[table][0].index("uuid" if table == "domains" else "domain")
                    assert {row[column] for row in part} <= {uuid}
                    rows[table].extend(part)
            days = await fetch_all(OUTCOME_DAYS_ROWS)
        assert seen == sorted(set(seen))
        return {**{table: sorted(part, key=lambda row: row[:TABLES[table][1]]) for table, part in rows.items()},
                "outcome_days": days}

    def replayed() -> tuple[Any, ...]:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(verify_module, "PAGE", page)
            return (asyncio.run(expected()),)

    def modelled() -> tuple[Any, ...]:
        model = Model()
        model.feed_all(records)
        return (_with_days(model.all_rows()),)

    assert _folded(replayed) == _folded(modelled)
