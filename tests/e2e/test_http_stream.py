"""The event stream over Server-Sent Events: every position once, in order, under writers of other processes."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Iterator

import httpx
import pytest

from tests.contract.conftest import pg_dsn  # noqa: F401 - the session's PostgreSQL cluster
from tests.e2e.served import Served, need_serve, served
from tests.pg import create_database

#: A writer process: N sets of vcpus on its own domain, through the API.
WRITER = """
import sys, httpx
url, token, domain, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with httpx.Client(base_url=url, headers={"Authorization": "Bearer " + token}, timeout=120) as c:
    for i in range(n):
        r = c.post(f"/v1/domains/{domain}/requests", json={"property": "vcpus", "value": 1 + i % 4})
        assert r.status_code == 201, r.text
"""
WRITERS, SETS = 4, 30
_databases = iter(range(1, 1000))


@pytest.fixture(params=["sqlite", "postgres"])
def stream_server(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Served]:
    """Return a server with a one-second heartbeat on a fresh ledger of each backend, with domains d0..d3 running."""
    need_serve()
    db = (f"sqlite:///{tmp_path}/ledger.db" if request.param == "sqlite"
          else create_database(request.getfixturevalue("pg_dsn"), f"stream_{next(_databases)}"))
    with served(db, str(tmp_path / "server.log"), "--heartbeat", "1") as server:
        with server.client("olga") as c:
            for i in range(WRITERS):
                assert c.post("/v1/domains", json={"name": f"d{i}", "guest_type": "pv", "memory": 2**30,
                                                   "max_memory": 2**32, "vcpus": 2, "max_vcpus": 4}).status_code == 201
                assert c.post(f"/v1/domains/d{i}/start").status_code == 200
        yield server


def _follow(server: Served, last_event_id: int, until: Any, *, drop_after: int | None = None) -> list[tuple[int, int]]:
    """Read the stream after `last_event_id`; return (id, position in the data) of each event, until `until()` or a drop."""
    import json

    seen: list[tuple[int, int]] = []
    headers = {**server.headers("rob"), "Last-Event-ID": str(last_event_id)}
    with httpx.stream("GET", server.url + "/v1/events/stream", headers=headers, timeout=60) as response:
        assert (response.status_code, response.headers["content-type"].split(";")[0]) == (200, "text/event-stream")
        event_id = None
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                seen.append((event_id, json.loads(line[6:])["position"]))
                if drop_after is not None and len(seen) == drop_after:
                    return seen
            if seen and until(seen[-1][0]):
                return seen
            if line == ": heartbeat" and until(seen[-1][0] if seen else last_event_id):
                return seen
    return seen


def test_follower_sees_every_position_once_in_order_under_four_writer_processes(stream_server: Served) -> None:
    """A follower from 0, dropping twice and resuming with Last-Event-ID, sees every position exactly once, in order."""
    server = stream_server
    start = time.monotonic()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, server.url, server.tokens["olga"], f"d{i}", str(SETS)])
               for i in range(WRITERS)]
    try:
        done = lambda: all(w.poll() is not None for w in writers)  # noqa: E731
        final: list[int] = []

        def until(position: int) -> bool:
            if not final and done():
                final.append(server.head())
            return bool(final) and position >= final[0]

        seen = _follow(server, 0, until, drop_after=50)
        seen += _follow(server, seen[-1][0], until, drop_after=100)
        seen += _follow(server, seen[-1][0], until)
        codes = [w.wait(timeout=300) for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait(timeout=30)
    head = server.head()
    assert codes == [0] * WRITERS
    assert head >= 2 * WRITERS + 3 * WRITERS * SETS
    assert [i for i, _ in seen] == list(range(1, head + 1))
    assert [p for _, p in seen] == list(range(1, head + 1))
    assert time.monotonic() - start < 300


def test_idle_stream_sends_heartbeats(stream_server: Served) -> None:
    """An idle stream sends a heartbeat comment every heartbeat interval (one second here)."""
    head = stream_server.head()
    lines: list[str] = []
    started = time.monotonic()
    with httpx.stream("GET", stream_server.url + "/v1/events/stream",
                      headers={**stream_server.headers("rob"), "Last-Event-ID": str(head)}, timeout=60) as response:
        for line in response.iter_lines():
            lines.append(line)
            if lines.count(": heartbeat") == 2:
                break
    assert [line for line in lines if line] == [": stream open", ": heartbeat", ": heartbeat"]
    assert 1.5 < time.monotonic() - started < 10
