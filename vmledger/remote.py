"""`vmledger.connect(url, token=...)`: the `Ledger` methods over HTTP, against `vmledger serve`.

One protocol, two implementations: a controller written against `Ledger`
runs unchanged against `RemoteLedger`.  The differences are the ones a
network makes: the principal of every write is the token's name (a
`principal=` argument is accepted and ignored), `watch` runs beside the
hypervisor (on the server's host), and errors arrive as problem documents
that are raised again as the same `VmledgerError` classes with the same
messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from datetime import datetime
from typing import Any, AsyncIterator, Callable, Iterable, Mapping

import httpx

from vmledger.eventstore.catalogue import check_page
from vmledger.eventstore.errors import InvalidRequestError, StorageError
from vmledger.eventstore.log import RecordedEvent
from vmledger._checkpoint import Checkpoint
from vmledger._wire import REPLAYED_HEADER, error_from_problem, event_from_json, segment
from vmledger.replay import Replaying
from vmledger.results import AuditReport, ConfigDiff, DomainView, DriftRow, PropertyValue, RequestRecord, RevertReport

__all__ = ["connect", "RemoteLedger", "RemoteSimulator"]

#: Seconds to wait for a server's answer; a `set` waits for the hypervisor, so this is generous.
DEFAULT_TIMEOUT = 120.0
_RESUME_DELAY = 0.5


def _q(text: str) -> str:
    if not isinstance(text, str):
        raise InvalidRequestError(f"expected text, not {type(text).__name__}")
    return segment(text)


def _point(point: int | datetime | None) -> int | str | None:
    """Return a position or time as the API takes it: a position as is, a time in ISO 8601."""
    return point.isoformat() if isinstance(point, datetime) else point


class RemoteLedger(Replaying):
    """A ledger served by `vmledger serve`, with the methods of `Ledger`; made by `vmledger.connect`."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self._client = client
        self.url = url
        self.hypervisor = RemoteSimulator(self)

    async def _call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                    json_body: Any = None, headers: Mapping[str, str] | None = None,
                    content: bytes | None = None) -> httpx.Response:
        """Send one request; return the response, or raise the error its problem document names."""
        query = {k: v if isinstance(v, list) else str(v) for k, v in (params or {}).items() if v is not None}
        try:
            response = await self._client.request(method, path, params=query, json=json_body, headers=headers,
                                                  content=content)
        except httpx.HTTPError as e:
            raise StorageError(f"cannot reach the vmledger server at {self.url}: {e or type(e).__name__}") from e
        if response.status_code >= 400:
            raise _error(response)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._call(method, path, **kwargs)).json()

    async def _pages(self, path: str, params: Mapping[str, Any], most: int | None = None) -> list[Any]:
        """Return every item of a paginated list, following `Link: rel="next"`; the first `most` of them."""
        items: list[Any] = []
        response = await self._call("GET", path, params=params)
        while True:
            items += response.json()
            link = response.links.get("next")
            if not link or (most is not None and len(items) >= most):
                return items[:most]
            response = await self._call("GET", link["url"])

    # Lifecycle.

    async def define(self, name: str, *, guest_type: str, memory: int, max_memory: int, vcpus: int,
                     max_vcpus: int, numa_nodes: int = 1, cdroms: Mapping[str, str] | None = None,
                     principal: str | None = None) -> DomainView:
        """Define a domain; return its view."""
        body = {"name": name, "guest_type": guest_type, "memory": memory, "max_memory": max_memory,
                "vcpus": vcpus, "max_vcpus": max_vcpus, "numa_nodes": numa_nodes,
                "cdroms": {} if cdroms is None else cdroms}  # as given: the ledger checks it, in its words
        return DomainView.from_dict(await self._json("POST", "/v1/domains", json_body=body))

    async def start(self, name: str, *, principal: str | None = None) -> DomainView:
        """Boot a domain; return its view."""
        return DomainView.from_dict(await self._json("POST", f"/v1/domains/{_q(name)}/start"))

    async def stop(self, name: str, *, principal: str | None = None) -> DomainView:
        """Shut a domain off; return its view."""
        return DomainView.from_dict(await self._json("POST", f"/v1/domains/{_q(name)}/stop"))

    async def undefine(self, name: str, *, principal: str | None = None) -> None:
        """Remove a stopped domain; its stream stays for audit."""
        await self._call("DELETE", f"/v1/domains/{_q(name)}")

    async def adopt(self, name: str, *, principal: str | None = None) -> DomainView:
        """Record a domain the hypervisor already has; return its view."""
        return DomainView.from_dict((await self._json("POST", "/v1/adopt", json_body={"names": [name]}))[0])

    async def adopt_all(self, *, principal: str | None = None) -> list[DomainView]:
        """Adopt every domain the hypervisor lists that the ledger does not record yet."""
        return [DomainView.from_dict(d) for d in await self._json("POST", "/v1/adopt", json_body={"all": True})]

    async def watch(self, *, principal: str | None = None, interval: float = 60.0) -> None:
        """Refuse: a watch runs beside the hypervisor, on the server's host.

        Raises:
            InvalidRequestError: always.
        """
        raise InvalidRequestError("watch runs beside the hypervisor: run 'vmledger watch' on the server's host")

    # Requests.

    async def set(self, name: str, prop: str, value: Any, *, scope: str = "both", request_id: str | None = None,
                  principal: str | None = None, reason: str | None = None,
                  expected_version: int | None = None) -> RequestRecord:
        """Request a change; return the request's record with its outcome per scope.

        `expected_version` makes it a compare-and-set on the domain's stream
        version (HTTP `If-Match`).
        """
        headers = {}
        if request_id is not None:
            headers["Idempotency-Key"] = request_id
        if expected_version is not None:
            headers["If-Match"] = f'"{expected_version}"'
        body = {"property": prop, "value": value, "scope": scope, "reason": reason}
        response = await self._call("POST", f"/v1/domains/{_q(name)}/requests", json_body=body, headers=headers)
        return RequestRecord.from_dict(response.json(), replayed=response.headers.get(REPLAYED_HEADER) == "true")

    async def request(self, request_id: str) -> RequestRecord:
        """Return the record of one request."""
        return RequestRecord.from_dict(await self._json("GET", f"/v1/requests/{_q(request_id)}"))

    # Reads.

    async def get(self, name: str, prop: str, *, scope: str = "current") -> PropertyValue:
        """Return one property's value in the live or persistent config."""
        d = await self._json("GET", f"/v1/domains/{_q(name)}/properties/{_q(prop)}", params={"scope": scope})
        return PropertyValue(domain=d["domain"], property=d["property"], scope=d["scope"], value=d["value"])

    async def show(self, name: str) -> DomainView:
        """Return both configs of a domain side by side."""
        return DomainView.from_dict(await self._json("GET", f"/v1/domains/{_q(name)}"))

    async def domains(self) -> list[DomainView]:
        """Return the view of every defined domain, by name."""
        return [DomainView.from_dict(d) for d in await self._json("GET", "/v1/domains")]

    async def drift(self, name: str | None = None, *, as_of: int | datetime | None = None) -> list[DriftRow]:
        """Return where live differs from persistent, now or as of a position or time."""
        shown = _point(as_of)
        return [DriftRow.from_dict(d) for d in await self._json("GET", "/v1/drift",
                                                                 params={"domain": name, "as_of": shown})]

    async def history(self, name: str | None = None, prop: str | None = None, *, principal: str | None = None,
                      since: datetime | None = None, until: datetime | None = None, limit: int | None = None,
                      offset: int = 0) -> list[RequestRecord]:
        """Return every request with its outcomes, oldest first, filtered as asked; `limit` from the `offset`th."""
        check_page(limit, offset)  # the ledger's own words: the server's page size is another limit
        params = {"domain": name, "property": prop, "principal": principal,
                  "since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
                  "limit": 1000 if limit is None else min(limit, 1000), "cursor": offset or None}
        return [RequestRecord.from_dict(r) for r in await self._pages("/v1/history", params, limit)]

    async def audit(self, *, since: datetime | None = None, until: datetime | None = None,
                    domain: str | None = None, principal: str | None = None) -> AuditReport:
        """Report a period: outcomes, the top reasons, drift episodes and time in drift."""
        params = {"since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
                  "domain": domain, "principal": principal}
        return AuditReport.from_dict(await self._json("GET", "/v1/audit", params=params))

    async def diff(self, name: str, *, from_position: int | datetime = 0,
                   to_position: int | datetime | None = None) -> ConfigDiff:
        """Return how a domain's configs changed between two points, event by event."""
        params = {"from": _point(from_position), "to": _point(to_position)}
        return ConfigDiff.from_dict(await self._json("GET", f"/v1/domains/{_q(name)}/diff", params=params))

    async def revert(self, name: str, *, to: int | datetime, scope: str = "both", dry_run: bool = False,
                     principal: str | None = None) -> RevertReport:
        """Bring a domain's config back to a point with ordinary requests; the server records its token's principal."""
        body = {"to": _point(to), "scope": scope, "dry_run": dry_run}
        return RevertReport.from_dict(await self._json("POST", f"/v1/domains/{_q(name)}/revert", json_body=body))

    async def events(self, *, from_position: int = 0, to_position: int | None = None, domain: str | None = None,
                     types: str | Iterable[str] | None = None, since: datetime | None = None,
                     until: datetime | None = None) -> AsyncIterator[RecordedEvent]:
        """Yield recorded events after `from_position`, in order, filtered as asked, a page at a time."""
        response = await self._call("GET", "/v1/events", params={
            "from": from_position, "to": to_position, **_filter_params(domain, types, since, until)})
        while True:
            for item in response.json():
                yield event_from_json(item)
            link = response.links.get("next")
            if not link:
                return
            response = await self._call("GET", link["url"])

    async def subscribe(self, *, from_position: int = 0, domain: str | None = None,
                        types: str | Iterable[str] | None = None,
                        since: datetime | None = None) -> AsyncIterator[RecordedEvent]:
        """Yield every event after `from_position`, then follow new ones over Server-Sent Events, filtered as asked.

        A dropped connection is resumed with `Last-Event-ID`, so no event is
        lost or repeated.
        """
        last = from_position
        params = _filter_params(domain, types, since, None)
        while True:
            try:
                async with self._client.stream(
                        "GET", "/v1/events/stream", params=params,
                        headers={"Last-Event-ID": str(last), "Accept": "text/event-stream"},
                        timeout=httpx.Timeout(None, connect=30.0)) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise _error(response)
                    async for rec in _sse_events(response):
                        if rec.position > last:
                            last = rec.position
                            yield rec
            except httpx.TransportError:
                pass
            await asyncio.sleep(_RESUME_DELAY)

    # Observation.

    async def observe(self, name: str | None = None, *, principal: str | None = None) -> list[RecordedEvent]:
        """Compare the hypervisor with the log and record what differs; return what was recorded."""
        return [event_from_json(e) for e in await self._json("POST", "/v1/observe", params={"domain": name})]

    # Moving a ledger between databases.

    async def export(self, *, from_position: int = 0) -> AsyncIterator[str]:
        """Yield the log as export lines, in order."""
        try:
            async with self._client.stream("GET", "/v1/export", params={"from": str(from_position)},
                                           timeout=httpx.Timeout(None, connect=30.0)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _error(response)
                async for line in response.aiter_lines():
                    if line:
                        yield line
        except httpx.HTTPError as e:
            raise StorageError(f"cannot reach the vmledger server at {self.url}: {e or type(e).__name__}") from e

    async def import_lines(self, lines: Callable[[], Iterable[str]]) -> int:
        """Import an exported log into the server's empty ledger; return the last position."""
        body = "".join(line.rstrip("\n") + "\n" for line in lines()).encode("utf-8")
        return (await self._json("POST", "/v1/import", content=body,
                                 headers={"Content-Type": "application/x-ndjson"}))["position"]

    # Maintenance.

    async def rebuild(self, *, progress: Callable[[int, int], None] | None = None) -> int:
        """Rebuild every projection from the log; return the position rebuilt to."""
        return (await self._json("POST", "/v1/rebuild"))["position"]

    async def verify(self, *, from_position: int = 0) -> int:
        """Check the hash chain and the projections; return the head."""
        return (await self._json("POST", "/v1/verify", json_body={"from_position": from_position}))["position"]

    async def checkpoint(self, since: Checkpoint | None = None) -> Checkpoint:
        """Verify, only what changed since `since` if given; return a checkpoint."""
        if since is not None and not isinstance(since, Checkpoint):
            raise InvalidRequestError(f"since must be a Checkpoint, not {type(since).__name__}")
        body: dict[str, Any] = {"checkpoint": True}
        if since is not None:
            body["since"] = {"position": since.position, "hash": since.hash, "domains": dict(since.domains),
                             "rules": since.rules}
        made = (await self._json("POST", "/v1/verify", json_body=body))["checkpoint"]
        return Checkpoint(position=made["position"], hash=made["hash"], domains=made["domains"],
                          rules=made.get("rules"))


class RemoteSimulator:
    """The server's simulated hypervisor, perturbed through its admin endpoints (`vmledger sim`)."""

    simulated = True

    def __init__(self, ledger: RemoteLedger) -> None:
        self._ledger = ledger

    async def _do(self, action: str, **body: Any) -> None:
        await self._ledger._call("POST", f"/v1/sim/{action}", json_body=body)

    async def balloon(self, name: str, size: int) -> None:
        """Set a running domain's live memory behind the ledger's back."""
        await self._do("balloon", domain=name, size=size)

    async def configure(self, name: str, prop: str, value: Any) -> None:
        """Change a value of the config a domain boots with next."""
        await self._do("config", domain=name, property=prop, value=value)

    async def set_host_free(self, size: int) -> None:
        """Set the host's free memory pool."""
        await self._do("host-free", size=size)

    async def lock_tray(self, name: str, device: str) -> None:
        """Lock a CD-ROM tray, as the guest would."""
        await self._do("lock-tray", domain=name, device=device)

    async def unlock_tray(self, name: str, device: str) -> None:
        """Unlock a CD-ROM tray."""
        await self._do("unlock-tray", domain=name, device=device)

    async def set_capability(self, name: str, cap: str, on: bool) -> None:
        """Turn a guest capability on or off."""
        await self._do("capability", domain=name, capability=cap, on=on)

    async def inject_fault(self, name: str, prop: str, kind: str) -> None:
        """Make the next live change of a property fail with an error or time out."""
        await self._do("fail", domain=name, property=prop, kind=kind)


def _filter_params(domain: str | None, types: str | Iterable[str] | None, since: datetime | None,
                   until: datetime | None) -> dict[str, Any]:
    """Return the query parameters of the event filters (a list is sent as repeated `type`)."""
    for bound in (since, until):
        if bound is not None and not isinstance(bound, datetime):
            raise InvalidRequestError(f"since and until must be datetimes, not {type(bound).__name__}")
    params = {"domain": domain, "type": [types] if isinstance(types, str) else None if types is None else list(types),
              "since": since.isoformat() if since else None, "until": until.isoformat() if until else None}
    return {k: v for k, v in params.items() if v is not None}


def _error(response: httpx.Response) -> Exception:
    try:
        problem = response.json()
    except ValueError:
        problem = {"detail": response.text[:200] or response.reason_phrase}
    return error_from_problem(problem if isinstance(problem, dict) else {}, response.status_code)


async def _sse_events(response: httpx.Response) -> AsyncIterator[RecordedEvent]:
    """Yield the events of a Server-Sent-Events response (comments and heartbeats are skipped)."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield event_from_json(json.loads("\n".join(data)))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


@contextlib.asynccontextmanager
async def connect(url: str, *, token: str | None = None, ca: str | None = None,
                  timeout: float = DEFAULT_TIMEOUT) -> AsyncIterator[RemoteLedger]:
    """Connect to the vmledger server at `url` with a bearer `token`, as an async context manager.

    An `https://` server's certificate is checked against the system's CAs,
    or against the CA certificate file `ca`.

    Raises:
        InvalidRequestError: `url` is not an http:// or https:// URL, or `ca` cannot be read.
    """
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidRequestError(f"a server URL starts with http:// or https://, not {url!r}")
    # A plain http:// server has no certificate to check: no TLS context is built for it (loading the CAs took a
    # command 20-95 ms), and the client asks nothing of any other URL (it follows no redirect).
    verify: Any = url.startswith("https://")
    if ca is not None:
        try:
            verify = ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as e:
            raise InvalidRequestError(f"cannot read the CA file {ca!r}: {e}") from e
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, verify=verify,
                                 timeout=httpx.Timeout(timeout, connect=30.0),
                                 limits=httpx.Limits(max_connections=100, max_keepalive_connections=100)) as client:
        yield RemoteLedger(client, url)
