"""Guarantees only the PostgreSQL backend has: many connections writing, NOTIFY, lost connections."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Generator, Sequence

import pytest

import vmledger
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.eventstore.backends.locks import key_of
from vmledger.eventstore.backends.sqlite import SQLiteEventLog
from vmledger.eventstore.errors import ConcurrencyError, StorageError
from vmledger.eventstore.events import DomainDefined, DomainStarted, DomainStopped, LiveValueObserved
from vmledger.eventstore.log import Metadata, RecordedEvent, Step
from vmledger.projections.store import TableProjector
from vmledger.ledger import Ledger

# Without the driver the `pg_dsn` fixture of test_store.py[postgres] skips, or fails under CI=true.
asyncpg = pytest.importorskip("asyncpg", reason="the asyncpg driver is not installed (pip install -e '.[test]')")
from vmledger.eventstore.backends.postgres import APPEND_LOCK, CHANNEL, STREAM_LOCKS, PostgresEventLog  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
CONFIG = {"memory": 2**30, "max_memory": 2**32, "vcpus": 1, "max_vcpus": 2, "numa_nodes": 1}


def _defined(name: str) -> DomainDefined:
    return DomainDefined(domain=name, uuid=name, guest_type="pv", config=CONFIG, capabilities={})


def run(coro: Any) -> Any:
    """Run one coroutine on a fresh event loop."""
    return asyncio.run(coro)


class _HoldingProjector(TableProjector):
    """A projector that keeps the append lock held for a while before it writes, when it touches one stream.

    It holds it on the server, with `pg_sleep` as the batch's last read.
    """

    def __init__(self, stream: str, seconds: float) -> None:
        super().__init__()
        self.stream = stream
        self.seconds = seconds
        self.holding = asyncio.Event()

    def batch(self) -> Any:
        return _HoldingBatch(super().batch(), self)


class _HoldingBatch:
    """A projection batch whose writing starts with a sleep under the append lock, once it holds the stream."""

    def __init__(self, batch: Any, projector: _HoldingProjector) -> None:
        self._batch, self._projector, self._held = batch, projector, False

    def load(self, streams: Sequence[str], request_ids: Sequence[str], *first: Any) -> Generator[Step, Any, Any]:
        return (yield from self._batch.load(streams, request_ids, *first))

    def recall(self, *args: Any) -> bool:
        return self._batch.recall(*args)

    def remember(self, memory: Any) -> None:
        self._batch.remember(memory)

    def add(self, records: Sequence[RecordedEvent]) -> Generator[Step, Any, None]:
        yield from self._batch.add(records)
        self._held = self._held or any(r.stream == self._projector.stream for r in records)

    def write(self, *first: Any) -> Generator[Step, Any, None]:
        if self._held:
            self._projector.holding.set()
            yield ("fetch_all", "SELECT pg_sleep(?)", (self._projector.seconds,))
        yield from self._batch.write(*first)


class _SlowWriteProjector(_HoldingProjector):
    """A projector whose batch's one writing statement takes a while on the server, when it touches one stream."""

    def batch(self) -> Any:
        return _SlowWriteBatch(TableProjector.batch(self), self)


class _SlowWriteBatch(_HoldingBatch):
    """A projection batch whose writing statement sleeps on the server, once it holds the stream."""

    def write(self, *first: Any) -> Generator[Step, Any, None]:
        if not self._held:
            return (yield from self._batch.write(*first))
        self._projector.holding.set()
        # An update of no row whose condition sleeps once: the statement stays under way meanwhile.
        sleep = ("UPDATE projection_position SET position = position WHERE name = ? AND pg_sleep(?) IS NULL",
                 [("none", self._projector.seconds)])
        yield from self._batch.write(*first, sleep)


@contextlib.asynccontextmanager
async def _admin(dsn: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def _backend_pid(admin: Any, where: str) -> int:
    """Return the pid of a backend of this database that `where` picks from pg_stat_activity, waiting for it."""
    async with asyncio.timeout(5):
        while True:
            pids = await admin.fetch(
                f"SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND {where}")
            if pids:
                return pids[0][0]
            await asyncio.sleep(0.01)


def test_follower_skips_nothing_while_one_writer_holds_the_append_lock(pg_database: str) -> None:
    """A follower receives every event once, in order, while a writer holds the append lock 2 s (issue 4)."""
    async def go() -> tuple[list, list, int]:
        slow_projector = _HoldingProjector("slow", 2.0)
        async with contextlib.AsyncExitStack() as stack:
            logs = [await stack.enter_async_context(PostgresEventLog(pg_database, TableProjector(), busy_timeout=10))
                    for _ in range(5)]
            follower, writers = logs[0], logs[1:]
            slow = await stack.enter_async_context(PostgresEventLog(pg_database, slow_projector, busy_timeout=10))
            for i in range(5):
                await writers[0].append(f"early{i}", 0, [_defined(f"early{i}")], Metadata(), now=T0)
            total = 5 + 1 + 4 * 6
            seen: list[tuple[int, str, int]] = []

            async def follow() -> None:
                async for rec in follower.subscribe(from_position=0):
                    seen.append((rec.position, rec.stream, rec.version))
                    if len(seen) == total:
                        return

            async def write(log: PostgresEventLog, name: str) -> None:
                await log.append(name, 0, [_defined(name)], Metadata(), now=T0)
                for version in range(1, 6):
                    event = DomainStarted(config=CONFIG) if version % 2 else DomainStopped()
                    await log.append(name, version, [event], Metadata(), now=T0)

            following = asyncio.create_task(follow())
            held = asyncio.create_task(slow.append("slow", 0, [_defined("slow")], Metadata(), now=T0))
            await asyncio.wait_for(slow_projector.holding.wait(), 5)
            # The other writers start while the slow append holds the lock, before it writes.
            await asyncio.gather(held, *(write(w, f"w{i}") for i, w in enumerate(writers)))
            await asyncio.wait_for(following, 10)
            stored = [(r.position, r.stream, r.version) async for r in follower.read_all()]
            return seen, stored, await follower.verify_chain()

    seen, stored, head = run(go())
    assert [p for p, _, _ in seen] == list(range(1, 31))
    assert seen[5] == (6, "slow", 1)  # the held append came first: a naive follower would skip it
    assert seen == stored
    assert sorted((s, v) for _, s, v in seen) == sorted(
        [(f"early{i}", 1) for i in range(5)] + [("slow", 1)]
        + [(f"w{i}", v) for i in range(4) for v in range(1, 7)])
    assert head == 30


def test_a_writer_whose_appends_keep_coming_lets_another_process_append(pg_database: str) -> None:
    """A writer appending without a pause gives the append lock, within `_HOLD`, to another process that waits."""
    async def go() -> tuple[int, int, bool]:
        async with (PostgresEventLog(pg_database, TableProjector(), busy_timeout=10) as busy,
                    PostgresEventLog(pg_database, TableProjector(), busy_timeout=10) as other):
            await busy.append("busy", 0, [_defined("busy")], Metadata(), now=T0)
            stop = asyncio.Event()

            async def keep_appending() -> int:
                version = 1
                while not stop.is_set():
                    event = DomainStarted(config=CONFIG) if version % 2 else DomainStopped()
                    await busy.append("busy", version, [event], Metadata(), now=T0)
                    version += 1
                return version

            appending = asyncio.create_task(keep_appending())
            try:
                await asyncio.sleep(0.2)
                (rec,) = await asyncio.wait_for(other.append("other", 0, [_defined("other")], Metadata(), now=T0), 5)
                still = not appending.done()
            finally:
                stop.set()
                await appending
            return rec.position, await busy.head(), still

    position, head, still = run(go())
    assert still and position < head, (position, head)  # the busy writer went on appending after it


async def _stream_locks_held(dsn: str) -> list[int]:
    """Return the keys of the stream locks (`exclusive`) that any session of the database holds."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                "AND classid = $1::bigint::oid AND objsubid = 2", STREAM_LOCKS)
        return sorted(r[0] for r in rows)
    finally:
        await conn.close()


def test_stream_locks_exclude_another_log_pass_between_tasks_and_are_all_given_back(pg_database: str) -> None:
    """Stream locks (`exclusive`) exclude another log's holders; this log's tasks hold them in turn, none left held.

    A log asks the server for the tries and give-backs of all its tasks in
    one statement, and a key one task gives back as the next asks for it
    passes between them without the server: the session must end up holding
    nothing, whatever tasks were cancelled on the way, even while their
    try was in flight.
    """
    async def go() -> dict[str, Any]:
        seen: dict[str, Any] = {"overlaps": 0, "held": 0}
        async with (PostgresEventLog(pg_database, TableProjector(), busy_timeout=10) as mine,
                    PostgresEventLog(pg_database, TableProjector(), busy_timeout=10) as other):
            first = mine.exclusive("web")
            await first.__aenter__()
            seen["other web"] = await other._lock_stream(key_of("web"))
            seen["other db"] = await other._lock_stream(key_of("db"))
            await other._unlock_stream(key_of("db"))
            # The next holder asks while the give-back waits behind another statement: the key passes over.
            then = mine.exclusive("web")
            second = asyncio.create_task(then.__aenter__())
            busy = asyncio.create_task(mine._lock_stream(key_of("busy")))
            await asyncio.sleep(0)
            while mine._lock_tries:  # until its statement is on its way
                await asyncio.sleep(0)
            await first.__aexit__(None, None, None)
            await asyncio.wait_for(second, 5)
            if seen.setdefault("other web, handed over", await other._lock_stream(key_of("web"))):
                await other._unlock_stream(key_of("web"))
            await then.__aexit__(None, None, None)
            if await busy:
                await mine._unlock_stream(key_of("busy"))
            inside = {"web": 0, "db": 0}

            async def hold(k: int) -> None:
                name = "web" if k % 3 else "db"
                async with mine.exclusive(name):
                    inside[name] += 1
                    try:
                        seen["overlaps"] += inside[name] > 1
                        await asyncio.sleep(0.001 * (k % 4))
                        seen["held"] += 1
                    finally:
                        inside[name] -= 1

            async def probe() -> None:  # the other log takes "web" only while none of these tasks holds it
                while True:
                    if await other._lock_stream(key_of("web")):
                        seen["overlaps"] += inside["web"] > 0
                        await other._unlock_stream(key_of("web"))
                    await asyncio.sleep(0.002)

            tasks = [asyncio.create_task(hold(k)) for k in range(60)]
            probing = asyncio.create_task(probe())
            await asyncio.sleep(0.01)
            for task in tasks[::7]:
                task.cancel()
            async with asyncio.timeout(30):
                await asyncio.gather(*tasks, return_exceptions=True)
            probing.cancel()
            await asyncio.gather(probing, return_exceptions=True)
            trying = asyncio.create_task(mine._lock_stream(key_of("cancelled")))
            await asyncio.sleep(0)  # its statement is on its way
            trying.cancel()
            for _ in range(100):
                if not (held := await _stream_locks_held(pg_database)):
                    break
                await asyncio.sleep(0.05)
            seen["left held"] = held
            async with asyncio.timeout(5):
                async with other.exclusive("web"), other.exclusive("cancelled"):
                    seen["other took them"] = True
        return seen

    seen = run(go())
    assert seen["other web"] is False and seen["other db"] is True and seen["other web, handed over"] is False
    assert seen["overlaps"] == 0 and 40 <= seen["held"] <= 60
    assert seen["left held"] == [] and seen["other took them"]


def test_notify_wakes_a_subscriber_of_another_connection(pg_database: str) -> None:
    """An append on one connection wakes a subscriber on another at once, long before its fallback poll."""
    async def go() -> tuple[list[int], float]:
        async with PostgresEventLog(pg_database, TableProjector(), poll_interval=60) as follower, \
                PostgresEventLog(pg_database, TableProjector()) as writer:
            await writer.append("a", 0, [_defined("a")], Metadata(), now=T0)
            seen: list[int] = []

            async def follow() -> None:
                async for rec in follower.subscribe(from_position=0):
                    seen.append(rec.position)
                    if len(seen) == 3:
                        return

            task = asyncio.create_task(follow())
            async with asyncio.timeout(5):
                while not seen:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # the subscriber is now waiting on LISTEN
            loop = asyncio.get_running_loop()
            started = loop.time()
            await writer.append("a", 1, [DomainStarted(config=CONFIG)], Metadata(), now=T0)
            await writer.append("a", 2, [LiveValueObserved(property="memory", value=1, previous=2**30)], Metadata(), now=T0)
            await asyncio.wait_for(task, 10)
            return seen, loop.time() - started

    seen, elapsed = run(go())
    assert seen == [1, 2, 3]
    assert elapsed < 5


def test_subscriber_listens_again_after_losing_its_listening_connection(pg_database: str) -> None:
    """A subscriber whose LISTEN connection the server drops listens again and still wakes on each append."""
    async def go() -> list[int]:
        async with PostgresEventLog(pg_database, TableProjector(), poll_interval=60) as follower, \
                PostgresEventLog(pg_database, TableProjector()) as writer, _admin(pg_database) as admin:
            await writer.append("a", 0, [_defined("a")], Metadata(), now=T0)
            seen: list[int] = []

            async def follow() -> None:
                async for rec in follower.subscribe(from_position=0):
                    seen.append(rec.position)
                    if len(seen) == 3:
                        return

            task = asyncio.create_task(follow())
            listening = "query LIKE 'LISTEN%' AND application_name = 'vmledger'"
            pid = await _backend_pid(admin, listening)
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            await _backend_pid(admin, f"{listening} AND pid <> {pid}")  # a new listener is up
            await writer.append("a", 1, [DomainStarted(config=CONFIG)], Metadata(), now=T0)
            await writer.append("a", 2, [DomainStopped()], Metadata(), now=T0)
            await asyncio.wait_for(task, 5)
            return seen

    assert run(go()) == [1, 2, 3]


def test_append_notifies_its_last_position_on_commit_only(pg_database: str) -> None:
    """Each committed append sends its last position on the channel; a conflicting append sends nothing."""
    async def go() -> list[tuple[str, str]]:
        got: list[tuple[str, str]] = []
        async with PostgresEventLog(pg_database, TableProjector()) as log, _admin(pg_database) as admin:
            await admin.add_listener(CHANNEL, lambda _c, _p, channel, payload: got.append((channel, payload)))
            await log.append("a", 0, [_defined("a"), DomainStarted(config=CONFIG)], Metadata(), now=T0)
            with pytest.raises(ConcurrencyError):
                await log.append("a", 0, [_defined("a")], Metadata(), now=T0)
            await log.append("b", 0, [_defined("b")], Metadata(), now=T0)
            await admin.execute("SELECT 1")  # a round trip, so pending notifications have arrived
            await asyncio.sleep(0.1)
        return got

    assert run(go()) == [(CHANNEL, "2"), (CHANNEL, "3")]


def test_a_batch_cancelled_while_it_writes_commits_whole_and_the_next_waits_for_it(pg_database: str) -> None:
    """A batch whose writer is cancelled during its write statement commits it whole; the next batch waits for it."""
    async def go() -> tuple[list[str], int]:
        slow = _SlowWriteProjector("slow", 0.5)
        async with PostgresEventLog(pg_database, slow) as log:
            append = asyncio.create_task(log.append("slow", 0, [_defined("slow")], Metadata(), now=T0))
            await asyncio.wait_for(slow.holding.wait(), 5)
            await asyncio.sleep(0.2)  # the write statement is under way on the server
            flusher = log._group._flusher
            assert flusher is not None
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, StorageError):
                await append
            await log.append("b", 0, [_defined("b")], Metadata(), now=T0)
            return sorted({r.stream async for r in log.read_all()}), await log.verify_chain()

    assert run(go()) == (["b", "slow"], 2)


def test_lost_writer_connection_raises_storage_error_then_reconnects(pg_database: str) -> None:
    """An append whose connection the server kills raises StorageError, and the next append reconnects."""
    async def go() -> tuple[str, list[int]]:
        async with PostgresEventLog(pg_database, TableProjector()) as log, _admin(pg_database) as admin:
            await log.append("a", 0, [_defined("a")], Metadata(), now=T0)
            await admin.execute("SELECT pg_advisory_lock($1)", APPEND_LOCK)
            blocked = asyncio.create_task(log.append("a", 1, [DomainStarted(config=CONFIG)], Metadata(), now=T0))
            pid = await _backend_pid(admin, "wait_event_type = 'Lock' AND wait_event = 'advisory'")
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(StorageError) as caught:
                await asyncio.wait_for(blocked, 10)
            await admin.execute("SELECT pg_advisory_unlock($1)", APPEND_LOCK)
            await log.append("a", 1, [DomainStarted(config=CONFIG)], Metadata(), now=T0)
            return str(caught.value), [r.position async for r in log.read_all()]

    message, positions = run(go())
    assert message.startswith("lost the connection to PostgreSQL")
    assert positions == [1, 2]


def test_lost_reader_connection_raises_storage_error_then_reads_again(pg_database: str) -> None:
    """A read whose connection the server kills raises StorageError, and the next read works."""
    async def go() -> tuple[str, int]:
        async with PostgresEventLog(pg_database, TableProjector()) as log, _admin(pg_database) as admin:
            await log.append("a", 0, [_defined("a")], Metadata(), now=T0)
            reading = asyncio.create_task(log.fetch_all("SELECT pg_sleep(30)"))
            pid = await _backend_pid(admin, "query = 'SELECT pg_sleep(30)' AND state = 'active'")
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(StorageError) as caught:
                await asyncio.wait_for(reading, 10)
            return str(caught.value), await log.head()

    message, head = run(go())
    assert message.startswith("lost the connection to PostgreSQL")
    assert head == 1


def test_idle_connections_dropped_by_the_server_are_replaced(pg_database: str) -> None:
    """After the server drops every idle connection of a log (a restart), its next append and reads work."""
    async def go() -> tuple[int, list[int]]:
        async with PostgresEventLog(pg_database, TableProjector()) as log, _admin(pg_database) as admin:
            await log.append("a", 0, [_defined("a")], Metadata(), now=T0)
            killed = [r[0] for r in await admin.fetch(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'vmledger'")]
            async with asyncio.timeout(5):  # the server has ended them (the reader pool may open anew)
                while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", killed):
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # the client reads each dropped socket's end
            await log.append("a", 1, [DomainStarted(config=CONFIG)], Metadata(), now=T0)
            return len(killed), [r.position async for r in log.read_all()]

    assert run(go()) == (2, [1, 2])


def test_snapshot_reads_one_position_while_others_append(pg_database: str) -> None:
    """Every read inside a snapshot sees the log as it was when the snapshot began, despite other appends."""
    async def go() -> tuple[list[int], int]:
        async with PostgresEventLog(pg_database, TableProjector()) as log, \
                PostgresEventLog(pg_database, TableProjector()) as other:
            await log.append("a", 0, [_defined("a")], Metadata(), now=T0)
            heads = []
            async with log.snapshot():
                heads.append(await log.head())
                await other.append("b", 0, [_defined("b")], Metadata(), now=T0)
                heads.append(await log.head())
                heads.append(len(await log.fetch_all("SELECT uuid FROM domains")))
            return heads, await log.head()

    assert run(go()) == ([1, 1, 1], 2)


def test_unreachable_server_or_closed_log_raises_storage_error(pg_database: str, tmp_path: Any) -> None:
    """Opening a database where no server listens, or appending to a closed log, raises StorageError."""
    async def go() -> None:
        with pytest.raises(StorageError):
            async with PostgresEventLog(f"postgresql://postgres@/nowhere?host={tmp_path}&port=1",
                                        TableProjector(), connect_timeout=2):
                pass
        async with PostgresEventLog(pg_database, TableProjector()) as log:
            pass
        with pytest.raises(StorageError):
            await log.append("a", 0, [_defined("a")], Metadata(), now=T0)
        with pytest.raises(StorageError):
            await log.head()

    run(go())


def test_hash_chain_and_rows_are_the_same_on_both_backends(pg_database: str, tmp_path: Any) -> None:
    """The same appends give identical hashes, projection rows and as-of reads on PostgreSQL and SQLite."""
    async def fill(log: Any) -> tuple:
        await log.append("a", 0, [_defined("a"), DomainStarted(config=CONFIG)],
                         Metadata(principal="p", request_id="r1"), now=T0)
        await log.append("b", 0, [_defined("b")], Metadata(), now=T0)
        await log.append("a", 2, [LiveValueObserved(property="memory", value=2**29, previous=2**30)], Metadata(), now=T0)
        await log.append("a", 3, [DomainStopped()], Metadata(principal="é ☃"), now=T0)
        async with log.snapshot():
            hashes = [(r.position, r.hash) async for r in log.read_all()]
            rows = {t: await log.fetch_all(f"SELECT * FROM {t} ORDER BY 1, 2")
                    for t in ("domains", "persistent", "live", "drift")}
            return hashes, rows, await log.verify_chain()

    async def go() -> tuple:
        async with PostgresEventLog(pg_database, TableProjector()) as pg_log:
            on_pg = await fill(pg_log)
        async with SQLiteEventLog(str(tmp_path / "s.db"), TableProjector()) as sqlite_log:
            on_sqlite = await fill(sqlite_log)
        return on_pg, on_sqlite

    on_pg, on_sqlite = run(go())
    assert on_pg == on_sqlite
    assert on_pg[2] == 5


async def _ledger_story(log: Any, sim_path: str) -> Any:
    """Drive a ledger through every kind of outcome and drift; return all it answers, as JSON values."""
    ticks, ids = itertools.count(), itertools.count()
    hypervisor = SimulatedHypervisor(sim_path, host_free=3 * 2**30)
    ledger = Ledger(log, hypervisor, clock=lambda: T0 + timedelta(seconds=next(ticks)),
                    new_id=lambda: f"id{next(ids)}")
    answers: list[Any] = []
    await ledger.define("alpha", guest_type="pv", memory=2**30, max_memory=2**32, vcpus=1, max_vcpus=4,
                        cdroms={"hdc": "/a.iso"})
    await ledger.define("beta", guest_type="hvm", memory=2**30, max_memory=2**31, vcpus=1, max_vcpus=2)
    await ledger.define("Zed", guest_type="pv", memory=2**30, max_memory=2**31, vcpus=1, max_vcpus=2)
    await ledger.start("alpha")
    await ledger.start("beta")
    answers.append(await ledger.set("alpha", "memory", 3 * 2**30, principal="ann", reason="more"))
    answers.append(await ledger.set("beta", "memory", 2**31, principal="bob"))
    answers.append(await ledger.set("alpha", "vcpus", 3))
    answers.append(await ledger.set("alpha", "max_memory", 2**33))
    await hypervisor.lock_tray("alpha", "hdc")
    await ledger.observe("alpha")
    answers.append(await ledger.set("alpha", "media:hdc", "/b.iso"))
    await hypervisor.balloon("beta", 2**29)
    await ledger.observe()
    answers.append(await ledger.set("beta", "vcpus", 2, scope="persistent", request_id="fixed"))
    answers += [await ledger.drift(), await ledger.drift(as_of=8), await ledger.history(),
                await ledger.history(principal="ann"), await ledger.show("alpha")]
    await ledger.stop("beta")
    await ledger.undefine("beta")
    await ledger.define("beta", guest_type="pv", memory=2**30, max_memory=2**31, vcpus=1, max_vcpus=2)
    answers += [await ledger.domains(), await ledger.verify(), await ledger.rebuild(), await ledger.verify(),
                [(r.position, r.hash) async for r in ledger.events()]]
    return json.loads(json.dumps(answers, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o)))


@pytest.mark.parametrize("collation", ["bytewise", "icu"])
def test_ledger_answers_are_the_same_on_both_backends(request: pytest.FixtureRequest, collation: str, tmp_path: Any) -> None:
    """A ledger on PostgreSQL answers every query as on SQLite, verifies and rebuilds, whatever the collation."""
    dsn = request.getfixturevalue("pg_database" if collation == "bytewise" else "pg_icu_database")

    async def go() -> tuple:
        async with PostgresEventLog(dsn, TableProjector()) as pg_log:
            on_pg = await _ledger_story(pg_log, str(tmp_path / "pg.sim.json"))
        async with SQLiteEventLog(str(tmp_path / "s.db"), TableProjector()) as sqlite_log:
            on_sqlite = await _ledger_story(sqlite_log, str(tmp_path / "s.sim.json"))
        return on_pg, on_sqlite

    on_pg, on_sqlite = run(go())
    assert on_pg == on_sqlite
    assert on_pg[-4:-1] == [29, 29, 29]
    # beta's vCPUs, set in the persistent config only while it runs, are persistent_only (issue 13).
    assert {d["cause"] for d in on_pg[6]} == {"partial", "refused", "requires_restart", "external", "persistent_only"}


def test_write_all_writes_its_statements_in_one_round_trip_as_sqlite_does_in_turn(pg_database: str) -> None:
    """`write_all` on PostgreSQL (one statement over arrays) leaves the rows SQLite's statements, run in turn, leave."""
    import sqlite3

    from vmledger.eventstore.backends.postgres import _Tx
    from vmledger.eventstore.backends.sqlite import SyncTx

    table = "CREATE TABLE t (k TEXT NOT NULL, n BIGINT NOT NULL, v TEXT, w BIGINT, PRIMARY KEY (k, n))"
    seed = [("a", 1, "x", 1), ("a", 2, "y", None), ("b", 1, None, 3)]
    statements = [
        ("DELETE FROM t WHERE k = ? AND n = ?", [("a", 2), ("z", 9)]),
        ("INSERT INTO t (k, n, v, w) VALUES (?, ?, ?, ?) ON CONFLICT (k, n) DO UPDATE SET v = excluded.v, "
         "w = excluded.w", [("b", 1, "new", None), ("c", 5, "it's", 2**40)]),
        ("INSERT INTO t (k, n, v, w) VALUES ('lit', ?, NULL, ?)", [(7, 8)]),
        ("INSERT INTO t (k, n, v, w) VALUES (?, ?, ?, ?)", []),  # no rows: no statement
        # Only the rows of the keys given change; a key of no row changes none.
        ("UPDATE t SET w = ?, v = ? WHERE k = ? AND n = ?", [(None, "x, 'q'", "a", 1), (4, None, "nope", 1)]),
    ]
    expected = sorted([("a", 1, "x, 'q'", None), ("b", 1, "new", None), ("c", 5, "it's", 2**40),
                       ("lit", 7, None, 8)])

    lite = sqlite3.connect(":memory:", isolation_level=None)
    lite.execute(table)
    lite.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", seed)
    SyncTx(lite).write_all(statements)
    assert sorted(lite.execute("SELECT * FROM t").fetchall()) == expected

    async def go() -> list[tuple[Any, ...]]:
        async with _admin(pg_database) as conn:
            await conn.execute(table.replace("CREATE TABLE t", "CREATE TEMP TABLE t"))
            await conn.executemany("INSERT INTO t VALUES ($1, $2, $3, $4)", seed)
            await _Tx(conn).write_all(statements)
            with pytest.raises(ValueError, match="write_all takes INSERT"):
                await _Tx(conn).write_all([("UPDATE t SET v = ?", [("q",)])])  # no WHERE: every row
            return sorted(tuple(r) for r in await conn.fetch("SELECT * FROM t"))

    assert run(go()) == expected


def test_fetch_many_reads_its_queries_in_one_round_trip_as_sqlite_does_in_turn(pg_database: str) -> None:
    """`fetch_many` on PostgreSQL (one statement of arrays of records) returns the rows SQLite's queries return."""
    import sqlite3

    from vmledger.eventstore.backends.postgres import _Tx
    from vmledger.eventstore.backends.sqlite import SyncTx

    table = "CREATE TABLE t (k TEXT NOT NULL, n BIGINT NOT NULL, v TEXT, PRIMARY KEY (k, n))"
    seed = [("a", 1, "x"), ("a", 2, None), ("b", 1, "it's, (odd)"), ("c", 3, "")]
    queries = [
        ("WITH s(k) AS (VALUES (?), (?)) SELECT s.k, (SELECT max(n) FROM t WHERE t.k = s.k), "
         "(SELECT max(n) FROM t) FROM s", ["a", "zz"]),
        ("SELECT k, n, v FROM t WHERE k IN (?, ?) ORDER BY k, n", ["a", "b"]),
        ("SELECT v FROM t WHERE n > ?", [99]),  # no rows
        ("SELECT count(*) FROM t WHERE v IS NULL OR v = ?", [""]),
    ]
    lite = sqlite3.connect(":memory:", isolation_level=None)
    lite.execute(table)
    lite.executemany("INSERT INTO t VALUES (?, ?, ?)", seed)
    expected = [sorted(rows) for rows in SyncTx(lite).fetch_many(queries)]
    assert expected == [[("a", 2, 3), ("zz", None, 3)], [("a", 1, "x"), ("a", 2, None), ("b", 1, "it's, (odd)")],
                        [], [(2,)]]

    async def go() -> tuple[list[list[tuple[Any, ...]]], list[list[tuple[Any, ...]]], int]:
        async with _admin(pg_database) as conn:
            await conn.execute(table.replace("CREATE TABLE t", "CREATE TEMP TABLE t"))
            await conn.executemany("INSERT INTO t VALUES ($1, $2, $3)", seed)
            together = await _Tx(conn).fetch_many(queries)
            alone = await _Tx(conn).fetch_many(queries[1:2])
            # The first call made the driver look up the type of an array of records, once per connection.
            statements: list[str] = []
            conn.add_query_logger(lambda q: statements.append(q.query))
            await _Tx(conn).fetch_many(queries[1:])
            await asyncio.sleep(0.05)  # the driver calls query loggers soon after, not at once
            return [sorted(rows) for rows in together], alone, len(statements)

    together, alone, sent = run(go())
    assert together == expected
    assert alone == [expected[1]]
    assert sent == 1


def test_an_append_takes_three_round_trips_and_appends_that_keep_coming_take_two(
        pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An append takes the append lock, reads, and writes with its commit; the lock goes back once appends stop.

    Appends that keep coming keep the lock: a batch is its reads and its
    write, or its write alone once the writer's memory of the hold knows
    its rows.  Every `_HOLD` seconds the writer asks whether another process
    waits for the lock, a round trip more.  Only while another process holds
    the lock does a writer wait for it, a round trip more.  (A definition
    takes one more, to look its name up.)  The lock's times are stretched
    here, so that a slow machine's pauses between two appends do not end a hold.
    """
    from vmledger.eventstore.backends import postgres

    monkeypatch.setattr(postgres, "_LINGER", 0.3)
    monkeypatch.setattr(postgres, "_HOLD", 60.0)
    try_lock, lock, unlock = (f"SELECT pg_{f}($1)" for f in ("try_advisory_lock", "advisory_lock", "advisory_unlock"))

    async def appends(log: PostgresEventLog, versions: range) -> None:
        for version in versions:  # one caller appending at once, as a request's outcome follows its intent
            await log.append("a", version, [DomainStarted(config=CONFIG) if version % 2 else DomainStopped()],
                             Metadata(), now=T0)
        await asyncio.sleep(0.5)  # the lock goes back; the driver calls query loggers soon after, not at once

    async def go() -> tuple[list[str], ...]:
        async with PostgresEventLog(pg_database, TableProjector()) as log, _admin(pg_database) as admin:
            await log.append("a", 0, [_defined("a")], Metadata(), now=T0)  # the driver learns the types once
            await asyncio.sleep(0.5)
            sent: list[str] = []
            assert log._writer is not None
            log._writer.add_query_logger(lambda q: sent.append(q.query))
            await appends(log, range(1, 2))
            alone, sent[:] = list(sent), []
            await admin.execute(lock.replace("$1", "$1::bigint"), APPEND_LOCK)
            blocked = asyncio.create_task(log.append("a", 2, [DomainStopped()], Metadata(), now=T0))
            await _backend_pid(admin, "wait_event_type = 'Lock' AND wait_event = 'advisory'")
            await admin.execute(unlock.replace("$1", "$1::bigint"), APPEND_LOCK)
            await asyncio.wait_for(blocked, 10)
            await asyncio.sleep(0.5)
            contended, sent[:] = list(sent), []
            await appends(log, range(3, 23))
            kept, sent[:] = list(sent), []
            monkeypatch.setattr(postgres, "_HOLD", 0.0)  # after every batch, the writer asks whether others wait
            await appends(log, range(23, 33))
            return alone, contended, kept, list(sent), [[r.position async for r in log.read_all()]]

    def count(queries: list[str]) -> tuple[int, ...]:
        """Return the lock's takings and givings back, the reads, the writes, and the questions whether others wait."""
        return (queries.count(try_lock), queries.count(unlock), sum(q.startswith("SELECT ARRAY") for q in queries),
                sum("pg_notify" in q for q in queries), sum("pg_locks" in q for q in queries))

    alone, contended, kept, turns, (positions,) = run(go())
    assert len(alone) == 4 and (alone[0], alone[-1]) == (try_lock, unlock), alone
    assert "pg_notify" in alone[2] and "INSERT INTO events" in alone[2], alone  # the write, its commit and notify
    assert [q for q in contended if "advisory" in q] == [try_lock, lock, unlock], contended
    assert len(contended) == 5, contended
    # A hold reads once: the next batches find the stream, its version and the log's end in the writer's memory.
    assert (count(kept), len(kept)) == ((1, 1, 1, 20, 0), 2 + 1 + 20), kept
    # With no other process waiting, the writer keeps the lock, and its memory.
    assert (count(turns), len(turns)) == ((1, 1, 1, 10, 10), 2 + 1 + 10 + 10), turns
    assert positions == list(range(1, 34))


def test_most_history_updates_stay_in_their_page_and_touch_no_index(pg_database: str, tmp_path: Any) -> None:
    """A request's outcomes update its history row in place (heap-only tuples), for room left on each page.

    With full pages, many of these updates went to another page, with a new
    entry in each of the table's indexes (under 64 callers, most of them).
    """
    async def go() -> tuple[int, int]:
        async with vmledger.open(pg_database, hypervisor=SimulatedHypervisor(str(tmp_path / "sim.json"))) as ledger:
            names = [f"d{i}" for i in range(8)]
            for name in names:
                await ledger.define(name, guest_type="pv", memory=2**29, max_memory=2**31, vcpus=1, max_vcpus=4)
                await ledger.start(name)
            for i in range(40):
                await asyncio.gather(*(ledger.set(name, "memory", 2**29 + (i % 4) * 2**27) for name in names))
        async with _admin(pg_database) as conn:
            for _ in range(100):  # the writer's counts reach the statistics when its connection closes
                row = await conn.fetchrow("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                          "WHERE relname = 'history'")
                if row[0] >= 640:
                    break
                await asyncio.sleep(0.05)
            return row[0], row[1]

    updated, in_place = run(go())
    assert updated == 640  # two outcomes of each of 320 requests
    assert in_place / updated > 0.95, (in_place, updated)  # full pages kept about three in four
