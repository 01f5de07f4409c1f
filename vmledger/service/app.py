"""The HTTP API of one `Ledger`: a Litestar application, its guards, errors and event stream.

Every route under `/v1/` calls one `Ledger` method.  The principal of
every write is the name of the bearer token that made it, never a field of
the request.  Errors are RFC 9457 problem documents carrying the ledger's
reason code (`vmledger._wire.ERROR_CODES`); a caller error writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from datetime import datetime
from typing import Annotated, Any, AsyncIterator, Callable, Optional

from litestar import Litestar, Request, Response, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, Example, SecurityScheme
from litestar.params import Body, FromPath, FromQuery, HeaderParameter, JSONBody, PathParameter, QueryParameter
from litestar.response import Stream

import vmledger
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.eventstore.catalogue import check_name
from vmledger.eventstore.errors import ConcurrencyError, InvalidRequestError, UnknownDomainError, VmledgerError
from vmledger import _units
from vmledger.projections import queries
from vmledger._checkpoint import Checkpoint
from vmledger._wire import (
    REPLAYED_HEADER, ForbiddenError, PreconditionFailedError, UnauthorizedError, event_json, plain, problem_of, segment,
)
from vmledger.service.metrics import Metrics
from vmledger.service.schema import (
    AdoptBody,
    AuditReport,
    ConfigDiff,
    RevertBody,
    RevertReport,
    DefineBody,
    DomainView,
    DriftRow,
    EventRecord,
    Health,
    NewToken,
    Position,
    Problem,
    PropertyValue,
    RequestRecord,
    SetBody,
    SimBody,
    TokenBody,
    TokenInfo,
    VerifyBody,
)
from vmledger.service.tokens import Role, TokenStore

__all__ = ["Service", "create_app", "stream_response", "PROBLEM_JSON", "MAX_BODY", "MAX_IMPORT_BODY"]

_log = logging.getLogger("vmledger")

PROBLEM_JSON = "application/problem+json"
NDJSON = "application/x-ndjson"
#: Where a request's record is read, by id (`Location` of a `set`).
_REQUESTS = "/v1/requests/"
#: The largest JSON request body; an import may be larger.
MAX_BODY = 1 << 20
MAX_IMPORT_BODY = 1 << 30
HEARTBEAT_SECONDS = 15.0
_PAGE = 100
_MAX_PAGE = 1000


class Service:
    """What the handlers share: the ledger, its tokens, the metrics, and the shutdown signal."""

    def __init__(self, ledger: Any, tokens: TokenStore, *, metrics: Metrics | None = None,
                 heartbeat: float = HEARTBEAT_SECONDS, root_path: str = "") -> None:
        self.ledger = ledger
        #: The path prefix the service answers under (`--root-path`), without a trailing slash.
        self.root_path = root_path
        self.tokens = tokens
        self.metrics = metrics or Metrics()
        self.heartbeat = heartbeat
        self.closing = asyncio.Event()

    @property
    def simulator(self) -> SimulatedHypervisor | None:
        hv = self.ledger.hypervisor
        return hv if isinstance(hv, SimulatedHypervisor) else None


def _svc(request: ASGIConnection) -> Service:
    return request.app.state["service"]


def principal(request: ASGIConnection) -> str:
    """Return the name of the token the request was authenticated with."""
    return request.scope["vmledger"]["principal"]


# Authentication.


async def authenticate(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Admit a request whose bearer token is valid and whose role allows the route; record its principal.

    Raises:
        UnauthorizedError: no bearer token, or one that is unknown or revoked.
        ForbiddenError: the token's role is below the route's.
    """
    needed = handler.opt.get("role")
    if needed is None:
        return
    scheme, _, secret = connection.headers.get("authorization", "").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise UnauthorizedError("this needs a bearer token (Authorization: Bearer TOKEN)")
    token = await _svc(connection).tokens.find(secret)
    if token is None:
        raise UnauthorizedError("the bearer token is unknown or revoked")
    connection.scope.setdefault("vmledger", {})["principal"] = token.name
    if not token.role.allows(needed):
        raise ForbiddenError(f"token {token.name!r} has the role {token.role.value}; this needs {needed.value}")


# Errors.


def problem_response(problem: dict[str, Any], headers: dict[str, str] | None = None) -> Response[Any]:
    """Return a problem document as an `application/problem+json` response."""
    if problem["status"] == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="vmledger"'}
    return Response(content=problem, status_code=problem["status"], media_type=PROBLEM_JSON, headers=headers)


def _ledger_error(request: Request, exc: VmledgerError) -> Response[Any]:
    return problem_response(problem_of(exc))


def _http_error(request: Request, exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    detail = exc.detail
    code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
            412: "precondition_failed"}.get(status, "http_error")
    if isinstance(exc, ValidationException) or status == 400:
        status, code = 422, "invalid_request"
        extra = getattr(exc, "extra", None)
        if extra:
            detail = f"{detail}: " + "; ".join(
                f"{e.get('key', '')} {e.get('message', '')}".strip() if isinstance(e, dict) else str(e)
                for e in (extra if isinstance(extra, list) else [extra]))
    headers = dict(exc.headers or {})
    return problem_response({"type": f"urn:vmledger:problem:{code}", "title": code.replace("_", " "),
                             "status": status, "detail": str(detail), "code": code}, headers)


def _internal_error(request: Request, exc: Exception) -> Response[Any]:
    # A bug: its message may hold anything, so the caller learns only that it happened, and the
    # server's log (stderr) the traceback.
    _log.error("internal error answering %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response({"type": "urn:vmledger:problem:internal", "title": "internal error", "status": 500,
                             "detail": f"internal error: {type(exc).__name__}", "code": "internal"})


def _problems(*statuses: int) -> dict[int, ResponseSpec]:
    words = {401: "no valid bearer token", 403: "the token's role does not allow this",
             404: "unknown domain, property, request or token", 409: "a conflict (request id reused, "
             "stream moved, hypervisor refused, ledger damaged)", 412: "the domain moved past If-Match",
             413: "body too large", 422: "invalid request; nothing was written",
             503: "the database failed"}
    return {s: ResponseSpec(data_container=Problem, media_type=PROBLEM_JSON, description=words[s],
                            generate_examples=False)
            for s in (401, 403, 413, 422, *statuses)}


def _opt(role: Role) -> dict[str, Any]:
    return {"role": role}


READ, OPERATE, ADMIN = _opt(Role.READER), _opt(Role.OPERATOR), _opt(Role.ADMIN)
#: Path parameters with examples, so that a client generated from the document (and schemathesis) finds real ones.
DomainName = Annotated[str, PathParameter(description="a domain's name", examples=[Example(value="web")])]
PropertyName = Annotated[str, PathParameter(description="a catalogue property, or media:DEV",
                                            examples=[Example(value="memory"), Example(value="media:hdc")])]
_SECURITY = [{"bearer": []}]


# Domains.


@get("/v1/domains", opt=READ, responses=_problems(), security=_SECURITY, tags=["domains"])
async def list_domains(request: Request) -> list[DomainView]:
    """List the defined domains with both configs."""
    return plain(await _svc(request).ledger.domains())


@post("/v1/domains", opt=OPERATE, responses=_problems(409), security=_SECURITY, tags=["domains"])
async def define_domain(
    request: Request,
    data: Annotated[DefineBody, Body(examples=[Example(summary="a paravirtual guest with a CD-ROM", value={
        "name": "web2", "guest_type": "pv", "memory": 2**30, "max_memory": 2**32, "vcpus": 2, "max_vcpus": 4,
        "cdroms": {"hdc": ""}})])],
) -> Response[DomainView]:
    """Define a domain on the hypervisor and record it."""
    view = await _svc(request).ledger.define(
        data.name, guest_type=data.guest_type, memory=data.memory, max_memory=data.max_memory, vcpus=data.vcpus,
        max_vcpus=data.max_vcpus, numa_nodes=data.numa_nodes, cdroms=data.cdroms, principal=principal(request))
    return Response(plain(view), status_code=201, headers=await _etag(request, data.name))


async def _stream(request: Request, name: str) -> tuple[str, int]:
    """Return a defined domain's stream and its version."""
    rows = await _svc(request).ledger.log.fetch_all(
        "SELECT uuid, version FROM domains WHERE name = ? AND defined = 1", (name,))
    if not rows:
        raise UnknownDomainError(f"unknown domain {name!r}")
    return str(rows[0][0]), int(rows[0][1])


async def _etag(request: Request, name: str) -> dict[str, str]:
    return {"ETag": f'"{(await _stream(request, name))[1]}"'}


@get("/v1/domains/{name:str}", opt=READ, responses=_problems(404), security=_SECURITY, tags=["domains"])
async def show_domain(request: Request, name: DomainName) -> Response[DomainView]:
    """Show both configs of a domain, its capabilities, tray locks and drift; `ETag` is its stream version."""
    view = await _svc(request).ledger.show(name)
    return Response(plain(view), headers=await _etag(request, name))


@delete("/v1/domains/{name:str}", opt=OPERATE, responses=_problems(404, 409), security=_SECURITY,
        tags=["domains"], status_code=204)
async def undefine_domain(request: Request, name: DomainName) -> None:
    """Remove a stopped domain; its history stays."""
    await _svc(request).ledger.undefine(name, principal=principal(request))


@post("/v1/domains/{name:str}/start", opt=OPERATE, responses=_problems(404, 409), security=_SECURITY,
      tags=["domains"], status_code=200)
async def start_domain(request: Request, name: DomainName) -> DomainView:
    """Boot a domain and record the live config the hypervisor reports."""
    return plain(await _svc(request).ledger.start(name, principal=principal(request)))


@post("/v1/domains/{name:str}/stop", opt=OPERATE, responses=_problems(404, 409), security=_SECURITY,
      tags=["domains"], status_code=200)
async def stop_domain(request: Request, name: DomainName) -> DomainView:
    """Shut a domain off."""
    return plain(await _svc(request).ledger.stop(name, principal=principal(request)))


# Requests.


def _expected(if_match: str) -> int | None:
    """Return the version an If-Match header names (None for `*`).

    Raises:
        InvalidRequestError: it names no version.
    """
    tag = if_match.strip().removeprefix("W/").strip('"')
    if tag == "*":
        return None
    if not (tag.isascii() and tag.isdigit() and len(tag) < 19):
        raise InvalidRequestError(f"If-Match must be the domain's ETag (its version), not {if_match!r}")
    return int(tag)


@post("/v1/domains/{name:str}/requests", opt=OPERATE, responses=_problems(404, 409, 412), security=_SECURITY,
      tags=["requests"], status_code=201)
async def set_property(
    request: Request,
    name: DomainName,
    data: Annotated[SetBody, Body(examples=[
        Example(summary="more memory, live and persistent", value={"property": "memory", "value": 2**31}),
        Example(summary="another CD-ROM", value={"property": "media:hdc", "value": "/iso/b.iso", "scope": "live"}),
    ])],
    idempotency_key: Optional[str] = HeaderParameter(name="Idempotency-Key", default=None,
                                               description="the request id: repeating it appends nothing"),
    if_match: Optional[str] = HeaderParameter(name="If-Match", default=None,
                                        description="the domain's stream version (its ETag) the request expects"),
) -> Response[RequestRecord]:
    """Request a property change; the answer is the request with its outcome per scope, also when not applied."""
    svc = _svc(request)
    expected = None if if_match is None else _expected(if_match)
    try:
        answer = await svc.ledger.set(name, data.property, data.value, scope=data.scope, request_id=idempotency_key,
                                      principal=principal(request), reason=data.reason, expected_version=expected)
    except ConcurrencyError as e:
        if expected is None:
            raise
        # The ledger compared the version when it appended: a writer of another process in between is caught.
        raise PreconditionFailedError(e.stream, expected, e.actual) from e
    record = plain(answer)
    for scope, outcome in record["outcomes"].items():
        svc.metrics.outcomes.labels(scope, outcome["status"]).inc()
    headers = {"Location": f"{svc.root_path}{_REQUESTS}{segment(record['request_id'])}"}
    if getattr(answer, "replayed", False):
        headers[REPLAYED_HEADER] = "true"
    return Response(record, status_code=201, headers=headers)


# A path, not a segment: a request id may hold `/`, which `Location` sends as `%2F`.
@get(_REQUESTS + "{request_id:path}", opt=READ, responses=_problems(404), security=_SECURITY, tags=["requests"])
async def show_request(request: Request, request_id: FromPath[str]) -> RequestRecord:
    """Show one request with its outcomes."""
    # The id as sent: the decoded path has lost which slashes were `%2F`, and its `//` are folded.
    _, found, sent = (request.scope.get("raw_path") or b"").partition(_REQUESTS.encode())
    try:
        request_id = urllib.parse.unquote_to_bytes(sent).decode("utf-8") if found else request_id.lstrip("/")
    except UnicodeDecodeError as e:
        raise InvalidRequestError("the request id in the path is not UTF-8 text") from e
    return plain(await _svc(request).ledger.request(request_id))


@get("/v1/domains/{name:str}/properties/{prop:str}", opt=READ, responses=_problems(404), security=_SECURITY,
     tags=["domains"])
async def get_property(request: Request, name: DomainName, prop: PropertyName,
                       in_scope: str = QueryParameter(
                           name="scope", default="current", description="live, persistent or current",
                           schema_extra={"enum": ["live", "persistent", "current"]})) -> PropertyValue:
    """Show one property's value in the live or persistent config (current: live if running)."""
    # The scope is documented as its three values but checked by the ledger, which answers as in process.
    return plain(await _svc(request).ledger.get(name, prop, scope=in_scope))


# Queries.


def _as_of(text: str | None) -> int | datetime | None:
    if text is None:
        return None
    digits = text.strip().isascii() and text.strip().isdigit()
    return _units.parse_position(text) if digits else _units.parse_time(text)


@get("/v1/drift", opt=READ, responses=_problems(404), security=_SECURITY, tags=["queries"])
async def drift(request: Request, domain: FromQuery[Optional[str]] = None,
                as_of: Optional[str] = QueryParameter(name="as_of", default=None,
                                                 description="a log position or an ISO time")) -> list[DriftRow]:
    """List where live differs from persistent, with cause, request and since when; `as_of` travels in time."""
    return plain(await _svc(request).ledger.drift(domain, as_of=_as_of(as_of)))


def _next_link(request: Request, **changes: Any) -> dict[str, str]:
    # Every pair of the query, a repeated parameter (`type`) included, with `changes` replacing theirs.
    query = [(k, v) for k, v in request.query_params.multi_items() if k not in changes]
    query += [(k, str(v)) for k, v in changes.items()]
    return {"Link": f'<{request.url.path}?{urllib.parse.urlencode(query)}>; rel="next"'}


@get("/v1/history", opt=READ, responses=_problems(404), security=_SECURITY, tags=["queries"])
async def history(
    request: Request,
    domain: FromQuery[Optional[str]] = None,
    prop: Optional[str] = QueryParameter(name="property", default=None),
    by: Optional[str] = QueryParameter(name="principal", default=None),
    since: Optional[str] = QueryParameter(default=None, description="ISO time"),
    until: Optional[str] = QueryParameter(default=None, description="ISO time"),
    limit: int = QueryParameter(default=_PAGE, ge=1, le=_MAX_PAGE),
    cursor: int = QueryParameter(default=0, ge=0, le=2**62, description="from the Link rel=next of the previous page"),
) -> Response[list[RequestRecord]]:
    """List requests with their outcomes, oldest first, a page at a time (`Link: rel="next"`)."""
    # One more than the page: whether a next page is there, without counting the rest.
    records = await _svc(request).ledger.history(
        domain, prop, principal=by, since=_units.parse_time(since) if since else None,
        until=_units.parse_time(until) if until else None, limit=limit + 1, offset=cursor)
    more = len(records) > limit
    return Response(plain(records[:limit]), headers=_next_link(request, cursor=cursor + limit) if more else None)


@get("/v1/audit", opt=READ, responses=_problems(404), security=_SECURITY, tags=["queries"])
async def audit(
    request: Request,
    since: Optional[str] = QueryParameter(default=None, description="ISO time: the period's start"),
    until: Optional[str] = QueryParameter(default=None, description="ISO time: the period's end (default: now)"),
    domain: FromQuery[Optional[str]] = None,
    by: Optional[str] = QueryParameter(name="principal", default=None),
) -> AuditReport:
    """Report a period: outcomes per principal, property and scope, the top reasons, drift episodes and time in drift."""
    return plain(await _svc(request).ledger.audit(
        since=_units.parse_time(since) if since else None, until=_units.parse_time(until) if until else None,
        domain=domain, principal=by))


@get("/v1/domains/{name:str}/diff", opt=READ, responses=_problems(404), security=_SECURITY, tags=["queries"])
async def diff(request: Request, name: DomainName,
               start: str = QueryParameter(name="from", description="a log position or an ISO time"),
               end: Optional[str] = QueryParameter(name="to", default=None,
                                                   description="a log position or an ISO time (default: the head)"),
               ) -> ConfigDiff:
    """List every change of a domain's persistent and live configs between two points, with its event and request."""
    return plain(await _svc(request).ledger.diff(name, from_position=_as_of(start), to_position=_as_of(end)))


@post("/v1/domains/{name:str}/revert", opt=OPERATE, responses=_problems(404, 409), security=_SECURITY,
      tags=["requests"], status_code=200)
async def revert(request: Request, name: DomainName, data: JSONBody[RevertBody]) -> RevertReport:
    """Bring a domain's config back to a point with ordinary requests by the token's principal (`dry_run`: plan only)."""
    to = data.to if isinstance(data.to, int) else _as_of(data.to)
    return plain(await _svc(request).ledger.revert(name, to=to, scope=data.scope, dry_run=data.dry_run,
                                                   principal=principal(request)))


@get("/v1/events", opt=READ, responses=_problems(404), security=_SECURITY, tags=["events"])
async def events(
    request: Request,
    start: int = QueryParameter(name="from", default=0, ge=0, le=2**63 - 1, description="after this position"),
    to: Optional[int] = QueryParameter(name="to", default=None, ge=0, le=2**63 - 1, description="up to this position"),
    limit: int = QueryParameter(default=1000, ge=1, le=10000),
    domain: FromQuery[Optional[str]] = None,
    types: Optional[list[str]] = QueryParameter(name="type", default=None,
                                                description="only events of these types (may be repeated)"),
    since: Optional[str] = QueryParameter(default=None, description="ISO time"),
    until: Optional[str] = QueryParameter(default=None, description="ISO time"),
) -> Response[list[EventRecord]]:
    """List recorded events after `from`, in order, filtered as asked, a page at a time (`Link: rel="next"`)."""
    page: list[dict[str, Any]] = []
    iterator = _svc(request).ledger.events(from_position=start, to_position=to, domain=domain, types=types,
                                           since=_units.parse_time(since) if since else None,
                                           until=_units.parse_time(until) if until else None)
    try:
        async for rec in iterator:
            page.append(event_json(rec))
            if len(page) == limit:
                break
    finally:
        await iterator.aclose()
    more = len(page) == limit and (to is None or page[-1]["position"] < to)
    return Response(page, headers=_next_link(request, **{"from": page[-1]["position"]}) if more else None)


@get("/v1/head", opt=READ, responses=_problems(), security=_SECURITY, tags=["events"])
async def head(request: Request) -> Position:
    """Return the position of the last event (0 for an empty log)."""
    return {"position": await _svc(request).ledger.log.head()}


@get("/v1/events/stream", opt=READ, responses=_problems(404), security=_SECURITY, tags=["events"],
     media_type="text/event-stream")
async def event_stream(
    request: Request,
    start: int = QueryParameter(name="from", default=0, ge=0, le=2**63 - 1, description="after this position"),
    last_event_id: Optional[str] = HeaderParameter(name="Last-Event-ID", default=None,
                                             description="resume after this position (wins over from)"),
    domain: FromQuery[Optional[str]] = None,
    types: Optional[list[str]] = QueryParameter(name="type", default=None,
                                                description="only events of these types (may be repeated)"),
    since: Optional[str] = QueryParameter(default=None, description="ISO time"),
) -> Stream:
    """Stream every event after `from` as Server-Sent Events, then follow new ones; `id:` is the position."""
    return await stream_response(_svc(request), start, last_event_id, domain=domain, types=types,
                                 since=_units.parse_time(since) if since else None)


async def stream_response(svc: Service, start: int | str, last_event_id: str | None, *, domain: str | None = None,
                          types: list[str] | None = None, since: datetime | None = None) -> Stream:
    """Return the SSE stream of every event after `start`, or after `last_event_id` when given (the console's too).

    Raises:
        InvalidRequestError: a position that is not one.
    """
    if last_event_id is not None:
        start = last_event_id
    if isinstance(start, str):
        start = _units.parse_position(start)
    subscription = svc.ledger.subscribe(from_position=start, domain=domain, types=types, since=since)
    if domain is not None:  # an unknown domain is a 404 now, not a stream that breaks off
        await queries.domains_named(svc.ledger.log.fetch_all, check_name(domain))
    return Stream(_sse(svc, subscription), media_type="text/event-stream",
                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(svc: Service, subscription: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    """Yield each event as an SSE message, a comment every heartbeat, until the server closes."""
    svc.metrics.subscribers.inc()
    closing = asyncio.ensure_future(svc.closing.wait())
    nxt: asyncio.Future[Any] | None = None
    try:
        yield b": stream open\n\n"
        while not svc.closing.is_set():
            if nxt is None:
                nxt = asyncio.ensure_future(anext(subscription))
            done, _ = await asyncio.wait((nxt, closing), timeout=svc.heartbeat, return_when=asyncio.FIRST_COMPLETED)
            if nxt in done:
                rec = nxt.result()
                nxt = None
                data = json.dumps(event_json(rec), ensure_ascii=False, separators=(",", ":"))
                yield f"id: {rec.position}\nevent: {rec.type}\ndata: {data}\n\n".encode("utf-8")
            elif not done:
                yield b": heartbeat\n\n"
    finally:
        svc.metrics.subscribers.dec()
        closing.cancel()
        if nxt is not None:
            nxt.cancel()
            await asyncio.wait((nxt,))
        await subscription.aclose()


# Observation and adoption.


@post("/v1/observe", opt=OPERATE, responses=_problems(404, 409), security=_SECURITY, tags=["observation"],
      status_code=200)
async def observe(request: Request, domain: FromQuery[Optional[str]] = None) -> list[EventRecord]:
    """Compare the hypervisor with the log and record what differs; resolve abandoned requests."""
    return plain(await _svc(request).ledger.observe(domain, principal=principal(request)))


@post("/v1/adopt", opt=OPERATE, responses=_problems(409), security=_SECURITY, tags=["observation"],
      status_code=200)
async def adopt(request: Request, data: JSONBody[AdoptBody]) -> list[DomainView]:
    """Record domains the hypervisor already has, by name or all of them."""
    ledger = _svc(request).ledger
    if bool(data.names) == data.all:
        raise InvalidRequestError("name the domains to adopt, or give all")
    if data.all:
        return plain(await ledger.adopt_all(principal=principal(request)))
    return plain([await ledger.adopt(n, principal=principal(request)) for n in data.names])


# Maintenance.


@post("/v1/verify", opt=ADMIN, responses=_problems(409), security=_SECURITY, tags=["maintenance"], status_code=200)
async def verify(request: Request, data: JSONBody[VerifyBody]) -> dict[str, Any]:
    """Check the hash chain and that projections equal a rebuild; with `checkpoint`, answer a checkpoint."""
    ledger = _svc(request).ledger
    if data.since is not None or data.checkpoint:
        since = None
        if data.since is not None:
            try:
                since = Checkpoint(position=data.since.position, hash=data.since.hash, domains=data.since.domains,
                                   rules=data.since.rules)
            except (TypeError, ValueError) as e:
                raise InvalidRequestError(f"not a checkpoint: {e}") from e
        done = await ledger.checkpoint(since)
        return {"position": done.position, "checkpoint": {"position": done.position, "hash": done.hash,
                                                           "domains": dict(done.domains), "rules": done.rules}}
    return {"position": await ledger.verify(from_position=data.from_position)}


@post("/v1/rebuild", opt=ADMIN, responses=_problems(), security=_SECURITY, tags=["maintenance"], status_code=200)
async def rebuild(request: Request) -> Position:
    """Rebuild every projection from the log."""
    return {"position": await _svc(request).ledger.rebuild()}


@get("/v1/export", opt=ADMIN, responses=_problems(), security=_SECURITY, tags=["maintenance"], media_type=NDJSON)
async def export(request: Request, start: int = QueryParameter(name="from", default=0, ge=0, le=2**63 - 1)) -> Stream:
    """Stream the log as export lines (NDJSON), every stored field with its hash link."""
    lines = _svc(request).ledger.export(from_position=start)

    async def body() -> AsyncIterator[bytes]:
        async for line in lines:
            yield (line + "\n").encode("utf-8")

    return Stream(body(), media_type=NDJSON)


@post("/v1/import", opt=ADMIN, responses=_problems(409), security=_SECURITY, tags=["maintenance"],
      status_code=200, request_max_body_size=MAX_IMPORT_BODY)
async def import_log(request: Request) -> Position:
    """Load an exported log (NDJSON body) into this empty ledger, all or nothing: any error leaves it empty."""
    body = await request.body()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequestError(f"the export is not UTF-8 text: {e}") from e
    lines = text.split("\n")  # as the command line reads a file: U+2028 in a message is no line break
    return {"position": await _svc(request).ledger.import_lines(lambda: lines)}


# Tokens.


@get("/v1/tokens", opt=ADMIN, responses=_problems(), security=_SECURITY, tags=["tokens"])
async def list_tokens(request: Request) -> list[TokenInfo]:
    """List the tokens: names, roles and creation times, never secrets."""
    return [t.to_dict() for t in await _svc(request).tokens.tokens()]


@post("/v1/tokens", opt=ADMIN, responses=_problems(409), security=_SECURITY, tags=["tokens"], status_code=201)
async def add_token(request: Request, data: JSONBody[TokenBody]) -> NewToken:
    """Create a token; its secret is in this answer only."""
    secret = await _svc(request).tokens.add(data.name, data.role)
    return {"name": data.name, "role": data.role, "token": secret}


@delete("/v1/tokens/{name:str}", opt=ADMIN, responses=_problems(404), security=_SECURITY, tags=["tokens"],
        status_code=204)
async def revoke_token(request: Request, name: FromPath[str]) -> None:
    """Revoke a token: it is refused from the next request on, by every server of the database."""
    await _svc(request).tokens.revoke(name)


# The simulated hypervisor.

_SIM_ACTIONS = ("balloon", "config", "host-free", "lock-tray", "unlock-tray", "capability", "fail")


def _need(value: Any, what: str) -> Any:
    if value is None:
        raise InvalidRequestError(f"this action needs {what}")
    return value


@post("/v1/sim/{action:str}", opt=ADMIN, responses=_problems(404, 409), security=_SECURITY, tags=["sim"],
      status_code=204)
async def sim(request: Request, action: FromPath[str], data: JSONBody[SimBody]) -> None:
    """Perturb the simulated hypervisor behind the ledger's back (balloon, config, host-free, lock-tray,
    unlock-tray, capability, fail)."""
    hv = _svc(request).simulator
    if hv is None:
        raise InvalidRequestError("this server's hypervisor is not the simulator")
    if action == "balloon":
        await hv.balloon(_need(data.domain, "domain"), _need(data.size, "size"))
    elif action == "config":
        await hv.configure(_need(data.domain, "domain"), _need(data.property, "property"), data.value)
    elif action == "host-free":
        await hv.set_host_free(_need(data.size, "size"))
    elif action in ("lock-tray", "unlock-tray"):
        method = hv.lock_tray if action == "lock-tray" else hv.unlock_tray
        await method(_need(data.domain, "domain"), _need(data.device, "device"))
    elif action == "capability":
        await hv.set_capability(_need(data.domain, "domain"), _need(data.capability, "capability"),
                                _need(data.on, "on"))
    elif action == "fail":
        await hv.inject_fault(_need(data.domain, "domain"), _need(data.property, "property"), _need(data.kind, "kind"))
    else:
        raise InvalidRequestError(f"unknown sim action {action!r} (use {', '.join(_SIM_ACTIONS)})")


# Operations.


@get("/healthz", tags=["operations"])
async def healthz() -> Health:
    """Answer while the process is up."""
    return {"status": "ok"}


@get("/readyz", tags=["operations"], responses={503: ResponseSpec(data_container=Health, description="not ready")})
async def readyz(request: Request) -> Response[Health]:
    """Answer 200 when the database and the hypervisor answer, else 503."""
    ledger = _svc(request).ledger
    try:
        await ledger.log.head()
    except VmledgerError as e:
        return Response({"status": f"database: {e}"}, status_code=503)
    try:
        # A cheap call the hypervisor answers whatever domains it has; an adapter without one
        # is asked about a domain the ledger holds (if any).
        hv = ledger.hypervisor
        if hasattr(hv, "ping"):
            await asyncio.wait_for(hv.ping(), 5.0)
        elif named := await ledger.log.fetch_all("SELECT name FROM domains WHERE defined = 1 LIMIT 1"):
            await asyncio.wait_for(hv.observe(named[0][0]), 5.0)
    except (VmledgerError, OSError, TimeoutError) as e:
        return Response({"status": f"hypervisor: {e or type(e).__name__}"}, status_code=503)
    return Response({"status": "ok"})


@get("/metrics", tags=["operations"], media_type="text/plain; version=0.0.4")
async def metrics(request: Request) -> bytes:
    """Return the Prometheus metrics of this process."""
    svc = _svc(request)
    svc.metrics.drift_rows.set(len(await svc.ledger.drift()))
    return svc.metrics.render()


#: OpenAPI links: (method, path, status) of an answer -> (method, path) of the operations its body names.
_DOMAIN = {"name": "$response.body#/domain"}
LINKS: dict[tuple[str, str, str], dict[tuple[str, str], dict[str, str]]] = {
    ("post", "/v1/domains", "201"): {
        ("get", "/v1/domains/{name}"): _DOMAIN, ("post", "/v1/domains/{name}/start"): _DOMAIN,
        ("post", "/v1/domains/{name}/requests"): _DOMAIN, ("delete", "/v1/domains/{name}"): _DOMAIN,
        ("get", "/v1/domains/{name}/properties/{prop}"): _DOMAIN},
    ("post", "/v1/domains/{name}/start", "200"): {
        ("post", "/v1/domains/{name}/requests"): _DOMAIN, ("post", "/v1/domains/{name}/stop"): _DOMAIN},
    ("post", "/v1/domains/{name}/stop", "200"): {
        ("post", "/v1/domains/{name}/start"): _DOMAIN, ("delete", "/v1/domains/{name}"): _DOMAIN},
    ("post", "/v1/domains/{name}/requests", "201"): {
        ("get", "/v1/requests/{request_id}"): {"request_id": "$response.body#/request_id"},
        ("get", "/v1/domains/{name}"): _DOMAIN},
    ("post", "/v1/tokens", "201"): {("delete", "/v1/tokens/{name}"): {"name": "$response.body#/name"}},
}


def openapi_document(app: Litestar) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of `app`: what Litestar generates from the handlers, with `LINKS`."""
    doc = app.openapi_schema.to_schema()
    paths = doc["paths"]
    for (method, path, status), targets in LINKS.items():
        response = paths[path][method]["responses"][status]
        response["links"] = {
            paths[target][verb]["operationId"]: {"operationId": paths[target][verb]["operationId"],
                                                 "parameters": parameters}
            for (verb, target), parameters in targets.items()}
    return doc


@get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> Response[dict[str, Any]]:
    """Return the OpenAPI 3.1 document of this API, generated from the handlers."""
    return Response(openapi_document(request.app), media_type="application/json")


HANDLERS: list[Callable[..., Any]] = [
    list_domains, define_domain, show_domain, undefine_domain, start_domain, stop_domain, set_property,
    show_request, get_property, drift, history, events, head, event_stream, observe, adopt, verify, rebuild, export,
    import_log, list_tokens, add_token, revoke_token, sim, healthz, readyz, metrics, openapi,
]
HANDLERS += [audit, diff, revert]  # issue 17's audit and replay tools


def create_app(service: Service) -> Litestar:
    """Return the Litestar application that serves `service`'s ledger, and its console at `/`."""
    from vmledger.console import HANDLERS as CONSOLE

    return Litestar(
        route_handlers=[*HANDLERS, *CONSOLE],
        guards=[authenticate],
        exception_handlers={VmledgerError: _ledger_error, HTTPException: _http_error, Exception: _internal_error},
        openapi_config=OpenAPIConfig(
            # The document alone: no documentation pages, which load scripts from CDNs (none given, Litestar
            # would serve them all).  `/openapi.json` serves it with its links.
            title="vmledger", version=vmledger.__version__, path="/schema", render_plugins=[JsonRenderPlugin()],
            description="An event-sourced ledger of virtual-machine configuration: persistent vs live, drift "
                        "and history.  Every write is recorded with the name of its bearer token as principal.",
            components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
        ),
        request_max_body_size=MAX_BODY,
        logging_config=None,  # one JSON line per request is written by `run.RequestLog`
        state=State({"service": service}),
    )
