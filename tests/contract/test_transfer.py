"""Export from one backend and import into the other: same projections, a verifying chain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from typing import Any, Callable, Iterator

import pytest

import vmledger
from vmledger import ledger as ledger_module
from vmledger.eventstore import transfer
from vmledger.eventstore.codec import dumps
from vmledger.eventstore.log import chain_hash
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.projections.store import _BULK_INDEXES, DuplicateRequestError, table_rows

GiB = 2**30


async def _story(ledger: vmledger.Ledger) -> None:
    await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4,
                        cdroms={"hdc": ""}, principal="alice")
    await ledger.define("db", guest_type="hvm", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4)
    await ledger.start("web")
    await ledger.start("db")
    await ledger.hypervisor.set_host_free(100 * 2**20)
    await ledger.set("web", "memory", GiB + 200 * 2**20, principal="alice", reason="cache")
    await ledger.set("db", "memory", 2 * GiB, principal="bob")
    await ledger.set("web", "max_memory", 8 * GiB, scope="persistent")
    await ledger.set("web", "media:hdc", "/iso/ünïcode.iso")
    await ledger.hypervisor.balloon("web", 900 * 2**20)
    await ledger.observe("web")


async def _contents(ledger: vmledger.Ledger) -> tuple:
    lines = [line async for line in ledger.export()]
    return lines, await table_rows(ledger.log.fetch_all), await ledger.drift(), await ledger.verify()


def test_sqlite_to_postgres_and_back(tmp_path: Any, pg_database: str) -> None:
    """A ledger moved SQLite -> PostgreSQL -> SQLite keeps every event, hash and projection row."""
    sim = SimulatedHypervisor(tmp_path / "sim.json")

    async def go() -> tuple:
        async with vmledger.open(str(tmp_path / "a.db"), hypervisor=sim) as a:
            await _story(a)
            original = await _contents(a)
        async with vmledger.open(pg_database, hypervisor=sim) as pg:
            assert await pg.import_lines(lambda: original[0]) == len(original[0])
            moved = await _contents(pg)
        async with vmledger.open(str(tmp_path / "b.db"), hypervisor=sim) as b:
            await b.import_lines(lambda: moved[0])
            back = await _contents(b)
        return original, moved, back

    original, moved, back = asyncio.run(go())
    assert moved == original
    assert back == original


def test_damaged_export_imports_nothing(tmp_path: Any) -> None:
    """An export whose chain breaks is refused whole, naming the position and the line, and the ledger stays empty.

    The error is the export's (an invalid request), and a `ChainBrokenError` as before.
    """
    sim = SimulatedHypervisor(tmp_path / "sim.json")

    async def go() -> tuple:
        async with vmledger.open(str(tmp_path / "a.db"), hypervisor=sim) as a:
            await _story(a)
            lines = [line async for line in a.export()]
        lines[5] = lines[5].replace('"recorded_at":"2', '"recorded_at":"1')
        async with vmledger.open(str(tmp_path / "b.db"), hypervisor=sim) as b:
            with pytest.raises(vmledger.DamagedExportError) as caught:
                await b.import_lines(lambda: ["", *lines])  # a blank line first: line 7 holds position 6
            return caught.value, await b.log.head()

    error, head = asyncio.run(go())
    assert (error.position, error.line, head) == (6, 7, 0)
    assert isinstance(error, vmledger.ChainBrokenError) and isinstance(error, vmledger.InvalidRequestError)
    assert str(error) == "line 7: the export is damaged at position 6: hash does not match the stored event"


def _continued(lines: list[str], how: str) -> tuple[str, type, str]:
    """Return an export line that continues `lines`' chain with an event the store refuses, its error type and text.

    `how`: the first domain defined again under its name, on a new stream; or
    the first request asked again, with its request id, on its stream.
    """
    events, last = [json.loads(line) for line in lines], json.loads(lines[-1])
    if how == "defined again":
        first = events[0]
        fields = {**first, "stream": "f" * 32, "data": {**first["data"], "uuid": "f" * 32}, "version": 1}
        refusal = (vmledger.InvalidRequestError, f"domain {first['data']['domain']!r} is already defined")
    else:
        first = next(e for e in events if e["type"].endswith("Requested"))
        version = max(e["version"] for e in events if e["stream"] == first["stream"]) + 1
        fields = {**first, "version": version}
        refusal = (DuplicateRequestError, f"request id {first['data']['request_id']!r} is already recorded")
    fields["position"] = position = last["position"] + 1
    fields["hash"] = chain_hash(last["hash"], position=position, stream=fields["stream"], version=fields["version"],
                                type=fields["type"], schema_version=fields["schema_version"], data=dumps(fields["data"]),
                                metadata=dumps(fields["metadata"]), recorded_at=fields["recorded_at"])
    return dumps(fields), refusal[0], (
        f"the export's events do not fold: {refusal[1]} ({fields['type']} at position {position})")


@pytest.mark.parametrize("how", ["defined again", "requested again"])
def test_an_import_the_fold_refuses_at_its_end_imports_nothing(
        tmp_path: Any, url: str, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """An export whose chain holds but whose last event the store refuses (a defined name, a request id used again) is refused whole, naming that event, chunks already folded included; the ledger stays empty, and takes the good export after."""
    monkeypatch.setattr(ledger_module, "_IMPORT_CHUNK", 2)
    sim = SimulatedHypervisor(tmp_path / "sim.json")

    async def go() -> tuple:
        async with vmledger.open(str(tmp_path / "a.db"), hypervisor=sim) as a:
            await _story(a)
            good = [line async for line in a.export()]
        bad, *expected = _continued(good, how)
        async with vmledger.open(url, hypervisor=sim) as b:
            with pytest.raises(vmledger.InvalidRequestError) as caught:
                await b.import_lines(lambda: [*good, bad])
            refused = [type(caught.value), str(caught.value)], expected, await b.log.head(), await table_rows(
                b.log.fetch_all)
            await b.import_lines(lambda: good)
            return refused, [line async for line in b.export()], await b.verify(), good

    (error, expected, head, rows), imported, verified, good = asyncio.run(go())
    assert error == expected
    assert head == 0
    assert all(not table for name, table in rows.items() if name != "projection_position"), rows
    assert imported == good
    assert verified == len(good)


def test_the_store_refuses_an_import_into_a_log_that_holds_events(tmp_path: Any, url: str) -> None:
    """The import's own transaction checks that the log is empty (an append may come after the ledger's check): refused, nothing changes."""
    sim = SimulatedHypervisor(tmp_path / "sim.json")

    async def go() -> tuple:
        async with vmledger.open(str(tmp_path / "a.db"), hypervisor=sim) as a:
            await _story(a)
            lines = [line async for line in a.export()]
        rows = [transfer.from_line(line, n) for n, line in enumerate(lines, start=1)]
        async with vmledger.open(url, hypervisor=sim) as b:
            await b.define("other", guest_type="pv", memory=GiB, max_memory=GiB, vcpus=1, max_vcpus=1)
            before = await b.log.head(), await table_rows(b.log.fetch_all)
            with pytest.raises(vmledger.InvalidRequestError) as caught:
                await b.log.import_rows([rows])
            return str(caught.value), before, (await b.log.head(), await table_rows(b.log.fetch_all)), await b.verify()

    error, before, after, verified = asyncio.run(go())
    assert error == "an import needs an empty log; this one ends at position 1"
    assert after == before
    assert verified == 1


def _schema(path: Any) -> list[tuple[str, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()


def test_an_sqlite_import_builds_again_the_indexes_it_drops_while_it_writes(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An import into SQLite writes without the secondary indexes of `history`, `outcomes` and `episodes`: after it, and after one refused once chunks were written, the file's schema is a new ledger's, those indexes in it."""
    monkeypatch.setattr(ledger_module, "_IMPORT_CHUNK", 2)
    sim = SimulatedHypervisor(tmp_path / "sim.json")

    async def go() -> list[Any]:
        async with vmledger.open(str(tmp_path / "a.db"), hypervisor=sim) as a:
            await _story(a)
            good = [line async for line in a.export()]
        bad = _continued(good, "requested again")[0]
        async with vmledger.open(str(tmp_path / "new.db"), hypervisor=sim):
            pass
        schemas = [_schema(tmp_path / "new.db")]
        async with vmledger.open(str(tmp_path / "b.db"), hypervisor=sim) as b:
            with pytest.raises(vmledger.InvalidRequestError):
                await b.import_lines(lambda: [*good, bad])
            schemas.append(_schema(tmp_path / "b.db"))
            await b.import_lines(lambda: good)
            schemas.append(_schema(tmp_path / "b.db"))
            assert await b.verify() == len(good)
        return schemas

    new, refused, imported = asyncio.run(go())
    assert {name for name, _ in _BULK_INDEXES} <= {row[1] for row in new if row[0] == "index"}
    assert refused == new
    assert imported == new


async def _held(task: asyncio.Future[Any], holding: asyncio.Event) -> None:
    """Wait until `holding` is set; raise what ended `task` if it ends first."""
    waiting = asyncio.ensure_future(holding.wait())
    await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if task.done():
        task.result()
        raise AssertionError("the import ended before it was held")


def test_an_import_cancelled_while_it_reads_leaves_the_ledger_empty_and_its_loop_free(
    tmp_path: Any, url: str,
) -> None:
    """An import reads its lines, checks and folds them away from the event loop, which stays free meanwhile (PostgreSQL's steps in a thread, SQLite's writer thread); cancelled (Ctrl-C) while it reads, it rolls back whole, and the ledger takes the same import after it."""
    sim = SimulatedHypervisor(tmp_path / "sim.json")

    async def go() -> tuple[Any, ...]:
        async with vmledger.open(str(tmp_path / "a.db"), hypervisor=sim) as a:
            await _story(a)
            exported = [line async for line in a.export()]
        loop = asyncio.get_running_loop()
        answered: list[str] = []

        def held(holding: asyncio.Event, resume: threading.Event) -> Callable[[], Iterator[str]]:
            """Return the export's lines, read in the import's thread, which holds at the fourth until `resume`."""
            def lines() -> Iterator[str]:
                for n, line in enumerate(exported):
                    if n == 3:
                        # The loop answers while this runs, then the caller is cancelled while it waits.
                        answered.append(asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "free"), loop).result(10))
                        loop.call_soon_threadsafe(holding.set)
                        resume.wait(30)
                    yield line
            return lines

        async with vmledger.open(url, hypervisor=SimulatedHypervisor(tmp_path / "sim-b.json")) as b:
            holding, resume = asyncio.Event(), threading.Event()
            task = asyncio.ensure_future(b.import_lines(held(holding, resume)))
            await _held(task, holding)
            task.cancel()
            # Resumed only once the cancellation has reached it: a SQLite import's caller returns at once (its
            # thread then stops at its next statement), a PostgreSQL one's waits for the step under way.
            await asyncio.wait({task}, timeout=0.5)
            resume.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            left = (await b.log.head(), await table_rows(b.log.fetch_all))
            holding, resume = asyncio.Event(), threading.Event()
            task = asyncio.ensure_future(b.import_lines(held(holding, resume)))
            await _held(task, holding)
            resume.set()
            return answered, left, await task, len(exported), [line async for line in b.export()] == exported

    answered, (head, rows), position, count, same = asyncio.run(go())
    assert (answered, head, {table: r for table, r in rows.items() if r}, position, same) == (
        ["free", "free"], 0, {}, count, True)
