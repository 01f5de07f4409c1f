"""Run the service: open the ledger, serve it with uvicorn, log one line per request, stop gracefully.

On SIGTERM the server stops accepting connections, lets every request in
flight finish (a `set` that recorded `…Requested` also records its
outcomes and answers), ends the event streams, and exits 0.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import sys
import time
import uuid
from datetime import datetime, timezone
from types import FrameType
from typing import Any, Awaitable, Callable, TextIO

import uvicorn

import vmledger
from vmledger.eventstore.catalogue import check_seconds
from vmledger.eventstore.errors import InvalidRequestError
from vmledger.service.app import Service, create_app
from vmledger.service.commands import DEFAULT_PORT
from vmledger.service.metrics import Metrics, TimedLog
from vmledger.service.tokens import TokenStore

__all__ = ["serve", "RequestLog", "RootPath", "HeadAsGet", "check_root_path", "DEFAULT_PORT"]

_BACKLOG = 1024
#: How long a SIGTERM waits for requests in flight before cancelling them.
GRACE_SECONDS = 30.0

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RequestLog:
    """ASGI middleware: one JSON line per request, and the request metrics.

    The line holds the method, the path (never the query string or a
    header, so never a token), the status, the duration, the principal and
    the request id (the `Idempotency-Key`, or one made for the HTTP request
    and returned as `X-Request-Id`).
    """

    def __init__(self, app: Any, metrics: Metrics, stream: TextIO) -> None:
        self.app = app
        self.metrics = metrics
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, path = time.perf_counter(), scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        request_id = headers.get("idempotency-key") or uuid.uuid4().hex
        scope["vmledger"] = {"principal": None}
        status = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-request-id", request_id.encode("latin-1", "replace"))]}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            endpoint = scope.get("path_template", "-")  # the route, so that names do not multiply the series
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            line = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    "method": scope["method"], "path": path, "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "principal": scope["vmledger"].get("principal"), "request_id": request_id}
            print(json.dumps(line, ensure_ascii=True), file=self.stream, flush=True)


class RootPath:
    """ASGI middleware: answer under a path prefix, whether a proxy in front strips it or passes it on."""

    def __init__(self, app: Any, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if self.prefix and (path == self.prefix or path.startswith(self.prefix + "/")):
            # In place, not a copy: what the application adds to the scope (the route for the metrics) stays seen.
            scope["path"] = path[len(self.prefix):] or "/"
            # The prefix is plain text (`check_root_path`), so the raw path starts with it as the path does.
            raw = scope.get("raw_path") or path.encode("utf-8")
            scope["raw_path"] = raw[len(self.prefix):] or b"/"
        await self.app(scope, receive, send)


class HeadAsGet:
    """ASGI middleware: answer HEAD as GET would, with the headers alone (RFC 9110: HEAD wherever GET is)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        inner = {**scope, "method": "GET"}
        answered = False

        async def sending(message: dict[str, Any]) -> None:
            nonlocal answered
            if answered:
                return
            if message["type"] == "http.response.body":
                answered = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        async def receiving() -> dict[str, Any]:
            # Once answered, a stream (the event stream's) learns that its client is gone.
            return {"type": "http.disconnect"} if answered else await receive()

        try:
            await self.app(inner, receiving, sending)
        finally:
            scope.update({k: v for k, v in inner.items() if k not in ("method",)})


def check_root_path(text: str) -> str:
    """Return a `--root-path` without its trailing slash ("" for none).

    Raises:
        InvalidRequestError: it does not start with `/`, or holds more than letters, digits and `/._-`.
    """
    if text in ("", "/"):
        return ""
    if not re.fullmatch(r"(/[A-Za-z0-9._-]+)+/?", text):
        raise InvalidRequestError(f"invalid root path {text!r}: use a path such as /ledger (letters, digits, ._-)")
    return text.rstrip("/")


class _Server(uvicorn.Server):
    """A uvicorn server whose SIGTERM also ends the event streams, and makes the process exit 0."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self._service = service
        self._loop: Any = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        import asyncio

        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM:
            # A requested stop, not a crash: uvicorn would raise SIGTERM again once done, and the exit status
            # would say killed.
            self.should_exit = True
        else:
            super().handle_exit(sig, frame)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._service.closing.set)


def _listen(host: str, port: int) -> socket.socket:
    """Return a TCP socket bound to `host:port` (port 0: any free one), for uvicorn to listen on.

    The protocol is named, not left 0: asyncio switches Nagle's algorithm
    off only on sockets whose protocol says TCP, and with it on, a response
    written in two parts waits for the client's delayed ACK (40 ms a request).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)  # now, so that a client told the address before uvicorn starts is queued
    except (OSError, OverflowError) as e:  # OverflowError: a port past 65535
        sock.close()
        raise InvalidRequestError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from e
    return sock


async def serve(
    db: str,
    *,
    hypervisor: str = "sim",
    hypervisor_timeout: float = 10.0,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    certfile: str | None = None,
    keyfile: str | None = None,
    log: TextIO = sys.stderr,
    heartbeat: float = 15.0,
    root_path: str = "",
) -> int:
    """Serve the ledger at `db` over HTTP (HTTPS with `certfile` and `keyfile`) until SIGTERM or SIGINT.

    Prints `vmledger: serving on URL` on `log` once it accepts connections
    (with the port it really listens on when `port` is 0).

    Raises:
        InvalidRequestError: a bad URL or hypervisor, only one of certfile and keyfile, a certificate
            or key it cannot load, an address it cannot listen on, or no ledger at `db`.
        StorageError: the database cannot be opened.
    """
    if (certfile is None) != (keyfile is None):
        raise InvalidRequestError("TLS needs both --certfile and --keyfile")
    root_path = check_root_path(root_path)
    async with vmledger.open(db, hypervisor=hypervisor, hypervisor_timeout=hypervisor_timeout, create=False) as ledger:
        metrics = Metrics()
        ledger.log = TimedLog(ledger.log, metrics)
        tokens = TokenStore(db, ledger.log.fetch_all)
        await tokens.create_table()
        service = Service(ledger, tokens, metrics=metrics, heartbeat=check_seconds("the heartbeat", heartbeat),
                          root_path=root_path)
        app = RequestLog(RootPath(HeadAsGet(create_app(service)), root_path), metrics, log)
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", server_header=False,
            ssl_certfile=certfile, ssl_keyfile=keyfile, timeout_graceful_shutdown=GRACE_SECONDS,
            timeout_keep_alive=30, backlog=_BACKLOG,
        )
        try:
            config.load()  # the certificate and key, now: a bad one is told before "serving on", not after
        except (OSError, ssl.SSLError) as e:
            raise InvalidRequestError(f"cannot load the TLS certificate {certfile} or its key {keyfile}: "
                                      f"{getattr(e, 'strerror', None) or e}") from e
        server = _Server(config, service)
        sock = _listen(host, port)
        bound = sock.getsockname()[1]
        shown_host = f"[{host}]" if ":" in host else host
        print(f"vmledger: serving on {'https' if certfile else 'http'}://{shown_host}:{bound}{root_path}", file=log,
              flush=True)
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()
    return 0
