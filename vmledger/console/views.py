"""What each console page shows, read now or as of a log position, through the ledger's own queries.

Now, a page reads the projection tables as the JSON API does (the `Ledger`'s
methods and `projections.queries`).  As of a position, it reads a `Model`
folded up to that position (`Ledger.model_at`), the same source the API's
`as_of` drift answers from.  Nothing here decides a value: the fold does.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, NamedTuple

import attrs

from vmledger import _units
from vmledger._wire import event_json
from vmledger.eventstore.catalogue import lookup
from vmledger.eventstore.errors import InvalidRequestError, UnknownDomainError
from vmledger.eventstore.events import LiveValueObserved, PersistentValueObserved
from vmledger.eventstore.state import DomainState, apply
from vmledger.projections import queries
from vmledger.projections.model import TABLES, Model
from vmledger.results import DomainView, DriftRow, RequestRecord

__all__ = ["Moment", "FleetRow", "LastChange", "Timeline", "moment", "fleet", "fleet_row", "domain", "history",
           "history_page", "page_of", "drift", "timeline", "chart", "latest_events", "OUTCOMES", "CAUSES"]

#: The outcome words a history filter accepts.
OUTCOMES = ("applied", "partial", "refused", "failed", "in_flight")
#: The drift causes a drift filter accepts.
CAUSES = ("partial", "refused", "failed", "requires_restart", "persistent_only", "live_only", "external", "in_flight")


@attrs.frozen(kw_only=True)
class Moment:
    """Where a page looks: now (`model` None), or as of `position` with the model folded up to it."""

    position: int
    model: Model | None = attrs.field(default=None, eq=False)
    #: The as-of text as given, kept in every link of the page; empty for now.
    as_of: str = ""

    @property
    def now(self) -> bool:
        """Tell whether the page shows the present."""
        return self.model is None


async def moment(ledger: Any, as_of: str | None) -> Moment:
    """Return the moment an as-of text names (a position or an ISO time), or now when it is empty.

    Raises:
        InvalidRequestError: text that is neither, or a position past the head.
    """
    text = (as_of or "").strip()
    if not text:
        return Moment(position=await ledger.log.head())
    position = await ledger.position_of(_units.parse_as_of(text))
    return Moment(position=position, model=await ledger.model_at(position), as_of=text)


class LastChange(NamedTuple):
    """A domain's latest request, as the fleet shows it."""

    property: str
    requested: Any
    principal: str
    requested_at: str


class FleetRow(NamedTuple):
    """One domain of the fleet: its power state, how many properties drift, its latest request (None if none)."""

    uuid: str
    domain: str
    power_state: str
    drifting: int
    last: LastChange | None


#: Where each column sits in a history record as the fold keeps it (`projections.model`).
_AT = {column: i for i, column in enumerate(TABLES["history"][0])}


def _last(record: list[Any] | None) -> LastChange | None:
    """Return the last change of a history record as the fold keeps it."""
    if record is None:
        return None
    return LastChange(*(record[_AT[c]] for c in ("property", "requested", "principal", "requested_at")))


async def fleet(ledger: Any, at: Moment) -> list[FleetRow]:
    """Return every defined domain, by name, with its drift count and latest request."""
    if at.model is None:
        return [FleetRow(u, n, p, d, None if last is None else LastChange(*last))
                for u, n, p, d, last in await queries.fleet_rows(ledger.log.fetch_all)]
    latest: dict[str, list[Any]] = {}
    for record in at.model.history.values():
        uuid, position = record[_AT["domain"]], record[_AT["position"]]
        if uuid not in latest or latest[uuid][_AT["position"]] < position:
            latest[uuid] = record
    states = sorted((s for s in at.model.states.values() if s.defined), key=lambda s: s.name)
    return [FleetRow(s.uuid, s.name, queries.power_state(s.running), len(s.drifting()), _last(latest.get(s.uuid)))
            for s in states]


async def fleet_row(ledger: Any, name: str) -> FleetRow:
    """Return the fleet row of one domain, now.

    Raises:
        UnknownDomainError: no such domain.
    """
    view = await ledger.show(name)
    records = await queries.history_records(ledger.log.fetch_all, **await ledger.history_filters(name), limit=1,
                                            newest=True)
    last = records[0] if records else None
    return FleetRow(view.uuid, view.domain, view.power_state, sum(1 for p in view.properties if p.drift is not None),
                    None if last is None else LastChange(last["property"], last["requested"], last["principal"],
                                                         last["requested_at"]))


def _state_at(model: Model, name: str) -> DomainState:
    for state in model.states.values():
        if state.name == name and state.defined:
            return state
    raise UnknownDomainError(f"unknown domain {name!r} at that point")


async def domain(ledger: Any, at: Moment, name: str) -> tuple[DomainView, list[DriftRow]]:
    """Return a domain's view and its drift rows (cause, request, since).

    Raises:
        UnknownDomainError: no such domain at that moment.
    """
    if at.model is None:
        return await ledger.show(name), await ledger.drift(name)
    state = _state_at(at.model, name)
    return (DomainView.from_dict(queries.domain_view(state)),
            [DriftRow.from_dict(d) for d in queries.model_drift(at.model, state.uuid)])


async def history(ledger: Any, at: Moment, *, name: str | None = None, prop: str | None = None,
                  principal: str | None = None, outcome: str | None = None, since: datetime | None = None,
                  until: datetime | None = None) -> list[RequestRecord]:
    """Return the requests with their outcomes, oldest first, filtered as asked.

    Raises:
        UnknownDomainError, UnknownPropertyError, InvalidRequestError: as `Ledger.history`; an unknown outcome.
    """
    if outcome is not None and outcome not in OUTCOMES:
        raise InvalidRequestError(f"invalid outcome {outcome!r} (use {', '.join(OUTCOMES)})")
    if at.model is None:
        records = await ledger.history(name, prop, principal=principal, since=since, until=until)
    else:
        if prop is not None:
            lookup(prop)
        uuids = {u for u, s in at.model.states.items() if s.name == name} if name is not None else None
        if uuids == set():
            raise UnknownDomainError(f"unknown domain {name!r} at that point")
        wanted = {"domain": uuids, "property": None if prop is None else {prop},
                  "principal": None if principal is None else {principal}}
        dicts = sorted((queries.history_record(at.model.history_row(rid)) for rid, r in at.model.history.items()
                        if all(values is None or r[_AT[column]] in values for column, values in wanted.items())),
                       key=lambda d: d["position"])
        records = [RequestRecord.from_dict(d) for d in queries.filter_time(dicts, since, until)]
    if outcome is None:
        return records
    return [r for r in records if any(o.status == outcome for o in r.outcomes.values())]


async def history_page(ledger: Any, at: Moment, page_text: str | None, size: int, *, name: str | None = None,
                       prop: str | None = None, principal: str | None = None, outcome: str | None = None,
                       since: datetime | None = None, until: datetime | None = None
                       ) -> tuple[list[RequestRecord], int, int]:
    """Return a page of the requests `history` gives, newest first, `size` a page, with its number and the pages.

    Now, the requests are counted and the page alone is read, so that a
    page of a long history costs what one of a short history does; as of a
    position, the model holds them all.

    Raises:
        UnknownDomainError, UnknownPropertyError, InvalidRequestError: as `history`; a page that is no whole number.
    """
    if at.model is not None:
        records = (await history(ledger, at, name=name, prop=prop, principal=principal, outcome=outcome,
                                 since=since, until=until))[::-1]
        page, pages = page_of(len(records), page_text, size)
        return records[(page - 1) * size:page * size], page, pages
    if outcome is not None and outcome not in OUTCOMES:
        raise InvalidRequestError(f"invalid outcome {outcome!r} (use {', '.join(OUTCOMES)})")
    filters = {**await ledger.history_filters(name, prop, principal=principal, since=since, until=until),
               "outcome": outcome}
    count = await queries.history_count(ledger.log.fetch_all, **filters)
    page, pages = page_of(count, page_text, size)
    # The page's requests, oldest first: from the (count - page * size)th of the history on.
    first = max(0, count - page * size)
    rows = await queries.history_records(ledger.log.fetch_all, **filters, limit=count - (page - 1) * size - first,
                                         offset=first)
    return [RequestRecord.from_dict(r) for r in reversed(rows)], page, pages


def page_of(count: int, page_text: str | None, size: int) -> tuple[int, int]:
    """Return the page a query asks for (`page_text`, 1 if none), within the pages of `count` rows, and the pages.

    Raises:
        InvalidRequestError: a page that is not a whole number.
    """
    pages = max(1, math.ceil(count / size))
    page = _units.parse_count(page_text, "page") if page_text else 1
    return min(max(page, 1), pages), pages


async def drift(ledger: Any, at: Moment, cause: str | None = None) -> list[DriftRow]:
    """Return every drift row of the fleet, by domain and property, of one cause if asked.

    Raises:
        InvalidRequestError: an unknown cause.
    """
    if cause is not None and cause not in CAUSES:
        raise InvalidRequestError(f"invalid cause {cause!r} (use {', '.join(CAUSES)})")
    rows = await ledger.drift(as_of=None if at.model is None else at.position)
    return [r for r in rows if cause is None or r.cause == cause]


class Timeline(NamedTuple):
    """One property of one domain over time.

    `values` holds (time, persistent, live) after each event that moved
    either; `requests` each request with its outcome per scope; `observed`
    each out-of-band observation as (time, scope, value).
    """

    values: list[tuple[datetime, Any, Any]]
    requests: list[RequestRecord]
    observed: list[tuple[datetime, str, Any]]


async def timeline(ledger: Any, at: Moment, name: str, prop: str) -> Timeline:
    """Return the timeline of `prop` of domain `name`: its stream folded event by event, up to the moment.

    Raises:
        UnknownDomainError, UnknownPropertyError: no such domain or property.
    """
    lookup(prop)
    view, _ = await domain(ledger, at, name)
    state: DomainState | None = None
    values: list[tuple[datetime, Any, Any]] = []
    observed: list[tuple[datetime, str, Any]] = []
    for rec in await ledger.log.read_stream(view.uuid, to_position=at.position):
        state = apply(state, rec)
        persistent, live = state.persistent.get(prop), state.live.get(prop) if state.running else None
        point = (rec.recorded_at, persistent.value if persistent else None, live.value if live else None)
        if not values or values[-1][1:] != point[1:]:
            values.append(point)
        e = rec.event
        if isinstance(e, (LiveValueObserved, PersistentValueObserved)) and e.property == prop:
            observed.append((rec.recorded_at, "live" if isinstance(e, LiveValueObserved) else "persistent", e.value))
    return Timeline(values=values, requests=await history(ledger, at, name=name, prop=prop), observed=observed)


async def latest_events(ledger: Any, at: Moment, limit: int) -> list[dict[str, Any]]:
    """Return the last `limit` events up to the moment, newest first, as the API's event JSON."""
    page = [event_json(rec) async for rec in ledger.events(from_position=max(0, at.position - limit),
                                                           to_position=at.position)]
    return page[::-1]


#: The properties a timeline can chart: those with a number for a value.
_NUMERIC = ("bytes", "count")


def chart(timeline: Timeline, prop: str) -> dict[str, Any] | None:
    """Return a timeline as a chart's aligned series, or None when the property's values are not numbers.

    `x` holds every time that matters (seconds since the epoch, ascending, once each); `persistent` and
    `live` the values in force at each (MiB for sizes), held from the last change; each outcome's
    series, and `observed`, a point where a request of that outcome or an observation happened.
    """
    entry = lookup(prop)
    if entry.type not in _NUMERIC:
        return None
    scale = 2**20 if entry.type == "bytes" else 1

    def y(v: Any) -> float | None:
        return None if not isinstance(v, int) else v / scale

    marks: list[tuple[float, str, float | None]] = [(t.timestamp(), "observed", y(v)) for t, _, v in timeline.observed]
    for r in timeline.requests:
        worst = max((o.status for o in r.outcomes.values()), key=OUTCOMES.index, default="in_flight")
        marks.append((r.requested_at.timestamp(), worst, y(r.requested)))
    steps = [(t.timestamp(), y(p), y(live)) for t, p, live in timeline.values]
    xs = sorted({x for x, *_ in steps} | {x for x, _, _ in marks})
    series: dict[str, list[float | None]] = {k: [] for k in ("persistent", "live", *OUTCOMES, "observed")}
    i, held = 0, (None, None)
    for x in xs:
        while i < len(steps) and steps[i][0] <= x:
            held = steps[i][1:]
            i += 1
        series["persistent"].append(held[0])
        series["live"].append(held[1])
        for key in (*OUTCOMES, "observed"):
            series[key].append(next((v for mx, k, v in marks if mx == x and k == key), None))
    return {"x": xs, "series": series, "unit": "MiB" if scale > 1 else entry.name}
