"""The feed's filters (`events --domain --type --since --until`) yield what a scan would, read from an index (issue 17)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vmledger
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.eventstore.backends.common import COLUMNS, FILTER_INDEXES, filter_sql
from vmledger.eventstore.catalogue import Outcome
from vmledger.eventstore.events import (
    DomainDefined, DomainStarted, DomainStopped, DomainUndefined, Event, change_event,
)
from vmledger.eventstore.log import EventFilter, Metadata, RecordedEvent

GiB = 2**30
START = datetime(2026, 3, 1, tzinfo=timezone.utc)
#: (stream, domain name): `web` is defined, undefined and defined again under a new stream.
STREAMS = (("a" * 32, "web"), ("b" * 32, "db"), ("c" * 32, "web"), ("d" * 32, "cache"))
TYPES = ("DomainDefined", "DomainStarted", "DomainUndefined", "MemoryChangeRequested", "MemoryChangeApplied",
         "VcpusChangeRequested")


def _defined(uuid: str, name: str) -> DomainDefined:
    config = {"memory": GiB, "max_memory": 4 * GiB, "vcpus": 2, "max_vcpus": 4, "numa_nodes": 1}
    return DomainDefined(domain=name, uuid=uuid, guest_type="pv", config=config, capabilities={"balloon": True})


def _requests(prefix: str, count: int) -> list[Event]:
    """Return `count` requests with their persistent outcome, memory and vCPUs in turn."""
    events: list[Event] = []
    for j in range(count):
        prop, value = ("memory", GiB + j * 2**20) if j % 2 else ("vcpus", 1 + j % 4)
        rid = f"{prefix}-{j}"
        events += [change_event(prop, Outcome.REQUESTED)(request_id=rid, property=prop, value=value, scope="persistent",
                                                          principal="alice"),
                   change_event(prop, Outcome.APPLIED)(request_id=rid, property=prop, scope="persistent",
                                                        requested=value, value=value)]
    return events


async def _build(ledger: vmledger.Ledger, per_stream: int) -> None:
    """Append the story of `STREAMS`, one append a minute, some appends at the same minute."""
    appends: list[tuple[str, list[Event]]] = []
    for uuid, name in STREAMS[:2]:
        appends += [(uuid, [_defined(uuid, name), DomainStarted(config={"memory": GiB})]),
                    (uuid, _requests(uuid[:1], per_stream))]
    appends += [("a" * 32, [DomainUndefined()])]
    for uuid, name in STREAMS[2:]:
        appends += [(uuid, [_defined(uuid, name)]), (uuid, _requests(uuid[:1], per_stream))]
    appends += [("b" * 32, _requests("b2", 3))]
    versions: dict[str, int] = {}
    for n, (uuid, events) in enumerate(appends):
        await ledger.log.append(uuid, versions.get(uuid, 0), events, Metadata(principal="alice"),
                                now=START + timedelta(minutes=n // 2))
        versions[uuid] = versions.get(uuid, 0) + len(events)


@contextlib.asynccontextmanager
async def _ledger(url: str, tmp_path: Any) -> AsyncIterator[vmledger.Ledger]:
    async with vmledger.open(url, hypervisor=SimulatedHypervisor(tmp_path / "sim.json")) as ledger:
        yield ledger


def _expected(everything: list[RecordedEvent], start: int, domain: str | None, types: list[str] | None,
              since: datetime | None, until: datetime | None) -> list[int]:
    """Return the positions a filter keeps, by a scan of the whole feed, the streams of a name read from its definitions."""
    streams = {r.stream for r in everything if r.type == "DomainDefined" and r.event.domain == domain}
    return [r.position for r in everything if r.position > start
            and (domain is None or r.stream in streams) and (types is None or r.type in types)
            and (since is None or r.recorded_at >= since) and (until is None or r.recorded_at <= until)]


def test_filtered_feed_equals_a_scan_of_the_whole_feed(url: str, tmp_path: Any) -> None:
    """Any combination of domain, types, period and start yields exactly the events a scan of the whole feed keeps."""
    async def setup() -> list[RecordedEvent]:
        async with _ledger(url, tmp_path) as ledger:
            await _build(ledger, 6)
            return [r async for r in ledger.events()]

    everything = asyncio.run(setup())
    times = st.none() | st.integers(-1, 12).map(lambda m: START + timedelta(minutes=m, seconds=m % 2 * 30))

    @settings(database=None, deadline=None, max_examples=25)
    @given(st.integers(0, len(everything)), st.none() | st.sampled_from(("web", "db", "cache")),
           st.none() | st.lists(st.sampled_from(TYPES), min_size=1, max_size=3), times, times)
    def check(start: int, domain: str | None, types: list[str] | None, since: datetime | None,
              until: datetime | None) -> None:
        async def go() -> list[int]:
            async with _ledger(url, tmp_path) as ledger:
                return [r.position async for r in ledger.events(from_position=start, domain=domain, types=types,
                                                                since=since, until=until)]

        assert asyncio.run(go()) == _expected(everything, start, domain, types, since, until)

    check()


def test_a_redefined_name_yields_both_streams_in_order(url: str, tmp_path: Any) -> None:
    """`domain` keeps the events of every domain that bore the name, undefined or not, in log order."""
    async def go() -> list[tuple[str, str]]:
        async with _ledger(url, tmp_path) as ledger:
            await _build(ledger, 1)
            return [(r.stream[:1], r.type) async for r in ledger.events(domain="web")]

    assert asyncio.run(go()) == [
        ("a", "DomainDefined"), ("a", "DomainStarted"), ("a", "VcpusChangeRequested"), ("a", "VcpusChangeApplied"),
        ("a", "DomainUndefined"), ("c", "DomainDefined"), ("c", "VcpusChangeRequested"), ("c", "VcpusChangeApplied")]


def test_bad_filters_are_errors(url: str, tmp_path: Any) -> None:
    """An unknown domain or event type, or a period that is not a time, is the caller's error."""
    async def go() -> list[str]:
        errors = []
        async with _ledger(url, tmp_path) as ledger:
            await _build(ledger, 1)
            for kwargs in ({"domain": "nosuch"}, {"types": ["MemoryChangeRequestd"]}, {"since": "yesterday"},
                           {"domain": "-bad"}):
                with pytest.raises(vmledger.InvalidRequestError) as caught:
                    _ = [r async for r in ledger.events(**kwargs)]  # type: ignore[arg-type]
                errors.append(str(caught.value))
        return errors

    assert asyncio.run(go()) == [
        "unknown domain 'nosuch'", "unknown event type 'MemoryChangeRequestd': did you mean 'MemoryChangeRequested'?",
        "since and until must be datetimes, not 'yesterday'",
        "invalid domain name '-bad': use ASCII letters, digits, '.', '_' and '-', not '-' first"]


def test_following_a_domain_yields_its_new_events_and_a_redefinition(url: str, tmp_path: Any) -> None:
    """`subscribe(domain=...)` catches up on the name's events, then follows them, a later definition of the name too."""
    async def go() -> list[tuple[str, str]]:
        async with _ledger(url, tmp_path) as ledger:
            await _build(ledger, 1)
            got: list[tuple[str, str]] = []

            async def follow() -> None:
                async for r in ledger.subscribe(from_position=6, domain="db", types=["DomainDefined",
                                                                                    "VcpusChangeRequested"]):
                    got.append((r.stream[:1], r.type))
                    if len(got) == 6:
                        return

            task = asyncio.ensure_future(follow())
            await asyncio.sleep(0.3)
            await ledger.log.append("e" * 32, 0, [_defined("e" * 32, "other")] + _requests("e", 1),
                                    Metadata(principal="p"), now=START + timedelta(hours=1))
            await ledger.log.append("b" * 32, 10, _requests("b3", 1) + [DomainStopped(), DomainUndefined()], Metadata(principal="p"),
                                    now=START + timedelta(hours=1))
            await ledger.log.append("f" * 32, 0, [_defined("f" * 32, "db")] + _requests("f", 1),
                                    Metadata(principal="p"), now=START + timedelta(hours=1))
            await asyncio.wait_for(task, 10)
        return got

    assert asyncio.run(go()) == [("b", "VcpusChangeRequested")] * 4 + [("f", "DomainDefined"),
                                                                        ("f", "VcpusChangeRequested")]


async def _plan(ledger: vmledger.Ledger, where: EventFilter, postgres: bool) -> str:
    bounds, params = filter_sql(None, where)
    sql = f"SELECT {COLUMNS} FROM events WHERE position > ?{bounds} ORDER BY position LIMIT 2000"
    if postgres:
        await ledger.log.fetch_all("ANALYZE events")
        return json.dumps(await ledger.log.fetch_all("EXPLAIN (FORMAT JSON) " + sql, (0, *params)))
    return str(await ledger.log.fetch_all("EXPLAIN QUERY PLAN " + sql, (0, *params)))


def test_domain_and_type_filters_are_answered_from_their_index(url: str, tmp_path: Any) -> None:
    """The query of a domain's events searches the streams' index, and of a type's the types' index: no scan of the log."""
    async def go() -> list[str]:
        async with _ledger(url, tmp_path) as ledger:
            await _build(ledger, 400)
            postgres = url.startswith("postgres")
            # A domain of few events among many, as a fleet's is: here none among 3,200.
            return [await _plan(ledger, EventFilter(streams=("e" * 32,)), postgres),
                    await _plan(ledger, EventFilter(types=("DomainStarted",)), postgres)]

    by_stream, by_type = asyncio.run(go())
    assert ("events_stream_position" in by_stream, "events_type_position" in by_type,
            "SCAN events" in by_stream + by_type, "Seq Scan" in by_stream + by_type) == (True, True, False, False)


def test_an_older_ledger_gets_the_filter_indexes_when_a_writer_opens_it(url: str, tmp_path: Any) -> None:
    """A ledger made before the filter indexes existed gets them the next time a writer opens it, its events unchanged."""
    sqlite = not url.startswith("postgres")

    async def indexes(ledger: vmledger.Ledger) -> list[str]:
        sql = ("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'" if sqlite
               else "SELECT indexname FROM pg_indexes WHERE tablename = 'events'")
        return sorted(r[0] for r in await ledger.log.fetch_all(sql) if r[0].endswith(("_at", "_position")))

    async def older() -> list[Any]:
        async with _ledger(url, tmp_path) as ledger:
            await _build(ledger, 1)
            rows = await ledger.log.fetch_all(f"SELECT {COLUMNS} FROM events ORDER BY position")
        if sqlite:  # the file as an older version left it: without the indexes, its schema stamp another
            import sqlite3

            conn = sqlite3.connect(url)
            conn.executescript("DROP INDEX events_stream_position; DROP INDEX events_type_position; "
                               "PRAGMA user_version = 1;")
            conn.close()
        else:
            import asyncpg

            conn = await asyncpg.connect(url)
            await conn.execute("DROP INDEX events_stream_position; DROP INDEX events_type_position")
            await conn.close()
        return rows

    async def reopened() -> tuple[list[str], list[Any]]:
        async with _ledger(url, tmp_path) as ledger:
            return await indexes(ledger), await ledger.log.fetch_all(f"SELECT {COLUMNS} FROM events ORDER BY position")

    rows = asyncio.run(older())
    names = sorted(sql.split()[5] for sql in FILTER_INDEXES)
    assert asyncio.run(reopened()) == (sorted(["events_recorded_at", *names]), rows)


def test_types_are_any_collection_of_names_and_open_takes_flags_that_are_bools(tmp_path: Any) -> None:
    """`types` takes a name, a list, a set or a dict's keys alike, never a mapping; `open` refuses `create="no"`."""
    path = str(tmp_path / "l.db")

    async def go() -> tuple[list[list[int]], str, list[str]]:
        async with vmledger.open(path, hypervisor=SimulatedHypervisor(tmp_path / "sim.json")) as ledger:
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4)
            await ledger.start("web")
            found = [[e.position async for e in ledger.events(types=types)] for types in (
                "DomainStarted", ["DomainStarted"], {"DomainStarted"}, frozenset({"DomainStarted"}),
                {"DomainStarted": 1}.keys())]
            with pytest.raises(vmledger.InvalidRequestError) as mapping:
                [e async for e in ledger.events(types={"DomainStarted": 1})]
        refused = []
        for flags in ({"create": "no"}, {"read_only": 1}):
            with pytest.raises(vmledger.InvalidRequestError) as caught:
                async with vmledger.open(str(tmp_path / "other.db"), **flags):
                    pass
            refused.append(str(caught.value))
        return found, str(mapping.value), refused

    found, mapping, refused = asyncio.run(go())
    assert (found, mapping.startswith("types must be an event type's name or a collection of them"), refused) == (
        [[2]] * 5, True, ["create must be true or false, not 'no'", "read_only must be true or false, not 1"])
    assert not (tmp_path / "other.db").exists()
