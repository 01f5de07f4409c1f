"""The console's routes: HTML pages, their live fragments, sign-in, the operator's forms and the static files.

Every page reads through `views` (the ledger's own queries) and renders a
Jinja2 template with autoescaping on.  A page asked with `?part=NAME`
answers only that region, which the page's script swaps in place when the
event stream says its domain changed.
"""

from __future__ import annotations

import json
import urllib.parse
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from litestar import Request, Response, get, post
from litestar.response import Redirect

from vmledger import _units
from vmledger._wire import segment
from vmledger.console import views
from vmledger.console.assets import asset_url, static_file
from vmledger.console.session import Viewer, csrf_ok, session_cookie, viewer
from vmledger.eventstore.catalogue import lookup
from vmledger.eventstore.errors import InvalidRequestError, UnknownDomainError, UnknownPropertyError, VmledgerError
from vmledger.eventstore.events import EVENT_TYPES
from vmledger.service.app import Service, stream_response

__all__ = ["HANDLERS", "render"]

_PAGE = 50
#: Domains a fleet page shows: a table people read, and a page that renders in a few milliseconds.
_FLEET_PAGE = 100
_LOG = 100
_SCOPES = ("both", "live", "persistent", "current")
_HEADERS = {
    # The pages run only their own script: no inline code, no other origin.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _svc(request: Request) -> Service:
    return request.app.state["service"]


def _quoted_path(request: Request) -> str:
    """Return a console request's path as a URL holds it, each segment quoted: `/domains/%2E`, not `/domains/.`."""
    return "/".join(segment(s) for s in request.url.path.split("/"))


def _env() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("vmledger.console", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(asset=asset_url, json=lambda v: json.dumps(v, ensure_ascii=True))
    env.filters["value"] = lambda value, prop: _units.format_value(_entry(prop), value)
    env.filters["when"] = _when
    env.filters["segment"] = segment
    return env


def _when(t: datetime | str | None) -> str:
    """Return a time as the pages show it: UTC to the second, `2026-01-31T14:02:00Z`."""
    if t is None:
        return "-"
    if isinstance(t, str):
        return t[:19] + "Z"  # stored text: UTC, fixed width (`eventstore.log.timestamp`)
    return t.astimezone(timezone.utc).isoformat(timespec="seconds")[:19] + "Z"


def _entry(prop: str) -> Any:
    try:
        return lookup(prop)
    except UnknownPropertyError:
        return None


_ENV = _env()


def _query(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items() if v != "" and k != "part"}


def render(request: Request, template: str, *, who: Viewer | None, at: views.Moment | None = None,
           status: int = 200, **context: Any) -> Response[bytes]:
    """Render a page (or, with `?part=`, one region of it) for `who`, as of `at`."""
    root = _svc(request).root_path
    query = _query(request)
    keep = {"as_of": at.as_of} if at is not None and at.as_of else {}

    def url(path: str, **params: Any) -> str:
        """Return a console URL under the root path, keeping the as-of moment; None drops a parameter."""
        merged = {**keep, **{k: v for k, v in params.items() if v is not None and v != ""}}
        return root + path + ("?" + urllib.parse.urlencode(merged) if merged else "")

    def here(**changes: Any) -> str:
        """Return this page's URL with some query parameters changed."""
        merged = {**query, **{k: v for k, v in changes.items()}}
        merged = {k: v for k, v in merged.items() if v is not None and v != ""}
        return root + _quoted_path(request) + ("?" + urllib.parse.urlencode(merged) if merged else "")

    part = request.query_params.get("part")
    name = f"_{template}_{part}.html" if part else f"{template}.html"
    if part and part not in context.get("parts", ()):
        raise InvalidRequestError(f"this page has no part {part!r}")
    body = _ENV.get_template(name).render(
        root=root, who=who, at=at, url=url, here=here, query=query, path=request.url.path,
        keep="?" + urllib.parse.urlencode(keep) if keep else "",
        stream=root + "/live" if at is not None and at.now and who is not None else None,
        event_types=" ".join(sorted(EVENT_TYPES)), **context)
    return Response(body.encode("utf-8"), status_code=status, media_type="text/html",  # Litestar adds the charset
                    headers=_HEADERS)


async def _page(request: Request, template: str, build: Callable[[Viewer, views.Moment], Any],
                parts: tuple[str, ...] = ()) -> Response[bytes]:
    """Answer a page: the sign-in form to a stranger, else `build`'s context rendered as of the page's moment."""
    svc = _svc(request)
    who = await viewer(request, svc.tokens)
    if who is None:
        return _signin_form(request, None)
    try:
        at = await views.moment(svc.ledger, request.query_params.get("as_of"))
        context = await build(who, at)
    except VmledgerError as e:
        status = 404 if isinstance(e, (UnknownDomainError, UnknownPropertyError)) else 422
        return render(request, "error", who=who, status=status, message=str(e))
    return render(request, template, who=who, at=at, parts=parts, **context)


def _signin_form(request: Request, message: str | None, status: int = 200) -> Response[bytes]:
    target = "/"  # after signing in: the page asked for, or the fleet
    if request.method == "GET" and request.url.path != "/signin":
        target = _quoted_path(request) + ("?" + request.url.query if request.url.query else "")
    return render(request, "signin", who=None, status=status, message=message,
                  next=_svc(request).root_path + target)


def _time(text: str | None) -> datetime | None:
    return _units.parse_time(text) if text else None


def _paged(rows: list[Any], page_text: str | None, size: int = _PAGE) -> tuple[list[Any], int, int]:
    """Return one page of `rows` (`size` a page), with the page number and the number of pages.

    Raises:
        InvalidRequestError: a page that is not a whole number.
    """
    page, pages = views.page_of(len(rows), page_text, size)
    return rows[(page - 1) * size:page * size], page, pages


# Pages.


def _fleet_text(row: views.FleetRow) -> str:
    """Return the words of a fleet row the filter box looks in, as the page's script does: name, state, principal."""
    return " ".join((row.domain, row.power_state, row.last.property if row.last else "",
                     row.last.principal if row.last else "")).lower()


@get("/", include_in_schema=False)
async def fleet_page(request: Request) -> Response[bytes]:
    """Show every domain: power state, drift count, latest request and who made it."""
    ledger = _svc(request).ledger

    async def build(who: Viewer, at: views.Moment) -> dict[str, Any]:
        if request.query_params.get("part") == "row":
            return {"row": await views.fleet_row(ledger, request.query_params.get("domain", ""))}
        words = request.query_params.get("q", "").strip().lower()
        rows = [r for r in await views.fleet(ledger, at) if not words or words in _fleet_text(r)]
        page, number, pages = _paged(rows, request.query_params.get("page"), _FLEET_PAGE)
        return {"rows": page, "total": len(rows), "page": number, "pages": pages, "title": "Fleet", "bare": False}

    return await _page(request, "fleet", build, parts=("rows", "row"))


@get("/domains/{name:str}", include_in_schema=False)
async def domain_page(request: Request, name: str) -> Response[bytes]:
    """Show a domain's two configs side by side, drift with cause, capabilities, trays and history."""
    ledger = _svc(request).ledger
    q = request.query_params

    async def build(who: Viewer, at: views.Moment) -> dict[str, Any]:
        view, drift = await views.domain(ledger, at, name)
        page, number, pages = await views.history_page(
            ledger, at, q.get("page"), _PAGE, name=name, prop=q.get("property") or None,
            principal=q.get("principal") or None, outcome=q.get("outcome") or None, since=_time(q.get("since")),
            until=_time(q.get("until")))
        return {"view": view, "drift": {d.property: d for d in drift}, "records": page, "page": number,
                "pages": pages, "title": f"Domain {name}", "outcomes": views.OUTCOMES, "scopes": _SCOPES,
                "settable": [p.property for p in view.properties if _entry(p.property) is not None
                             and _entry(p.property).kind.name == "RW"],
                "done": q.get("done"), "failed": q.get("error")}

    return await _page(request, "domain", build, parts=("state", "history"))


@get("/domains/{name:str}/timeline/{prop:str}", include_in_schema=False)
async def timeline_page(request: Request, name: str, prop: str) -> Response[bytes]:
    """Chart a property's requested, persistent and live values over time, each request marked with its outcome."""
    ledger = _svc(request).ledger

    async def build(who: Viewer, at: views.Moment) -> dict[str, Any]:
        view, _ = await views.domain(ledger, at, name)
        timeline = await views.timeline(ledger, at, name, prop)
        return {"view": view, "prop": prop, "timeline": timeline, "chart": views.chart(timeline, prop),
                "title": f"Timeline of {prop} on {name}"}

    return await _page(request, "timeline", build, parts=("chart",))


@get("/drift", include_in_schema=False)
async def drift_page(request: Request) -> Response[bytes]:
    """List every drift row of the fleet, filtered by cause."""
    ledger = _svc(request).ledger

    async def build(who: Viewer, at: views.Moment) -> dict[str, Any]:
        rows = await views.drift(ledger, at, request.query_params.get("cause") or None)
        return {"rows": rows, "causes": views.CAUSES, "title": "Drift"}

    return await _page(request, "drift", build, parts=("rows",))


@get("/history", include_in_schema=False)
async def history_page(request: Request) -> Response[bytes]:
    """List every request with its outcomes, filtered and a page at a time."""
    ledger = _svc(request).ledger
    q = request.query_params

    async def build(who: Viewer, at: views.Moment) -> dict[str, Any]:
        page, number, pages = await views.history_page(
            ledger, at, q.get("page"), _PAGE, name=q.get("domain") or None, prop=q.get("property") or None,
            principal=q.get("principal") or None, outcome=q.get("outcome") or None, since=_time(q.get("since")),
            until=_time(q.get("until")))
        return {"records": page, "page": number, "pages": pages, "outcomes": views.OUTCOMES, "title": "History"}

    return await _page(request, "history", build, parts=("rows",))


@get("/log", include_in_schema=False)
async def log_page(request: Request) -> Response[bytes]:
    """List the latest events, newest first, following new ones live."""
    ledger = _svc(request).ledger

    async def build(who: Viewer, at: views.Moment) -> dict[str, Any]:
        return {"events": await views.latest_events(ledger, at, _LOG), "limit": _LOG, "title": "Log"}

    return await _page(request, "log", build)


# The event stream, with the session cookie.


@get("/live", include_in_schema=False, media_type="text/event-stream")
async def live(request: Request) -> Response[Any]:
    """Stream the ledger's events to a signed-in page: the API's event stream, resumable with Last-Event-ID."""
    svc = _svc(request)
    if await viewer(request, svc.tokens) is None:
        return Response(b"sign in first\n", status_code=401, media_type="text/plain")
    return await stream_response(svc, request.query_params.get("from", "0"), request.headers.get("last-event-id"))


# Sign-in and out.


@get("/signin", include_in_schema=False)
async def signin_page(request: Request) -> Response[bytes]:
    """Show the sign-in form."""
    return _signin_form(request, None)


def _local(root: str, target: str | None) -> str:
    """Return `target` if it is a path of this console, else the fleet page: never a redirect elsewhere."""
    if target and target.startswith(root + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return root + "/"


@post("/signin", include_in_schema=False, status_code=303)
async def signin(request: Request) -> Response[Any]:
    """Check a token and keep it in the session cookie; go where the caller was going."""
    svc = _svc(request)
    form = await request.form()
    secret = str(form.get("token", "")).strip()
    token = await svc.tokens.find(secret) if secret else None
    if token is None:
        return _signin_form(request, "That token is unknown or revoked.", status=401)
    request.scope.setdefault("vmledger", {})["principal"] = token.name
    return Redirect(_local(svc.root_path, str(form.get("next", ""))), status_code=303, headers={
        "Set-Cookie": session_cookie(secret, path=svc.root_path + "/", secure=request.url.scheme == "https")})


@post("/signout", include_in_schema=False, status_code=303)
async def signout(request: Request) -> Response[Any]:
    """End the session: the cookie is cleared."""
    svc = _svc(request)
    who = await viewer(request, svc.tokens)
    form = await request.form()
    if who is not None and not csrf_ok(who, form.get("csrf")):
        return _refused(request, who, "the form's CSRF token is missing or wrong")
    return Redirect(svc.root_path + "/signin", status_code=303, headers={
        "Set-Cookie": session_cookie("", path=svc.root_path + "/", secure=request.url.scheme == "https")})


# The operator's forms.


def _refused(request: Request, who: Viewer | None, message: str) -> Response[bytes]:
    return render(request, "error", who=who, status=403, message=message)


async def _writer(request: Request) -> tuple[Viewer | None, Any, Response[bytes] | None]:
    """Return who posts a write form and the form, or the refusal: a stranger, a reader, or a bad CSRF token."""
    svc = _svc(request)
    who = await viewer(request, svc.tokens)
    if who is None:
        return None, None, _signin_form(request, "Sign in first.", status=401)
    if not who.operates:
        return who, None, _refused(request, who, f"token {who.token.name!r} has the role "
                                                 f"{who.token.role.value}; changes need operator")
    form = await request.form()
    if not csrf_ok(who, form.get("csrf")):
        return who, None, _refused(request, who, "the form's CSRF token is missing or wrong")
    return who, form, None


async def _write(request: Request, name: str, act: Callable[[Viewer, Any], Awaitable[dict[str, str]]]) -> Response[Any]:
    """Run a write form's action for an operator with a good CSRF token; back to the domain page, saying what came of it."""
    who, form, refusal = await _writer(request)
    if refusal is not None:
        return refusal
    try:
        said = await act(who, form)
    except VmledgerError as e:
        said = {"error": str(e)}
    root = _svc(request).root_path
    return Redirect(f"{root}/domains/{segment(name)}?{urllib.parse.urlencode(said)}",
                    status_code=303)


@post("/domains/{name:str}/set", include_in_schema=False, status_code=303)
async def set_form(request: Request, name: str) -> Response[Any]:
    """Request a change from the domain page's form; the principal is the session's token."""
    async def act(who: Viewer, form: Any) -> dict[str, str]:
        prop = str(form.get("property", ""))
        value = _units.parse_value(lookup(prop), str(form.get("value", "")))
        reason = str(form.get("reason", "")).strip() or None
        record = await _svc(request).ledger.set(name, prop, value, scope=str(form.get("scope", "both")),
                                                principal=who.token.name, reason=reason)
        return {"done": record.request_id}

    return await _write(request, name, act)


@post("/domains/{name:str}/observe", include_in_schema=False, status_code=303)
async def observe_form(request: Request, name: str) -> Response[Any]:
    """Compare the hypervisor with the log for this domain now, and record what differs."""
    async def act(who: Viewer, form: Any) -> dict[str, str]:
        return {"observed": str(len(await _svc(request).ledger.observe(name, principal=who.token.name)))}

    return await _write(request, name, act)


# Static files.


@get("/static/{file:str}", include_in_schema=False)
async def static(file: str) -> Response[bytes]:
    """Serve a static file by its cache-busting name, cached for a year."""
    found = static_file(file)
    if found is None:
        return Response(b"no such file\n", status_code=404, media_type="text/plain")
    body, media_type = found
    return Response(body, media_type=media_type, headers={"Cache-Control": "public, max-age=31536000, immutable",
                                                          "X-Content-Type-Options": "nosniff"})


HANDLERS = [fleet_page, domain_page, timeline_page, drift_page, history_page, log_page, live, signin_page, signin,
            signout, set_form, observe_form, static]
