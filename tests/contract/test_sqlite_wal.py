"""SQLite's WAL is checkpointed beside the writer, not inside the commit that fills it (issue #19)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import threading
from datetime import datetime, timezone
from typing import Any

from vmledger.eventstore.backends import sqlite as sqlite_backend
from vmledger.eventstore.backends.sqlite import SQLiteEventLog
from vmledger.eventstore.events import DomainDefined
from vmledger.eventstore.log import Metadata
from vmledger.projections.store import TableProjector

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
CONFIG = {"memory": 2**30, "max_memory": 2**32, "vcpus": 1, "max_vcpus": 2, "numa_nodes": 1}


def test_committed_events_reach_the_database_file_while_the_ledger_stays_open(tmp_path: str) -> None:
    """Events committed a moment ago are in the database file itself, without its WAL, while the writer is open."""
    db, copy = os.path.join(tmp_path, "l.db"), os.path.join(tmp_path, "copy.db")

    async def go() -> list[tuple[int, str]]:
        async with SQLiteEventLog(db, TableProjector()) as log:
            for i in range(40):  # far fewer pages than the writer's own checkpoint threshold
                name = f"d{i}"
                await log.append(name, 0, [DomainDefined(domain=name, uuid=name, guest_type="pv", config=CONFIG,
                                                         capabilities={})], Metadata(), now=T0)
            await asyncio.sleep(1.0)  # the checkpointer gathers commits for 0.1 s, then copies them
            shutil.copyfile(db, copy)  # the file alone: what is only in the WAL is not in the copy
            with contextlib.closing(sqlite3.connect(copy)) as conn:
                return conn.execute("SELECT count(*), max(type) FROM events").fetchall()

    assert asyncio.run(go()) == [(40, "DomainDefined")]


def test_a_ledger_closed_just_after_a_commit_does_not_wait_out_the_checkpointers_gathering(
        tmp_path: str, monkeypatch: Any) -> None:
    """Closing the log ends the checkpointer's wait for more commits: a command that just wrote exits at once."""
    monkeypatch.setattr(sqlite_backend, "_CHECKPOINT_SECONDS", 3600.0)  # a gathering no test outlives
    db = os.path.join(tmp_path, "l.db")

    async def go() -> None:
        async with SQLiteEventLog(db, TableProjector()) as log:
            await log.append("d", 0, [DomainDefined(domain="d", uuid="d", guest_type="pv", config=CONFIG,
                                                    capabilities={})], Metadata(), now=T0)  # nudges the checkpointer

    closing = threading.Thread(target=asyncio.run, args=(go(),), daemon=True)
    closing.start()
    closing.join(60)
    assert not closing.is_alive(), "the log's close waited for the checkpointer's gathering interval"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchall() == [(1,)]


def test_a_close_that_comes_as_the_checkpointer_wakes_still_stops_it(tmp_path: str, monkeypatch: Any) -> None:
    """A close whose nudge lands between the end of the checkpointer's gathering and its clearing of the nudge stops it.

    The close sets its flag, nudges, and joins the thread: were the nudge
    cleared and the flag not looked at again, the thread would wait for
    another nudge for good, and the close with it.
    """
    monkeypatch.setattr(sqlite_backend, "_CHECKPOINT_SECONDS", 0.01)
    db = os.path.join(tmp_path, "l.db")
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
    checkpointer = sqlite_backend._Checkpointer(db, 1000)
    stop = checkpointer._stop

    class CloseComesNow:
        """A fake for a race no test can time: the close's two steps come just after the gathering ends."""

        def wait(self, timeout: float) -> bool:
            ended = stop.wait(timeout)
            stop.set()  # the close's flag, then its nudge, before the thread clears the nudge
            checkpointer._due.set()
            return ended

        def is_set(self) -> bool:
            return stop.is_set()

    checkpointer._stop = CloseComesNow()  # type: ignore[assignment]
    checkpointer.nudge()
    checkpointer._thread.join(30)
    stopped = not checkpointer._thread.is_alive()
    checkpointer._stop = stop
    checkpointer.close()  # nudges again: ends a thread the race left waiting
    assert stopped, "the checkpointer waited for another nudge after a close"
