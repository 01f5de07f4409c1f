"""SQLite when the disk fills up or the file is read-only: a clear error, and no committed event lost (issue #6).

A full disk is made two ways: the backend's `max_pages` cap (SQLite's
per-connection `max_page_count`, the same `SQLITE_FULL` a full disk gives),
which runs everywhere, and a real tmpfs of a few hundred KiB, which needs the
right to mount.  A read-only database is a root-owned file without write
permission, opened by a process that cannot override permissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Iterator

import pytest

from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.eventstore.backends.sqlite import SQLiteEventLog
from vmledger.eventstore.errors import HypervisorError, StorageError
from vmledger.eventstore.hypervisor import DomainSpec
from vmledger.projections.store import TableProjector
from vmledger.cli import main
from vmledger.ledger import Ledger

GiB = 2**30
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FULL = ("the disk is full, or the database reached its size limit; "
        "the failed write was not stored (database or disk is full)")
READ_ONLY = ("the database is read-only for this process: check the permissions of the file and its directory, "
             "and the mount (attempt to write a readonly database)")
#: What a `set` of vcpus on a running domain appends, in order; a full disk may cut it short anywhere.
SET_EVENTS = ["VcpusChangeRequested", "VcpusChangeApplied", "VcpusChangeApplied"]
#: Hypervisor timeout: an abandoned request is resolved by `observe` once it is older than twice this.
TIMEOUT = 0.05


@contextlib.asynccontextmanager
async def _ledger(db: str, max_pages: int | None = None) -> AsyncIterator[Ledger]:
    """Open the ledger at `db`, its file capped at `max_pages` pages if given."""
    async with SQLiteEventLog(db, TableProjector(), max_pages=max_pages) as log:
        yield Ledger(log, SimulatedHypervisor.for_database(db), clock=lambda: datetime.now(timezone.utc),
                     new_id=lambda: uuid.uuid4().hex, hypervisor_timeout=TIMEOUT)


async def _define_web(db: str) -> list[str]:
    """Define and start `web` with one request recorded; return the export lines."""
    async with _ledger(db) as ledger:
        await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4)
        await ledger.start("web")
        await ledger.set("web", "vcpus", 3)
        return [line async for line in ledger.export()]


def _page_count(db: str) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("PRAGMA page_count").fetchone()[0]


async def _fill(ledger: Ledger) -> tuple[list[str], StorageError]:
    """Send requests with long reasons until one fails; return the export before that request, and its error."""
    for i in range(1000):
        before = [line async for line in ledger.export()]
        try:
            await ledger.set("web", "vcpus", 2 + i % 2, reason="filler " * 140)
        except StorageError as e:
            return before, e
    raise AssertionError("the capped database never filled up")


async def _recover(db: str) -> tuple[list[str], int, list[str]]:
    """With space back: resolve what the failure left in flight, send one request; return export, verify, statuses."""
    async with _ledger(db) as ledger:
        await asyncio.sleep(3 * TIMEOUT)  # the failed request is now old enough for observe to resolve
        await ledger.observe("web")
        await ledger.set("web", "vcpus", 4)
        statuses = sorted({o["status"] for r in await ledger.history("web") for o in r["outcomes"].values()})
        return [line async for line in ledger.export()], await ledger.verify(), statuses


def _full_then_recovered(db: str) -> tuple[Any, ...]:
    """Fill a capped ledger until a request fails, then reopen it uncapped and recover; return what each step saw."""

    async def go() -> tuple[Any, ...]:
        committed = await _define_web(db)
        async with _ledger(db, max_pages=_page_count(db)) as ledger:
            before, error = await _fill(ledger)
            after = [line async for line in ledger.export()]
            verified_while_full = await ledger.verify()
        return (committed, before, error, after, verified_while_full, *await _recover(db))

    return asyncio.run(go())


def test_full_disk_is_a_storage_error_that_keeps_every_committed_event(tmp_path: Any) -> None:
    """On a full database `set` raises the disk-full StorageError, keeps every committed event, and verifies after."""
    committed, before, error, after, verified_while_full, recovered, verified, _ = _full_then_recovered(
        str(tmp_path / "l.db"))
    added = [json.loads(line)["type"] for line in after[len(before):]]
    # The disk filled under `…Requested` (the error as is), or under an outcome: then it names the request.
    root = error.__cause__ if isinstance(error.__cause__, StorageError) else error
    assert (str(root), type(root.__cause__)) == (FULL, sqlite3.OperationalError)
    assert error is root or re.fullmatch(
        rf"request \w+ is recorded, but not all its outcomes: {re.escape(FULL)}; "
        "it stays in flight until observe resolves it", str(error))
    assert (before[:len(committed)], after[:len(before)], recovered[:len(after)]) == (committed, before, after)
    assert added in [SET_EVENTS[:n] for n in range(len(SET_EVENTS))]  # whole transactions, never the whole request
    assert (verified_while_full, verified) == (len(after), len(recovered))


def test_full_disk_leaves_no_scope_in_flight_once_space_is_back(tmp_path: Any) -> None:
    """After the disk-full failure and `observe` with space back, every scope of every request has an outcome (issue #6)."""
    *_, statuses = _full_then_recovered(str(tmp_path / "l.db"))
    assert "in_flight" not in statuses


def test_full_disk_fails_every_append_of_a_group_commit_alike(tmp_path: Any) -> None:
    """Concurrent requests on a full database each succeed whole or raise the disk-full StorageError; all verifies."""
    db = str(tmp_path / "l.db")

    async def go() -> tuple[Any, ...]:
        await _define_web(db)
        async with _ledger(db, max_pages=_page_count(db)) as ledger:
            before, _ = await _fill(ledger)
            results = await asyncio.gather(
                *(ledger.set("web", "vcpus", 2 + i % 3, reason="again " * 100) for i in range(8)),
                return_exceptions=True)
            after = [line async for line in ledger.export()]
            return before, results, after, await ledger.verify()

    before, results, after, verified = asyncio.run(go())
    assert {str(r) for r in results if isinstance(r, BaseException)} == {FULL}
    assert (after[:len(before)], verified) == (before, len(after))


@pytest.fixture
def small_filesystem(tmp_path: Any) -> Iterator[str]:
    """Mount a 500 KiB tmpfs for the test and return its path; skip where mounting is not permitted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=500k,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()}); the max_pages tests cover a full disk")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def _cli(db: str, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--db", db, "--timeout", str(TIMEOUT), *args])
    return code, out.getvalue(), err.getvalue()


def test_cli_on_a_full_filesystem_exits_1_with_one_line_and_recovers(small_filesystem: str) -> None:
    """On a really full filesystem `set` exits 1 naming the full disk (and the request it leaves in flight, where the
    disk filled up between its two commits); events survive and verify once space is back."""
    db = os.path.join(small_filesystem, "l.db")
    assert _cli(db, "define", "web", "--type", "pv", "--memory", "1GiB", "--max-memory", "4GiB",
                "--vcpus", "2", "--max-vcpus", "4")[0] == 0
    assert _cli(db, "start", "web")[0] == 0
    committed = _cli(db, "export")[1]
    for i in range(1000):
        code, _, err = _cli(db, "set", "web", "vcpus", str(2 + i % 2), "--reason", "filler " * 140)
        if code not in (0, 3):
            break
    full = (code, err, _cli(db, "export")[1].startswith(committed), _cli(db, "verify")[0])
    subprocess.run(["mount", "-o", "remount,size=4m", small_filesystem], check=True)
    asyncio.run(asyncio.sleep(3 * TIMEOUT))
    recovered = [_cli(db, *args)[0] for args in (["observe", "web"], ["set", "web", "vcpus", "4"], ["verify"])]
    code, err, kept, verified = full
    assert (code, kept, verified) == (1, True, 0)
    assert re.fullmatch(rf"vmledger: {re.escape(FULL)}\n|vmledger: request \w+ is recorded, but not all its outcomes: "
                        rf"{re.escape(FULL)}; it stays in flight until observe resolves it\n", err), err
    assert (recovered, _cli(db, "export")[1].startswith(committed)) == ([0, 0, 0], True)


# Drop the right to override file permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from the
# bounding set, then exec: root then obeys the file's mode like any user.
_WITHOUT_OVERRIDE = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "for cap in (1, 2):\n"
    "    if libc.prctl(24, cap, 0, 0, 0) != 0:\n"  # PR_CAPBSET_DROP
    "        sys.exit(f'cannot drop capability {cap}: errno {ctypes.get_errno()}')\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


def _cli_without_write_permission(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `vmledger` in a process that cannot override file permissions (root drops the capability)."""
    prefix = ["-c", _WITHOUT_OVERRIDE] if os.geteuid() == 0 else []
    return subprocess.run([sys.executable, *prefix, "-m", "vmledger.cli", "--db", db, *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)


def test_read_only_database_is_a_storage_error_and_loses_nothing(tmp_path: Any) -> None:
    """A database its process may not write makes `set` exit 1 naming the read-only file; every event stays."""
    db = str(tmp_path / "ro" / "l.db")
    os.mkdir(os.path.dirname(db))
    committed = asyncio.run(_define_web(db))
    os.chmod(db, 0o444)
    os.chmod(os.path.dirname(db), 0o555)  # nor may it create the -wal and -shm files beside it
    try:
        proc = _cli_without_write_permission(db, "set", "web", "vcpus", "4")
    finally:
        os.chmod(os.path.dirname(db), 0o755)
        os.chmod(db, 0o644)

    async def after() -> tuple[list[str], int]:
        async with _ledger(db) as ledger:
            return [line async for line in ledger.export()], await ledger.verify()

    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", f"vmledger: {db}: {READ_ONLY}\n")
    assert asyncio.run(after()) == (committed, len(committed))


def test_database_in_a_missing_directory_is_one_line_naming_the_path_rule(tmp_path: Any) -> None:
    """A database path whose directory does not exist exits 1 with one line saying what the path must be."""
    db = str(tmp_path / "gone" / "l.db")
    code, out, err = _cli(db, "init")
    assert (code, out, err) == (1, "", f"vmledger: {db}: cannot open the database file: the path must name a file in "
                                       "an existing, writable directory (unable to open database file)\n")


def test_a_simulator_save_that_fails_on_a_full_filesystem_changes_nothing(small_filesystem: str) -> None:
    """A change the simulator cannot save fails, and the same adapter's next call, and a fresh one, see the state as the
    last change saved left it."""
    sim = SimulatedHypervisor(os.path.join(small_filesystem, "sim.json"))
    filler = os.path.join(small_filesystem, "filler")
    spec = DomainSpec(name="web", uuid="u", guest_type="pv", capabilities=(),
                      config=(("max_memory", 4 * 2**30), ("max_vcpus", 4), ("memory", 2**30), ("numa_nodes", 1),
                              ("vcpus", 2)))

    async def go() -> tuple:
        await sim.define(spec)
        await sim.start("web")
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        # A change appends a line: it fits in what the file's last block has left, until one does not.
        saved = 2
        with pytest.raises(HypervisorError, match="cannot keep its state"):
            for i in range(100_000):
                await sim.apply_live("web", "vcpus", 1 + i % 4)
                saved = 1 + i % 4
        os.unlink(filler)
        seen = [dict((await s.observe("web")).live)["vcpus"] for s in (sim, SimulatedHypervisor(sim.state_path))]
        return seen, saved, (await sim.apply_live("web", "vcpus", 1 + saved % 4)).value, 1 + saved % 4

    seen, saved, applied, asked = asyncio.run(go())
    assert (seen, applied) == ([saved, saved], asked)


# Run in a process of its own: a connection left open keeps its process from exiting, which is the failure.
_CANCELLED_CLOSE = """
import asyncio, sys, threading, time, uuid
from datetime import datetime, timezone
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.eventstore.backends import sqlite
from vmledger.eventstore.backends.sqlite import SQLiteEventLog
from vmledger.ledger import Ledger
from vmledger.projections.store import TableProjector

stop = sqlite._Checkpointer.close
def slow_stop(self):
    time.sleep(2)  # a checkpoint of a long WAL under way: the close waits for it
    stop(self)
sqlite._Checkpointer.close = slow_stop

async def main(db):
    log = SQLiteEventLog(db, TableProjector())
    await log.__aenter__()
    ledger = Ledger(log, SimulatedHypervisor.for_database(db), clock=lambda: datetime.now(timezone.utc),
                    new_id=lambda: uuid.uuid4().hex)
    await ledger.define("web", guest_type="pv", memory=2**30, max_memory=2**32, vcpus=2, max_vcpus=4)
    closing = asyncio.ensure_future(log.aclose())
    await asyncio.sleep(0.01)  # the close waits for the checkpointer
    closing.cancel()
    try:
        await closing
    except asyncio.CancelledError:
        left = [t for t in threading.enumerate() if "_connection_worker_thread" in t.name and t.is_alive()]
        print("cancelled", len(left))

asyncio.run(main(sys.argv[1]))
"""


def test_a_close_cancelled_halfway_still_closes_its_reader_and_the_process_exits(tmp_path: Any) -> None:
    """Ctrl-C while a ledger closes (a command's last step) closes it whole, then raises: no thread is left.

    aiosqlite's connection thread is no daemon: with the reader left open,
    the process never exits (`vmledger rebuild` printed its line, then
    hung).  The cancellation comes while the close waits for the
    checkpointer, before it closes the reader: the checkpointer's stop is
    made slow here, as a checkpoint of a long WAL under way makes it.
    """
    done = subprocess.run([sys.executable, "-c", _CANCELLED_CLOSE, str(tmp_path / "l.db")],
                          capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout, done.stderr) == (0, "cancelled 0\n", "")
