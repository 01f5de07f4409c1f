"""Queries over the projection tables, and the same queries as of a log position.

Every query has two sources that produce identical rows: the stored tables
(now) and a `Model` folded up to a position (time travel).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, Awaitable, Callable, Iterable

from vmledger.eventstore.codec import loads_stored
from vmledger.eventstore.errors import UnknownDomainError
from vmledger.eventstore.log import timestamp
from vmledger.eventstore.state import DomainState
from vmledger.projections.model import KEPT_EPISODES, TABLES, Model, history_from_row, state_from_json

__all__ = ["Reader", "find_domain", "domains_named", "drift_rows", "history_records", "history_count", "history_record",
           "domain_view", "list_domains", "fleet_rows", "power_state", "outcome_counts", "episode_rows"]

Reader = Callable[..., Awaitable[list[tuple[Any, ...]]]]


async def find_domain(fetch_all: Reader, name: str) -> DomainState:
    """Return the state of the defined domain called `name`.

    Raises:
        UnknownDomainError: no defined domain has that name.
    """
    rows = await fetch_all("SELECT state FROM domains WHERE name = ? AND defined = 1", (name,))
    if not rows:
        raise UnknownDomainError(f"unknown domain {name!r}")
    return state_from_json(rows[0][0])


async def domains_named(fetch_all: Reader, name: str) -> list[str]:
    """Return the uuids of every domain that bore `name`, defined now or undefined, oldest first.

    Raises:
        UnknownDomainError: no domain ever had that name.
    """
    rows = await fetch_all("SELECT uuid FROM domains WHERE name = ? ORDER BY position", (name,))
    if not rows:
        raise UnknownDomainError(f"unknown domain {name!r}")
    return [r[0] for r in rows]


async def list_domains(fetch_all: Reader) -> list[DomainState]:
    """Return the states of every defined domain, by name."""
    rows = await fetch_all("SELECT state FROM domains WHERE defined = 1 ORDER BY name")
    return [state_from_json(r[0]) for r in rows]


def _drift_dict(row: tuple, names: dict[str, str]) -> dict[str, Any]:
    cols = TABLES["drift"][0]
    d = dict(zip(cols, row))
    return {
        "domain": names[d["domain"]], "property": d["property"],
        "persistent": loads_stored(d["persistent"], "drift row"), "live": loads_stored(d["live"], "drift row"),
        "cause": d["cause"], "request_id": d["request_id"],
        "since_position": d["since_position"], "since": d["since"],
    }


async def drift_rows(fetch_all: Reader, uuid: str | None = None) -> list[dict[str, Any]]:
    """Return the stored drift of every running domain, or of one, by domain and property."""
    cols = ", ".join(f"d.{c}" for c in TABLES["drift"][0])
    sql = f"SELECT {cols}, m.name FROM drift d JOIN domains m ON m.uuid = d.domain"
    params: tuple = ()
    if uuid is not None:
        sql, params = sql + " WHERE d.domain = ?", (uuid,)
    rows = await fetch_all(sql + " ORDER BY m.name, d.property", params)
    return [_drift_dict(r[:-1], {r[0]: r[-1]}) for r in rows]


def model_drift(model: Model, uuid: str | None = None) -> list[dict[str, Any]]:
    """Return the drift of a model (time travel), in the order of `drift_rows`."""
    names = {u: s.name for u, s in model.states.items()}
    out = []
    for u, s in sorted(model.states.items(), key=lambda kv: (kv[1].name, kv[0])):
        if uuid is None or u == uuid:
            out.extend(_drift_dict(r, names) for r in model.domain_rows(u)["drift"])
    return out


def history_record(row: tuple) -> dict[str, Any]:
    """Return the history record of a request, as the API answers it, from its history row."""
    return _history_dict(history_from_row(row))


def _history_dict(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_id": record["request_id"], "domain": record["domain_name"],
        "property": record["property"], "requested": record["requested"],
        "scope": record["scope"], "principal": record["principal"], "reason": record["reason"],
        "requested_at": record["requested_at"], "completed_at": record["completed_at"],
        "position": record["position"], "outcomes": record["outcomes"],
    }


async def history_records(
    fetch_all: Reader,
    *,
    uuids: list[str] | None = None,
    prop: str | None = None,
    principal: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    request_id: str | None = None,
    outcome: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    newest: bool = False,
) -> list[dict[str, Any]]:
    """Return requests with their outcomes, oldest first (or `newest` first), filtered: `limit` from the `offset`th.

    `since` and `until` (both included; naive: UTC) compare with the stored
    times as text (`eventstore.log.timestamp`) in the query, which finds a
    period's rows by the `history_requested` index where that is shorter;
    `outcome` keeps the requests with that status in a scope.
    """
    where, params = _history_where(uuids, prop, principal, since, until, request_id, outcome)
    page = ""
    if limit is not None or offset:  # an OFFSET needs a LIMIT in SQLite; 2**62 stands for none
        page = " LIMIT ? OFFSET ?"
        params += [2**62 if limit is None else limit, offset]
    order = " DESC" if newest else ""
    rows = await fetch_all(
        f"SELECT {', '.join(TABLES['history'][0])} FROM history{where} ORDER BY position{order}{page}", tuple(params))
    return [history_record(r) for r in rows]


async def history_count(fetch_all: Reader, **filters: Any) -> int:
    """Return how many requests `history_records` gives with the same filters, and no page."""
    where, params = _history_where(**filters)
    return int((await fetch_all(f"SELECT count(*) FROM history{where}", tuple(params)))[0][0])


#: A history row with an outcome of the status `?` in a scope.
_WITH_STATUS = "EXISTS (SELECT 1 FROM json_each(outcomes) o WHERE json_extract(o.value, '$.status') = ?)"


def _history_where(uuids: list[str] | None = None, prop: str | None = None, principal: str | None = None,
                   since: datetime | None = None, until: datetime | None = None, request_id: str | None = None,
                   outcome: str | None = None) -> tuple[str, list[Any]]:
    """Return the WHERE clause of the history's filters (or ''), and its parameters."""
    where, params = [], []
    if uuids is not None:
        where.append(f"domain IN ({', '.join('?' * len(uuids))})")
        params.extend(uuids)
    for condition, value in (("property = ?", prop), ("principal = ?", principal), ("request_id = ?", request_id),
                             ("requested_at >= ?", None if since is None else timestamp(since)),
                             ("requested_at <= ?", None if until is None else timestamp(until)),
                             (_WITH_STATUS, outcome)):
        if value is not None:
            where.append(condition)
            params.append(value)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def power_state(running: bool) -> str:
    """Return the power state a domain view shows."""
    return "running" if running else "shut off"


async def fleet_rows(fetch_all: Reader) -> list[tuple[str, str, str, int, tuple[str, Any, str, str] | None]]:
    """Return every defined domain, by name: uuid, name, power state, drifting properties, and its latest
    request as (property, requested value, principal, requested_at text), or None.

    One statement and no domain state decoded: the fleet of a large ledger costs one index probe a domain.
    """
    rows = await fetch_all(
        "SELECT m.uuid, m.name, m.running, (SELECT COUNT(*) FROM drift d WHERE d.domain = m.uuid), "
        "h.property, h.requested, h.principal, h.requested_at "
        "FROM domains m LEFT JOIN history h ON h.domain = m.uuid AND h.position = "
        "(SELECT MAX(position) FROM history WHERE domain = m.uuid) WHERE m.defined = 1 ORDER BY m.name")
    return [(r[0], r[1], power_state(bool(r[2])), int(r[3]),
             (r[4], loads_stored(r[5], "history row"), r[6], r[7]) if r[4] is not None else None) for r in rows]


def filter_time(records: Iterable[dict[str, Any]], since: datetime | None,
                until: datetime | None) -> list[dict[str, Any]]:
    """Keep the records requested within `[since, until]` (naive: UTC), as `history_records` keeps them."""
    first, last = (None if t is None else timestamp(t) for t in (since, until))
    return [r for r in records
            if (first is None or r["requested_at"] >= first) and (last is None or r["requested_at"] <= last)]


def domain_view(state: DomainState) -> dict[str, Any]:
    """Return both configs of a domain side by side, with capabilities, trays and drift."""
    drift = {prop: m.cause for prop, _, _, m in state.drifting()}
    props = sorted(set(state.persistent) | set(state.live))
    return {
        "domain": state.name, "uuid": state.uuid, "guest_type": state.guest_type,
        "defined": state.defined, "power_state": power_state(state.running),
        "position": state.position,
        "properties": [
            {"property": p,
             "persistent": state.persistent[p].value if p in state.persistent else None,
             "live": state.live[p].value if p in state.live else None,
             "drift": drift.get(p)}
            for p in props
        ],
        "capabilities": dict(sorted(state.capabilities.items())),
        "locked_trays": sorted(state.locked_trays),
        "pending": sorted(state.pending),
    }


async def outcome_counts(fetch_all: Reader, *, since: str | None = None, until: str | None = None,
                         uuids: list[str] | None = None, principal: str | None = None) -> list[tuple]:
    """Return `(principal, property, scope, status, reason, count)` of the outcomes of requests made in a period.

    `since` and `until` are stored times (`eventstore.log.timestamp`), both
    included.  The whole days of the period are summed from `outcome_days`,
    a few rows a day; the requests of the part days at its ends, and of
    `uuids` (the table counts no domain's apart), are counted from the
    `outcomes` of their `history` rows, found by index.  Never from the log.
    """
    if uuids is not None:
        return _tallied(await _counted(fetch_all, since, until, principal, uuids))
    first, last = _whole_days(since, until)
    if first is not None and last is not None and first > last:  # within two days: no whole one
        return _tallied(await _counted(fetch_all, since, until, principal))
    where, params = [], []
    for condition, value in (("day >= ?", first), ("day <= ?", last), ("principal = ?", principal)):
        if value is not None:
            where.append(condition)
            params.append(value)
    rows = await fetch_all(
        "SELECT principal, property, scope, status, reason, CAST(sum(count) AS BIGINT) FROM outcome_days"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " GROUP BY principal, property, scope, status, reason", tuple(params))
    found = [(*r[:4], r[4] or None, r[5]) for r in rows]
    if first is not None and since is not None and since < _DAY_STARTS.format(first):
        found += await _counted(fetch_all, since, None, principal, before=_DAY_STARTS.format(first))
    if last is not None and until is not None and until > _DAY_ENDS.format(last):
        found += await _counted(fetch_all, None, until, principal, after=_DAY_ENDS.format(last))
    return _tallied(found)


#: The stored times (`eventstore.log.timestamp`) at which a day, `YYYY-MM-DD`, starts and ends.
_DAY_STARTS, _DAY_ENDS = "{}T00:00:00.000000+00:00", "{}T23:59:59.999999+00:00"


def _whole_days(since: str | None, until: str | None) -> tuple[str | None, str | None]:
    """Return the first and the last day that lie whole within `[since, until]` (None: no bound on that side)."""
    first = last = None
    # Days compare as text, as they are stored; past the calendar's ends, a text beyond every day stands for the day.
    if since is not None:
        first = since[:10]
        if since > _DAY_STARTS.format(first):
            try:
                first = (date.fromisoformat(first) + timedelta(days=1)).isoformat()
            except OverflowError:
                first = "9999-99-99"
    if until is not None:
        last = until[:10]
        if until < _DAY_ENDS.format(last):
            try:
                last = (date.fromisoformat(last) - timedelta(days=1)).isoformat()
            except OverflowError:
                last = "0000-00-00"
    return first, last


async def _counted(fetch_all: Reader, since: str | None, until: str | None, principal: str | None,
                   uuids: list[str] | None = None, *, before: str | None = None,
                   after: str | None = None) -> list[tuple]:
    """Return the counts of the outcomes of requests made within `[since, until]`, `before` and `after` excluded."""
    where: list[str] = []
    params: list[Any] = []
    for condition, value in (("h.requested_at >= ?", since), ("h.requested_at <= ?", until),
                             ("h.requested_at < ?", before), ("h.requested_at > ?", after),
                             ("h.principal = ?", principal)):
        if value is not None:
            where.append(condition)
            params.append(value)
    if uuids is not None:
        where.append(f"h.domain IN ({', '.join('?' * len(uuids))})")
        params.extend(uuids)
    # Each scope's outcome, as `model.outcome_rows` reads it from the record: its key, status and reason.
    rows = await fetch_all(
        "SELECT principal, property, scope, status, reason, count(*) FROM (SELECT h.principal, h.property, "
        "o.key AS scope, json_extract(o.value, '$.status') AS status, json_extract(o.value, '$.reason') AS reason "
        "FROM history h, json_each(h.outcomes) o" + (" WHERE " + " AND ".join(where) if where else "")
        + ") AS o GROUP BY principal, property, scope, status, reason", tuple(params))
    return [tuple(r) for r in rows]


def _tallied(rows: Iterable[tuple]) -> list[tuple]:
    """Return counts summed by their first five columns, by them (None first), the zero sums left out."""
    summed: dict[tuple, int] = {}
    for *key, count in rows:
        summed[tuple(key)] = summed.get(tuple(key), 0) + count
    return sorted(((*key, n) for key, n in summed.items() if n),
                  key=lambda r: tuple("" if v is None else v for v in r[:5]))


async def episode_rows(fetch_all: Reader, *, since: str | None = None, until: str | None = None,
                       uuids: list[str] | None = None, principal: str | None = None) -> list[tuple]:
    """Return the rows of the drift episodes that overlap a period, by start, with the domain's name for its uuid.

    `since` and `until` are stored times: an episode overlaps when it began
    at or before `until` and had not ended before `since`.  With
    `principal`, only episodes whose request that principal made.  An
    episode that ended while its cause was still `in_flight` is left out: it
    is the time between one request's two outcomes, a request being carried
    out (one per request in both scopes), not a difference that stayed.
    """
    cols = TABLES["episodes"][0]
    # Written as the index `episodes_kept` says it, so that SQLite reads that index.
    where, params = [KEPT_EPISODES], []
    if until is not None:
        where.append("e.since <= ?")
        params.append(until)
    if since is not None:
        where.append("(e.ended IS NULL OR e.ended >= ?)")
        params.append(since)
    if uuids is not None:
        where.append(f"e.domain IN ({', '.join('?' * len(uuids))})")
        params.extend(uuids)
    join = ""
    if principal is not None:
        join = " JOIN history h ON h.request_id = e.request_id"
        where.append("h.principal = ?")
        params.append(principal)
    rows = await fetch_all(
        f"SELECT {', '.join('e.' + c for c in cols)}, m.name FROM episodes e JOIN domains m ON m.uuid = e.domain{join}"
        + " WHERE " + " AND ".join(where) + " ORDER BY e.since_position, e.domain, e.property", tuple(params))
    return [(r[-1], *r[1:-1]) for r in rows]
