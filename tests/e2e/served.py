"""A real `vmledger serve` process for the HTTP tests: started on a free port, with tokens, stopped after.

Each server is `python -m vmledger.cli serve` in a subprocess of its own,
over a real socket; the tests talk to it over HTTP with httpx, never
in-process.  Missing server dependencies skip the HTTP tests locally and
fail them under `CI=true`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from typing import Any, Iterator

import attrs
import pytest

__all__ = ["Served", "need_serve", "served", "cli", "add_token", "ROLES"]

#: The tokens every test server gets: name -> role.
ROLES = {"alice": "admin", "olga": "operator", "rob": "reader", "bob": "operator"}
_STARTUP_SECONDS = 60


def need_serve() -> None:
    """Skip the calling test when the `serve` extra is missing, or fail it under `CI=true`."""
    missing = [m for m in ("litestar", "uvicorn", "httpx", "prometheus_client")
               if importlib.util.find_spec(m) is None]
    if missing:
        message = f"the HTTP service needs {', '.join(missing)}: pip install -e '.[test]'"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: the HTTP tests must run)")
        pytest.skip(message)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMLEDGER_")}
    env.update(extra or {})
    return env


def _child_defaults() -> None:
    # The test signals this child: it must die of SIGINT and SIGTERM as a shell-started process would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def cli(db: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
        cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run `vmledger --db DB ARGS` in a subprocess; return what it did."""
    return subprocess.run([sys.executable, "-m", "vmledger.cli", "--db", db, *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=_env(env), stdin=subprocess.DEVNULL, cwd=cwd)


def make_tokens(db: str, roles: dict[str, str]) -> dict[str, str]:
    """Create tokens by name and role through the token store `vmledger token add` uses, in one go."""
    import asyncio

    from vmledger.service.tokens import TokenStore

    import vmledger

    async def go() -> dict[str, str]:
        async with vmledger.open(db):
            pass  # the ledger first: a database holding other tables alone is not one, and serve refuses it
        store = TokenStore(db, _no_reads)  # adding writes only
        return {name: await store.add(name, role) for name, role in roles.items()}

    return asyncio.run(go())


async def _no_reads(sql: str, params: Any) -> list:
    raise AssertionError("adding tokens reads nothing")


def add_token(db: str, name: str, role: str) -> str:
    """Create a token with `vmledger token add`, after `vmledger init`; return the secret it printed."""
    assert cli(db, "init").returncode == 0  # `token` makes no ledger
    done = cli(db, "token", "add", name, "--role", role)
    assert (done.returncode, done.stderr) == (0, "")
    return done.stdout.strip()


@attrs.define
class Served:
    """A running `vmledger serve`: its URL, its tokens by name, its database, and its log file."""

    url: str
    db: str
    tokens: dict[str, str]
    log_path: str
    proc: subprocess.Popen
    ca: str | None = None

    def headers(self, name: str) -> dict[str, str]:
        """Return the Authorization header of the token named `name`."""
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def log(self) -> str:
        """Return what the server has written to its log so far."""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def client(self, name: str | None = "alice", *, headers: dict[str, str] | None = None) -> Any:
        """Return an httpx client of the server, with the token named `name` (or `headers`)."""
        import httpx

        return httpx.Client(base_url=self.url, headers=headers or (self.headers(name) if name else {}),
                            verify=self.ca or True, timeout=60)

    def head(self) -> int:
        """Return the log's head position, read from the server."""
        with self.client() as c:
            return _head(c)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig` and return the exit status once the server is gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


def _head(client: Any) -> int:
    return client.get("/v1/head").raise_for_status().json()["position"]


def start(db: str, log_path: str, *args: str, tokens: dict[str, str] | None = None,
          env: dict[str, str] | None = None) -> Served:
    """Start `vmledger serve` on a free port of 127.0.0.1 and wait until it listens."""
    tokens = dict(tokens) if tokens is not None else make_tokens(db, ROLES)
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmledger.cli", "--db", db, "--timeout", "0.5", "serve", "--port", "0", *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=_env(env), preexec_fn=_child_defaults,
            cwd=os.path.dirname(log_path))  # where the simulator keeps its state for a PostgreSQL ledger
    finally:
        log.close()
    deadline = time.monotonic() + _STARTUP_SECONDS
    with open(log_path, encoding="utf-8", errors="replace") as f:
        seen = ""
        while time.monotonic() < deadline:
            seen += f.read()
            for line in seen.splitlines():
                if line.startswith("vmledger: serving on "):
                    return Served(url=line.split()[-1], db=db, tokens=tokens, log_path=log_path, proc=proc)
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=30)
    raise AssertionError(f"vmledger serve did not start: {seen[-2000:]}")


@contextlib.contextmanager
def served(db: str, log_path: str, *args: str, **kwargs: Any) -> Iterator[Served]:
    """Run a server for the `with` block; kill it at the end if it still runs."""
    server = start(db, log_path, *args, **kwargs)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.wait(timeout=60)
