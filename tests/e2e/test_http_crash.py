"""`kill -9` of a server under load: every request answered 2xx is in the log with the outcomes it was answered."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import httpx

import vmledger
from tests.e2e.served import need_serve, served

CLIENTS, DOMAINS = 8, 4


def test_kill_9_mid_load_loses_no_answered_request(tmp_path: Any) -> None:
    """After SIGKILL mid-load, each request answered 201 is recorded with the outcomes it was answered, and verify passes."""
    need_serve()
    db = f"sqlite:///{tmp_path}/ledger.db"
    answered: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    with served(db, str(tmp_path / "server.log")) as server:
        with server.client("olga") as c:
            for i in range(DOMAINS):
                assert c.post("/v1/domains", json={"name": f"d{i}", "guest_type": "pv", "memory": 2**30,
                                                   "max_memory": 2**32, "vcpus": 2, "max_vcpus": 4}).status_code == 201
                assert c.post(f"/v1/domains/d{i}/start").status_code == 200
        stop = threading.Event()

        def load(n: int) -> None:
            with server.client("olga") as c:
                for k in range(10**6):
                    if stop.is_set():
                        return
                    rid = f"c{n}-{k}"
                    try:
                        r = c.post(f"/v1/domains/d{n % DOMAINS}/requests", headers={"Idempotency-Key": rid},
                                   json={"property": "vcpus", "value": 1 + k % 4})
                    except httpx.TransportError:
                        return  # the server is gone: this request's outcome is unknown to its caller
                    if r.status_code == 201:
                        answered[rid] = r.json()
                    else:
                        failures.append(f"{rid}: {r.status_code} {r.text}")

        threads = [threading.Thread(target=load, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(answered) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=60)

    async def check() -> tuple[list[str], int]:
        async with vmledger.open(db) as ledger:
            differ = [rid for rid, record in answered.items()
                      if (await ledger.request(rid))["outcomes"] != record["outcomes"]]
            return differ, await ledger.verify()

    differ, head = asyncio.run(check())
    assert (failures, differ, len(answered) >= 100, head >= 2 * DOMAINS + 3 * len(answered)) == ([], [], True, True)
