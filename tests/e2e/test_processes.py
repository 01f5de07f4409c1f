"""Several processes share one SQLite file and one simulated hypervisor without losing a request."""

from __future__ import annotations

import asyncio
import pathlib
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

import pytest

import vmledger
from vmledger.eventstore.backends.common import chained_rows
from vmledger.eventstore.events import DomainDefined
from vmledger.eventstore.log import Metadata
from vmledger.eventstore.transfer import to_line
from tests.e2e.served import _child_defaults, cli

WRITER = """
import asyncio, sys
import vmledger

async def main(db, tag, n):
    async with vmledger.open(db, busy_timeout=60) as ledger:
        for i in range(n):
            await ledger.set(("a", "b")[i % 2], "vcpus", 1 + (i % 4), request_id=f"{tag}-{i}", principal=tag)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""

#: One process's share of the four-process test: scopes in turn on domains `a`, `b` (running) and `c` (stopped).
MANY = """
import asyncio, sys
import vmledger

SCOPES = ("both", "persistent", "live", "current")

async def main(db, tag, n):
    async with vmledger.open(db) as ledger:
        for i in range(n):
            await ledger.set("abc"[i % 3], "vcpus", 1 + (i % 4), scope=SCOPES[i % 4],
                             request_id=f"{tag}-{i}", principal=tag)

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


@pytest.mark.slow
def test_four_processes_writing_one_file(tmp_path: Any) -> None:
    """Four processes x 1,000 requests on shared domains of one SQLite file: all recorded once, none failed, gap-free, verified."""
    db = str(tmp_path / "shared.db")

    async def setup() -> None:
        async with vmledger.open(db) as ledger:
            for name in ("a", "b", "c"):
                await ledger.define(name, guest_type="pv", memory=2**30, max_memory=2**31, vcpus=1, max_vcpus=4)
            await ledger.start("a")
            await ledger.start("b")

    async def check() -> tuple:
        async with vmledger.open(db) as ledger:
            history = await ledger.history()
            positions = [r.position async for r in ledger.events()]
            head = await ledger.verify()
            statuses = {(r["domain"], s, o["status"]) for r in history for s, o in r["outcomes"].items()}
            return len(history), positions == list(range(1, head + 1)), statuses

    asyncio.run(setup())
    procs = [subprocess.Popen([sys.executable, "-c", MANY, db, f"p{p}", "1000"], stderr=subprocess.PIPE, text=True)
             for p in range(4)]
    outcomes = [(p.communicate(timeout=300)[1], p.returncode) for p in procs]
    assert outcomes == [("", 0)] * 4
    assert asyncio.run(check()) == (4000, True, {
        ("a", "persistent", "applied"), ("a", "live", "applied"), ("b", "persistent", "applied"),
        ("b", "live", "applied"), ("c", "persistent", "applied"), ("c", "live", "refused")})


HOLDER = """
import sqlite3, sys, time
input()  # wait for the ledger to open first: opening takes the write lock too
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(60)
"""


def test_a_file_locked_past_the_busy_timeout_is_a_clear_error(tmp_path: Any) -> None:
    """A request meeting a write lock held past the busy timeout raises StorageError saying so, writes nothing, and succeeds once the lock goes."""
    db = str(tmp_path / "l.db")

    async def go(holder: subprocess.Popen) -> tuple:
        async with vmledger.open(db, busy_timeout=0.3) as ledger:
            await ledger.define("a", guest_type="pv", memory=2**30, max_memory=2**31, vcpus=1, max_vcpus=4)
            head = await ledger.log.head()
            assert holder.stdin is not None and holder.stdout is not None
            holder.stdin.write("go\n")
            holder.stdin.flush()
            locked = holder.stdout.readline()
            start = time.monotonic()
            with pytest.raises(vmledger.StorageError) as caught:
                await ledger.set("a", "vcpus", 2, scope="persistent", request_id="r1")
            waited = time.monotonic() - start
            holder.kill()
            holder.wait()
            record = await ledger.set("a", "vcpus", 2, scope="persistent", request_id="r1")
            return (locked, str(caught.value), 0.3 <= waited < 10, await ledger.log.head() - head,
                    record["outcomes"]["persistent"]["status"])

    with subprocess.Popen([sys.executable, "-c", HOLDER, db], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as holder:
        assert asyncio.run(go(holder)) == (
            "locked\n", "the database stayed locked by another writer past the busy timeout (database is locked)",
            True, 2, "applied")


def test_a_ledger_decides_on_what_another_wrote_since_its_own_last_append(tmp_path: Any) -> None:
    """Two ledgers on one file take turns: each set is decided on the log as it is, not as its ledger last left it."""
    db = str(tmp_path / "shared.db")
    spec = dict(guest_type="pv", memory=2**30, max_memory=2**32, vcpus=1, max_vcpus=4)

    async def go() -> tuple:
        async with vmledger.open(db) as a, vmledger.open(db) as b:
            await a.define("web", **spec)
            await a.set("web", "memory", 2**31, scope="persistent")
            await b.set("web", "memory", 2**30, scope="persistent")
            # `a` last saw 2 GiB: asking for it again must change the config, not find it done.
            again = await a.set("web", "memory", 2**31, scope="persistent")
            memory = _persistent(await b.show("web"))["memory"]
            # `b` replaces the domain by one with a CD-ROM drive, which `a` has never seen.
            await b.undefine("web")
            await b.define("web", **spec, cdroms={"hdc": ""})
            media = await a.set("web", "media:hdc", "/iso/a.iso", scope="persistent")
            with pytest.raises(vmledger.UnknownPropertyError):
                await b.set("web", "media:hdd", "/iso/a.iso", scope="persistent")
            return (again["outcomes"]["persistent"]["status"], memory, media["outcomes"]["persistent"]["status"],
                    _persistent(await b.show("web"))["media:hdc"], await b.verify() > 0)

    assert asyncio.run(go()) == ("applied", 2**31, "applied", "/iso/a.iso", True)


def _persistent(shown: dict[str, Any]) -> dict[str, Any]:
    return {p["property"]: p["persistent"] for p in shown["properties"]}


def _fleet_export(path: pathlib.Path, count: int) -> list[str]:
    """Write an export of `count` domains, each defined by one event, to `path`; return its lines."""
    config = {"memory": 2**30, "max_memory": 2**31, "vcpus": 1, "max_vcpus": 4, "numa_nodes": 1}
    capabilities = {"balloon": True, "memory_hotplug": None, "vcpu_hotplug": None}
    meta, at, last, lines = Metadata(principal="p"), datetime(2026, 1, 1, tzinfo=timezone.utc), None, []
    for i in range(count):
        event = DomainDefined(domain=f"d{i:06d}", uuid=f"{i:032x}", guest_type="pv", config=config,
                              capabilities=capabilities)
        (row,), _ = chained_rows(f"{i:032x}", 0, [event], meta, at, i, last)
        last = row[-1]
        lines.append(to_line(row) + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    return lines


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT", "SIGTERM"])
def test_an_import_stopped_while_it_writes_leaves_the_ledger_empty(tmp_path: Any, how: str) -> None:
    """`vmledger import` killed (SIGKILL), interrupted (SIGINT, as Ctrl-C does) or stopped (SIGTERM) once it has written megabytes leaves an empty ledger, never a part of the export, nor all of it unseen; run again, it imports it all."""
    export, db = tmp_path / "fleet.jsonl", str(tmp_path / "copy.db")
    lines = _fleet_export(export, 10_000)
    wal = pathlib.Path(db + "-wal")
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "w", encoding="utf-8") as err:
        proc = subprocess.Popen([sys.executable, "-m", "vmledger.cli", "--db", db, "import", str(export)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=_child_defaults)
    try:
        deadline = time.monotonic() + 60
        # The whole import takes about 18 MiB of write-ahead log here; 8 MiB is past the first few thousand events.
        while proc.poll() is None and time.monotonic() < deadline and (
                not wal.exists() or wal.stat().st_size < 8 * 2**20):
            time.sleep(0.002)
        writing = proc.poll() is None
        proc.send_signal(getattr(signal, how))
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert writing, "the import ended before it was stopped"
    assert (code, stderr.read_text(encoding="utf-8")) == ((130, "") if how == "SIGINT" else (-getattr(signal, how), ""))

    async def head() -> int:
        async with vmledger.open(db) as ledger:
            return await ledger.verify()

    assert asyncio.run(head()) == 0
    again = cli(db, "import", str(export))
    assert (again.returncode, again.stdout, again.stderr) == (0, "imported 10000 events; chain verified\n", "")
    assert cli(db, "export").stdout == "".join(lines)
