"""Several processes share one SQLite file and one simulated hypervisor without losing a request."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import vmledger

WRITER = """
import asyncio, sys
import vmledger

async def main(db, tag, n):
    async with vmledger.open(db, busy_timeout=60) as ledger:
        for i in range(n):
            await ledger.set(("a", "b")[i % 2], "vcpus", 1 + (i % 4), request_id=f"{tag}-{i}", principal=tag)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_two_processes_writing_the_same_domains(tmp_path: Any) -> None:
    """Two writer processes on shared domains record every request once, and the ledger verifies."""
    db = str(tmp_path / "shared.db")

    async def setup() -> None:
        async with vmledger.open(db) as ledger:
            for name in ("a", "b"):
                await ledger.define(name, guest_type="pv", memory=2**30, max_memory=2**31, vcpus=1, max_vcpus=4)
                await ledger.start(name)

    async def check() -> tuple:
        async with vmledger.open(db) as ledger:
            history = await ledger.history()
            positions = [r.position async for r in ledger.events()]
            head = await ledger.verify()
            statuses = {o["status"] for r in history for o in r["outcomes"].values()}
            return len(history), len({r["request_id"] for r in history}), positions == list(range(1, head + 1)), statuses

    asyncio.run(setup())
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, db, tag, "40"]) for tag in ("p1", "p2")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert asyncio.run(check()) == (80, 80, True, {"applied"})
