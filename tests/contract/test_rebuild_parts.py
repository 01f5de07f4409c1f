"""A rebuild folded by worker processes, a part of the streams each, writes what one process's fold writes (SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import sqlite3
import tempfile
import threading
import time
from datetime import timedelta
from typing import Any, Awaitable, Generator

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import vmledger.projections._parts
import vmledger.projections.store
import vmledger.projections.verify
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.eventstore.backends.common import COLUMNS, _link
from vmledger.eventstore.backends.sqlite import SQLiteEventLog
from vmledger.eventstore.catalogue import Outcome
from vmledger.eventstore.codec import dumps, encode
from vmledger.eventstore.errors import ChainBrokenError, StorageError, VmledgerError
from vmledger.eventstore.events import DomainDefined, DomainStarted, Event, change_event
from vmledger.eventstore.log import GENESIS_HASH, Metadata, RecordedEvent, timestamp
from vmledger.ledger import Ledger
from vmledger.projections._parts import part_of
from vmledger.projections.store import TableProjector, table_rows
from tests.strategies import LOG_START, any_logs, recorded

CONFIG = {"memory": 2**30, "max_memory": 2**32, "vcpus": 1, "max_vcpus": 2, "numa_nodes": 1}


def _row(rec: RecordedEvent) -> tuple[Any, ...]:
    """Return the stored row of a record; its hash is not a rebuild's business."""
    return (rec.position, rec.stream, rec.version, *encode(rec.event), dumps(rec.metadata.to_dict()),
            timestamp(rec.recorded_at), "")


def _stored(path: str, rows: list[tuple[Any, ...]]) -> None:
    """Make a ledger file at `path` whose events table holds `rows`, and whose projections are empty."""
    async def schema() -> None:
        async with SQLiteEventLog(path, TableProjector()):
            pass

    asyncio.run(schema())
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def _rebuilt(path: str, projector: TableProjector) -> tuple[Any, ...]:
    """Rebuild the file's projections; return the position and every row, or the error's type and text."""
    async def go() -> tuple[Any, ...]:
        async with SQLiteEventLog(path, projector) as log:
            try:
                position = await log.rebuild()
            except (ValueError, StorageError) as e:
                return ("raised", type(e), str(e), await table_rows(log.fetch_all))
            return ("rebuilt", position, await table_rows(log.fetch_all))

    return asyncio.run(go())


def _both(rows: list[tuple[Any, ...]], parts: int = 2, chunk: int = 3) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Return what a rebuild in one process and one in `parts` worker processes make of a file holding `rows`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ledger.db")
        _stored(path, rows)
        alone = _rebuilt(path, TableProjector(chunk=chunk, parts=1))
        split = _rebuilt(path, TableProjector(chunk=chunk, parts=parts, parts_from=0))
    return alone, split


def _change(outcome: Outcome, request_id: str, **fields: Any) -> Event:
    return change_event("memory", outcome)(request_id=request_id, property="memory", **fields)


def _fleet() -> list[tuple[str, Event]]:
    """Return the events of six running domains, three requests each, one completing late, the last still open."""
    events: list[tuple[str, Event]] = []
    names = [f"domain-{c}" for c in "abcdef"]
    for name in names:
        events += [(name, DomainDefined(domain=name, uuid=name, guest_type="pv", config=CONFIG, capabilities={})),
                   (name, DomainStarted(config=CONFIG))]
    for i in range(3):
        for name in names:
            rid, size = f"{name}-{i}", 2**29 + i
            events.append((name, _change(Outcome.REQUESTED, rid, value=size, scope="both", principal="p")))
            if i < 2:
                events += [(name, _change(Outcome.APPLIED, rid, scope="persistent", requested=size, value=size)),
                           (name, _change(Outcome.PARTIALLY_APPLIED, rid, scope="live", requested=size,
                                          value=size - 1))]
    for name in names:  # a second live outcome of a request completed long before
        events.append((name, _change(Outcome.APPLIED, f"{name}-0", scope="live", requested=2**29, value=2**29)))
    return events


_TWO = [("a", DomainDefined(domain="a", uuid="a", guest_type="pv", config=CONFIG, capabilities={})),
        ("b", DomainDefined(domain="b", uuid="b", guest_type="pv", config=CONFIG, capabilities={}))]
_ASKED = ("a", _change(Outcome.REQUESTED, "r", value=2**29, scope="persistent", principal="p"))
# Outcomes on another domain's stream than their request's: the parts cannot fold them alone,
# whether the request is open, or complete and written out, when the other part reaches them.
_ACROSS = recorded([*_TWO, _ASKED, ("b", _change(Outcome.APPLIED, "r", scope="persistent", requested=2**29,
                                                 value=2**29))])
_ACROSS_LATE = recorded([
    *_TWO, _ASKED, ("a", _change(Outcome.APPLIED, "r", scope="persistent", requested=2**29, value=2**29)),
    ("b", _change(Outcome.REFUSED, "r", scope="live", requested=2**29, value=None)),
    ("a", _change(Outcome.FAILED, "r", scope="live", requested=2**29, value=None)),
])


@settings(database=None, deadline=None, max_examples=20)
@given(any_logs(), st.integers(1, 4) | st.integers(1, 60), st.integers(2, 3))
@example(records=_ACROSS, chunk=1, parts=2)
@example(records=_ACROSS_LATE, chunk=1, parts=2)
def test_a_rebuild_in_parts_writes_the_rows_of_one_process_or_raises_its_error(
    records: list[RecordedEvent], chunk: int, parts: int,
) -> None:
    """On any log, worker processes folding a part of the streams each write the rows, and raise the error, of one process's fold."""
    alone, split = _both([_row(r) for r in records], parts, chunk)
    assert split == alone


def test_the_two_domains_of_the_logs_fold_in_different_parts() -> None:
    """The generated logs' domains `a` and `b` fold in different worker processes, so their property tests split."""
    assert (part_of("a", 2), part_of("b", 2), part_of("", 2)) == (1, 0, 0)


async def _append_fleet(path: str, log_class: Any = SQLiteEventLog) -> dict[str, list[tuple]]:
    """Append `_fleet()` to a new ledger at `path` (a DSN for PostgreSQL), an event an append; return the rows written."""
    async with log_class(path, TableProjector()) as log:
        for rec in recorded(_fleet()):
            await log.append(rec.stream, rec.version - 1, [rec.event], Metadata(principal="p"),
                             now=LOG_START + timedelta(seconds=rec.position))
        return await table_rows(log.fetch_all)


def test_a_rebuild_in_parts_writes_the_rows_the_appends_wrote(tmp_path: Any) -> None:
    """Three worker processes rebuild a fleet's rows, late outcomes and open requests too, as the appends wrote them, reporting progress up to the head."""
    path = str(tmp_path / "ledger.db")
    seen: list[tuple[int, int]] = []

    async def go() -> tuple[dict, int, dict]:
        incremental = await _append_fleet(path)
        async with SQLiteEventLog(path, TableProjector(chunk=4, parts=3, parts_from=0)) as log:
            position = await log.rebuild(lambda at, head: seen.append((at, head)))
            return incremental, position, await table_rows(log.fetch_all)

    incremental, position, rebuilt = asyncio.run(go())
    heads = {head for _, head in seen}
    assert (rebuilt, position, heads, seen[-1][0], [at for at, _ in seen] == sorted(at for at, _ in seen)) == (
        incremental, 60, {60}, 60, True)
    assert {part_of(f"domain-{c}", 3) for c in "abcdef"} == {0, 1, 2}  # every worker has domains to fold


@pytest.mark.parametrize("limit", [1, vmledger.projections._parts._EARLY_BYTES])
def test_a_rebuild_in_parts_takes_the_messages_its_workers_sent_while_it_deleted(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, limit: int,
) -> None:
    """The workers' messages read ahead while the rebuild deletes the old rows (each worker's up to its request for a stored row or its end; or one, the limit of bytes reached) are taken first, in order: the rows are the appends', and the workers' (no fold in one process)."""
    parts = vmledger.projections._parts
    early: list[Any] = []
    enter, exit_, fold = parts._Early.__enter__, parts._Early.__exit__, parts.fold_in_parts

    def cleared(first: Any) -> Generator[Any, Any, None]:  # deletes, then waits for the reading ahead, up to 30 s
        yield from first
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and early[0]._thread.is_alive() and not all(
                w.early and pickle.loads(w.early[-1])[0] in ("need", "done") for w in early[0]._workers):
            time.sleep(0.01)

    read: list[int] = []
    monkeypatch.setattr(parts, "_EARLY_BYTES", limit)
    monkeypatch.setattr(parts._Early, "__enter__", lambda self: early.append(self) or enter(self))
    monkeypatch.setattr(parts._Early, "__exit__",
                        lambda self, *exc: exit_(self, *exc) or read.append(sum(len(w.early) for w in self._workers)))
    monkeypatch.setattr(vmledger.projections.store, "fold_in_parts",
                        lambda *args: fold(*args[:-1], cleared(args[-1])))  # `first` taken once the workers run
    path = str(tmp_path / "ledger.db")

    async def go() -> tuple[dict, int, dict]:
        incremental = await _append_fleet(path)
        async with SQLiteEventLog(path, TableProjector(chunk=4, parts=3, parts_from=0)) as log:
            return incremental, await log.rebuild(), await table_rows(log.fetch_all)

    with caplog.at_level(logging.DEBUG, logger="vmledger"):
        incremental, position, rebuilt = asyncio.run(go())
    assert (rebuilt, position, caplog.messages) == (incremental, 60, [])
    # One message; or each worker's rows, and its request or its end.
    assert (read == [1]) if limit == 1 else (len(read) == 1 and read[0] >= 2 * 3)


def test_a_rebuild_whose_workers_cannot_start_folds_in_one_process(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A rebuild whose worker processes fail to start (no interpreter at the path, a fault made by patching it) still writes the right rows, and logs why."""
    path = str(tmp_path / "ledger.db")
    _stored(path, [_row(r) for r in recorded(_fleet())])
    alone = _rebuilt(path, TableProjector(parts=1))
    monkeypatch.setattr(vmledger.projections._parts.sys, "executable", str(tmp_path / "no-python"))
    with caplog.at_level(logging.WARNING, logger="vmledger"):
        split = _rebuilt(path, TableProjector(parts=2, parts_from=0))
    assert (split, [r.message.split(" (")[0] for r in caplog.records]) == (
        alone, ["rebuild: the worker processes failed"])


def _indexes(path: str) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name").fetchall()


@pytest.mark.parametrize("how", ["folded", "workers fail", "workers give up", "row does not decode"])
def test_a_rebuild_in_parts_leaves_the_indexes_the_schema_makes(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, how: str,
) -> None:
    """A rebuild in parts drops the secondary indexes of the tables it fills and builds them again: after it, the file has every index it had, whether the workers folded, failed to start, gave up (the fold goes on in one process) or met a row that does not decode."""
    path = str(tmp_path / "ledger.db")
    _stored(path, [_row(r) for r in recorded(_fleet())])
    before = _indexes(path)
    if how == "workers fail":  # before the indexes go
        monkeypatch.setattr(vmledger.projections._parts.sys, "executable", str(tmp_path / "no-python"))
    if how == "workers give up":  # after: a fake answer, where a real one needs a log the store accepts but no decision writes
        monkeypatch.setattr(vmledger.projections._parts._Worker, "receive", lambda self: ("unfolded", "injected"))
    if how == "row does not decode":
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("UPDATE events SET data = '{not json' WHERE position = 40")
    outcome = _rebuilt(path, TableProjector(chunk=4, parts=2, parts_from=0))
    assert (outcome[0], _indexes(path)) == ("raised" if how == "row does not decode" else "rebuilt", before)
    assert {"history_domain", "history_requested", "episodes_kept"} <= {name for name, _ in before}


def test_a_rebuild_in_parts_of_a_row_that_does_not_decode_raises_and_changes_nothing(tmp_path: Any) -> None:
    """A row whose data does not decode fails the rebuild in parts as in one process, and the projection rows stay as they were."""
    path = str(tmp_path / "ledger.db")
    rows = [_row(r) for r in recorded(_fleet())]
    _stored(path, rows)
    before = _rebuilt(path, TableProjector(parts=1))
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE events SET data = '{not json' WHERE position = 40")
    split = _rebuilt(path, TableProjector(parts=2, parts_from=0))
    alone = _rebuilt(path, TableProjector(parts=1))
    assert (split[:2], split == alone, split[3]) == (("raised", StorageError), True, before[2])


def _children() -> set[str]:
    """Return the process ids of this process's children, zombies too, from /proc."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            if int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.add(pid)
    return found


def test_a_rebuild_in_parts_that_fails_to_write_stops_its_workers_and_changes_nothing(tmp_path: Any) -> None:
    """A rebuild in parts on a file too small for its rows fails as a full disk, leaves no worker process running, and writes no row."""
    path = str(tmp_path / "ledger.db")
    _stored(path, [_row(r) for r in recorded(_fleet())])
    with contextlib.closing(sqlite3.connect(path)) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    before = _children()

    async def go() -> tuple[str, dict]:
        async with SQLiteEventLog(path, TableProjector(chunk=4, parts=2, parts_from=0), max_pages=pages) as log:
            with pytest.raises(StorageError) as raised:
                await log.rebuild()
            return str(raised.value), await table_rows(log.fetch_all)

    message, rows = asyncio.run(go())
    assert (message.startswith("the disk is full"), rows, _children() - before) == (
        True, {table: [] for table in rows}, set())


@pytest.mark.parametrize("when", ["folding", "deleting the old rows"])
def test_a_cancelled_rebuild_in_parts_stops_at_its_next_statement_and_changes_nothing(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, when: str,
) -> None:
    """A rebuild in parts cancelled (Ctrl-C) while it folds, or while it deletes the old rows (its workers' messages read ahead meanwhile), rolls back at its next statement, rather than run on unseen and commit: the rows it would have replaced stay, its workers and its reading thread stop, and a rebuild after it replaces them (in one process: `test_store.py`)."""
    path = str(tmp_path / "ledger.db")
    before = _children()

    async def go() -> tuple[Any, ...]:
        incremental = await _append_fleet(path)
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("DELETE FROM history")  # what the rebuild would put back
        seen: list[int] = []
        folding, resume = asyncio.Event(), threading.Event()
        loop = asyncio.get_running_loop()

        def hold() -> None:  # in the writer thread: hold it until the caller is cancelled
            loop.call_soon_threadsafe(folding.set)
            resume.wait(30)

        def progress(at: int, head: int) -> None:
            seen.append(at)
            if when == "folding" and len(seen) == 1:
                hold()

        def held(first: Any) -> Generator[Any, Any, None]:  # the deletes, held after the first
            for n, step in enumerate(first):
                yield step
                if n == 0:
                    hold()

        if when == "deleting the old rows":
            fold = vmledger.projections._parts.fold_in_parts
            monkeypatch.setattr(vmledger.projections.store, "fold_in_parts",
                                lambda *args: fold(*args[:-1], held(args[-1])))
        projector = TableProjector(chunk=4, parts=2, parts_from=0)
        async with SQLiteEventLog(path, projector) as log:
            rebuild = asyncio.ensure_future(log.rebuild(progress))
            await folding.wait()
            rebuild.cancel()
            with pytest.raises(asyncio.CancelledError):
                await rebuild
            resume.set()
        # Closed: the writer thread has ended its transaction, one way or the other.
        async with SQLiteEventLog(path, projector) as log:
            left = await table_rows(log.fetch_all)
            await log.rebuild()
            return incremental, seen, left, await table_rows(log.fetch_all)

    incremental, seen, left, rebuilt = asyncio.run(go())
    reading = [t for t in threading.enumerate() if t.name == "vmledger-rebuild-early"]
    assert (max(seen, default=0) < 60, left, rebuilt, _children() - before, reading) == (
        True, {**incremental, "history": []}, incremental, set(), [])


def test_a_rebuild_in_parts_reads_the_file_the_log_opened_after_a_change_of_directory(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A log opened by a relative path rebuilds in parts from its own file after the process changes directory, with no fallback."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    _stored("ledger.db", [_row(r) for r in recorded(_fleet())])
    alone = _rebuilt("ledger.db", TableProjector(parts=1))

    async def go() -> tuple[Any, ...]:
        async with SQLiteEventLog("ledger.db", TableProjector(parts=2, parts_from=0)) as log:
            os.chdir(tmp_path / "elsewhere")
            position = await log.rebuild()
            return ("rebuilt", position, await table_rows(log.fetch_all))

    with caplog.at_level(logging.DEBUG, logger="vmledger"):
        split = asyncio.run(go())
    assert (split, os.listdir(tmp_path / "elsewhere"), [r.message for r in caplog.records]) == (alone, [], [])


def test_opening_a_ledger_of_older_rules_rebuilds_it_in_parts(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A writer opening a ledger whose rows older rules made rebuilds them in worker processes, to the rows the
    appends wrote; that it used them shows when they cannot start (a fault made by patching the interpreter's path)."""
    path = str(tmp_path / "ledger.db")

    def of_older_rules() -> None:
        # As a version that named no rules left the file: its schema stamp, no rules row, a row its rules made.
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("PRAGMA user_version = 1")
            conn.execute("DELETE FROM projection_position WHERE name = 'rules'")
            conn.execute("UPDATE domains SET version = version + 1")

    async def reopened() -> dict:
        async with SQLiteEventLog(path, TableProjector(chunk=4, parts=3, parts_from=0)) as log:
            return await table_rows(log.fetch_all)

    incremental = asyncio.run(_append_fleet(path))
    of_older_rules()
    assert asyncio.run(reopened()) == incremental
    of_older_rules()
    monkeypatch.setattr(vmledger.projections._parts.sys, "executable", str(tmp_path / "no-python"))
    with caplog.at_level(logging.WARNING, logger="vmledger"):
        assert asyncio.run(reopened()) == incremental
    assert [r.message.split(" (")[0] for r in caplog.records] == ["rebuild: the worker processes failed"]


class _Held(TableProjector):
    """A projector whose first rebuild or fold in parts, once under way, holds its thread until told to go on.

    `ended` is set once the held steps are closed, whether they ran to their
    end or were stopped; `taken` counts them.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.holding, self.resume, self.ended, self.taken = threading.Event(), threading.Event(), threading.Event(), 0

    async def cancel_while_held(self, work: Awaitable[Any]) -> None:
        """Run `work` until this projector holds its thread, cancel it, then let the thread go on."""
        task = asyncio.ensure_future(work)
        assert await asyncio.to_thread(self.holding.wait, 30), "the fold never began"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        self.resume.set()

    def _held(self, steps: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
        held, reply = not self.taken, None
        try:
            with contextlib.closing(steps):
                while True:
                    try:
                        step = steps.send(reply)
                    except StopIteration as done:
                        return done.value
                    if held:
                        self.taken += 1
                        if self.taken == 3:  # the fold's first statements are done
                            self.holding.set()
                            self.resume.wait(30)
                    reply = yield step
        finally:
            if held:
                self.ended.set()

    def upgrade(self, parts: Any = None, **kwargs: Any) -> Generator[Any, Any, bool]:
        return (yield from self._held(super().upgrade(parts, **kwargs)))

    def fold_in_parts(self, *args: Any, **kwargs: Any) -> Generator[Any, Any, bool]:
        return (yield from self._held(super().fold_in_parts(*args, **kwargs)))


@pytest.mark.parametrize("parts", [1, 2])
def test_an_open_cancelled_while_it_rebuilds_rows_of_older_rules_changes_nothing(tmp_path: Any, parts: int) -> None:
    """Opening a ledger of older rules rebuilds its rows; cancelled meanwhile (Ctrl-C), it rolls back at its next statement rather than finish unseen: the rows and the schema stamp stay, and the next open rebuilds them."""
    path = str(tmp_path / "ledger.db")
    incremental = asyncio.run(_append_fleet(path))
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        # As a version that named no rules left the file (see the test above).
        conn.execute("PRAGMA user_version = 1")
        conn.execute("DELETE FROM projection_position WHERE name = 'rules'")
        conn.execute("UPDATE domains SET version = version + 1")
    before = _children()

    projector = _Held(chunk=4, parts=parts, parts_from=0)
    asyncio.run(projector.cancel_while_held(SQLiteEventLog(path, projector).__aenter__()))
    with contextlib.closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")  # waits for the writer thread to end its transaction
        left = conn.execute("PRAGMA user_version").fetchone()[0], sorted(conn.execute("SELECT version FROM domains"))
        conn.execute("ROLLBACK")

    async def reopened() -> dict:
        async with SQLiteEventLog(path, TableProjector()) as log:
            return await table_rows(log.fetch_all)

    stale = sorted((row[5] + 1,) for row in incremental["domains"])
    assert (left, _children() - before) == ((1, stale), set())
    assert asyncio.run(reopened()) == incremental


def _verified(path: str, projector: TableProjector, tamper: str = "") -> tuple[Any, ...]:
    """Verify the ledger at `path`, its log on `projector`, after the statement `tamper`; return its checkpoint, or the error."""
    async def go() -> tuple[Any, ...]:
        async with SQLiteEventLog(path, projector) as log:
            if tamper:
                with contextlib.closing(sqlite3.connect(path)) as conn, conn:
                    conn.execute(tamper)
            ledger = Ledger(log, SimulatedHypervisor(path + ".sim.json"), clock=lambda: LOG_START, new_id=str)
            try:
                return ("verified", await ledger.checkpoint())
            except (ValueError, VmledgerError) as e:
                return ("raised", type(e), str(e))

    return asyncio.run(go())


def test_a_verify_cancelled_while_its_workers_fold_stops_them(tmp_path: Any) -> None:
    """`verify` cancelled (Ctrl-C) while it writes its worker processes' rows stops at its next statement, rather than run on unseen (the process would wait for it before it exits), and stops its workers."""
    path = str(tmp_path / "ledger.db")
    asyncio.run(_append_fleet(path))
    before = _children()

    projector = _Held(chunk=4, parts=2, parts_from=0)

    async def go() -> bool:
        async with SQLiteEventLog(path, projector) as log:
            ledger = Ledger(log, SimulatedHypervisor(path + ".sim.json"), clock=lambda: LOG_START, new_id=str)
            await projector.cancel_while_held(ledger.verify())
            return await asyncio.to_thread(projector.ended.wait, 30)

    ended, taken = asyncio.run(go()), projector.taken
    # The fold of the 60 events, four at a time, takes dozens of statements: it took none after the held one.
    assert (ended, taken, _children() - before) == (True, 3, set())


@settings(database=None, deadline=None, max_examples=10)
@given(any_logs(), st.integers(1, 60))
@example(records=_ACROSS, chunk=1)
def test_verify_in_parts_finds_what_one_process_finds(records: list[RecordedEvent], chunk: int) -> None:
    """On any log, rebuilt, `verify` folding in worker processes gives the checkpoint, or raises the error, of one process's fold."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ledger.db")
        _stored(path, [_row(r) for r in records])
        _rebuilt(path, TableProjector(chunk=chunk, parts=1))
        _relink(path)  # the rows hash as stored, for the chain
        alone = _verified(path, TableProjector(chunk=chunk, parts=1))
        assert _verified(path, TableProjector(chunk=chunk, parts=2, parts_from=0)) == alone


#: Changes to one stored event, behind the log's back: `(statement, its parameters but the position)`.
_EVENT_EDITS = st.sampled_from([
    ("UPDATE events SET data = data || ' ' WHERE position = ?", ()),
    ("UPDATE events SET data = '{' WHERE position = ?", ()),
    ("UPDATE events SET stream = 'c' WHERE position = ?", ()),
    ("UPDATE events SET version = version + 100 WHERE position = ?", ()),
    ("UPDATE events SET type = 'DomainStopped' WHERE position = ?", ()),
    ("UPDATE events SET metadata = '{}' WHERE position = ?", ()),
    ("UPDATE events SET recorded_at = 'yesterday' WHERE position = ?", ()),
    ("UPDATE events SET hash = ? WHERE position = ?", ("f" * 64,)),
    ("UPDATE events SET position = position + 1000 WHERE position = ?", ()),
    ("DELETE FROM events WHERE position = ?", ()),
])


@settings(database=None, deadline=None, max_examples=15)
@given(any_logs(), st.data())
def test_verify_in_parts_names_the_damage_one_process_names(records: list[RecordedEvent], data: st.DataObject) -> None:
    """A stored event changed behind the log's back: `verify`, its chain checked in a worker process while it folds and compares, raises what checking the chain first, in its own process, raises."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ledger.db")
        _stored(path, [_row(r) for r in records])
        _rebuilt(path, TableProjector(chunk=4, parts=1))
        _relink(path)
        sql, params = data.draw(_EVENT_EDITS)
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            before = conn.execute("SELECT * FROM events ORDER BY position").fetchall()
            conn.execute(sql, (*params, data.draw(st.integers(1, len(records)))))
            assume(conn.execute("SELECT * FROM events ORDER BY position").fetchall() != before)  # a type it had
        alone = _verified(path, TableProjector(chunk=4, parts=1))
        assert alone[0] == "raised"
        assert _verified(path, TableProjector(chunk=4, parts=2, parts_from=0)) == alone


def test_verify_checks_the_chain_itself_where_no_worker_process_starts(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chain's worker process cannot start (no Python to run): `verify` checks the chain in its own process, and still names a changed event."""
    path = str(tmp_path / "ledger.db")
    asyncio.run(_append_fleet(path))
    tamper = "UPDATE events SET data = data || ' ' WHERE position = 7"
    alone = _verified(path, TableProjector(parts=1), tamper)
    monkeypatch.setattr(vmledger.projections._parts.sys, "executable", str(tmp_path / "no-python"))
    assert _verified(path, TableProjector(chunk=4, parts=2, parts_from=0)) == alone
    assert alone[:2] == ("raised", ChainBrokenError) and "position 7:" in alone[2]


def _relink(path: str) -> None:
    """Give every stored event of the file the hash its fields and its predecessor's hash make."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        prev = GENESIS_HASH
        for row in conn.execute(f"SELECT {COLUMNS} FROM events ORDER BY position").fetchall():
            prev = _link(prev, row)
            conn.execute("UPDATE events SET hash = ? WHERE position = ?", (prev, row[0]))


@pytest.mark.parametrize("tamper", [
    "",
    "UPDATE live SET value = '1' WHERE domain = 'domain-c' AND property = 'memory'",
    "DELETE FROM episodes WHERE rowid = (SELECT max(rowid) FROM episodes)",
    "UPDATE outcome_days SET count = count + 1",
])
def test_verify_in_parts_checks_the_rows_the_appends_wrote(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, tamper: str,
) -> None:
    """`verify` of a fleet folds it in worker processes, not in its own, and passes, or names the row changed behind the log's back as one process's fold does."""
    path = str(tmp_path / "ledger.db")
    asyncio.run(_append_fleet(path))
    alone = _verified(path, TableProjector(parts=1), tamper)
    monkeypatch.setattr(vmledger.projections.verify, "_fold", _refuse)
    assert _verified(path, TableProjector(chunk=4, parts=3, parts_from=0)) == alone
    assert alone[0] == ("raised" if tamper else "verified")


async def _refuse(*args: Any) -> None:
    raise AssertionError("verify folded in its own process")


def test_verify_of_a_log_the_parts_cannot_fold_alone_folds_in_one_process(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An outcome on another domain's stream than its request's: the workers give up, and `verify` folds in its own process."""
    path = str(tmp_path / "ledger.db")
    asyncio.run(_append(path, _ACROSS))
    assert _verified(path, TableProjector(chunk=1, parts=2, parts_from=0))[0] == "verified"
    monkeypatch.setattr(vmledger.projections.verify, "_fold", _refuse)
    with pytest.raises(AssertionError, match="verify folded in its own process"):
        _verified(path, TableProjector(chunk=1, parts=2, parts_from=0))


async def _append(path: str, records: list[RecordedEvent]) -> None:
    """Append `records` to a new ledger at `path`, an event an append."""
    async with SQLiteEventLog(path, TableProjector()) as log:
        for rec in records:
            await log.append(rec.stream, rec.version - 1, [rec.event], Metadata(principal="p"),
                             now=LOG_START + timedelta(seconds=rec.position))
