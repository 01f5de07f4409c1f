"""Audit, diff and revert on real SQLite and PostgreSQL ledgers, through the API and the CLI (issue 17)."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import sqlite3
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import vmledger
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.cli import main
from vmledger.eventstore.catalogue import Outcome
from vmledger.eventstore.events import (
    DomainDefined, DomainStarted, DomainStopped, LiveValueObserved, change_event,
)
from vmledger.eventstore.log import Metadata
from vmledger.projections import queries
from vmledger.projections.queries import domain_view
from vmledger.projections.store import RULES
from tests.contract.test_rules_upgrade import _execute

GiB = 2**30
T0 = datetime(2025, 3, 1, tzinfo=timezone.utc)
CONFIG = {"memory": GiB, "max_memory": 4 * GiB, "vcpus": 2, "max_vcpus": 4, "numa_nodes": 1, "media:hdc": ""}
CAPS = {"balloon": True, "memory_hotplug": None, "vcpu_hotplug": None}


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Return the URL of an empty ledger database on each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return request.getfixturevalue("pg_database")


def _at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _request(rid: str, prop: str, value: Any, scope: str, who: str, *outcomes: tuple[str, Outcome, Any, str | None]) -> list:
    """Return a `…Requested` and its outcomes `(scope, outcome, value in force, reason)`."""
    events = [change_event(prop, Outcome.REQUESTED)(request_id=rid, property=prop, value=value, scope=scope, principal=who)]
    for s, outcome, kept, reason in outcomes:
        events.append(change_event(prop, outcome)(request_id=rid, property=prop, scope=s, requested=value, value=kept,
                                                  reason=reason))
    return events


# The story the figures below are counted from, by hand: (seconds after T0, stream, principal, events).
STORY = [
    (0, "w", "ops", [DomainDefined(domain="web", uuid="w", guest_type="pv", config=CONFIG, capabilities=CAPS)]),
    (1, "w", "ops", [DomainStarted(config=CONFIG)]),
    (2, "d", "ops", [DomainDefined(domain="db", uuid="d", guest_type="hvm", config=CONFIG, capabilities=CAPS)]),
    # Persistent applied, then live partial: in flight for no time at all, then partial from 10 s to 40 s.
    (10, "w", "alice", _request("r1", "memory", 2 * GiB, "both", "alice", ("persistent", Outcome.APPLIED, 2 * GiB, None),
                                ("live", Outcome.PARTIALLY_APPLIED, 3 * GiB // 2, None))),
    (40, "w", "ops", [LiveValueObserved(property="memory", value=2 * GiB, previous=3 * GiB // 2)]),
    (50, "w", "bob", _request("r2", "vcpus", 3, "live", "bob", ("live", Outcome.REFUSED, 2, "guest_unsupported"))),
    # The live refusal settles the in-flight mark: one episode, refused, from 60 s to the stop at 200 s.
    (60, "w", "bob", _request("r3", "media:hdc", "/iso/a.iso", "both", "bob",
                              ("persistent", Outcome.APPLIED, "/iso/a.iso", None), ("live", Outcome.REFUSED, "", "tray_locked"))),
    (70, "d", "alice", _request("r4", "memory", 8 * GiB, "persistent", "alice",
                                ("persistent", Outcome.REFUSED, GiB, "out_of_range"))),
    # Persistent only: from 100 s to the stop.
    (100, "w", "alice", _request("r5", "vcpus", 4, "persistent", "alice", ("persistent", Outcome.APPLIED, 4, None))),
    (130, "w", "carol", _request("r6", "memory", 3 * GiB, "both", "carol")),  # in flight in both scopes
    (200, "w", "ops", [DomainStopped()]),
]


async def _write_story(url: str, sim: str) -> dict[int, int]:
    """Append the story at its times; return the position of the last event of each step, by its seconds."""
    positions, versions = {}, {"w": 0, "d": 0}
    async with vmledger.open(url, hypervisor=SimulatedHypervisor(sim)) as ledger:
        for seconds, stream, who, events in STORY:
            recorded = await ledger.log.append(stream, versions[stream], events, Metadata(principal=who), now=_at(seconds))
            versions[stream] += len(events)
            positions[seconds] = recorded[-1].position
    return positions


def _counts(principal: str, prop: str, scope: str, **statuses: int) -> dict[str, Any]:
    row = {"principal": principal, "property": prop, "scope": scope, "requests": sum(statuses.values()),
           "applied": 0, "partial": 0, "refused": 0, "failed": 0, "in_flight": 0}
    return {**row, **statuses}


def _episode(prop: str, cause: str, request: str | None, start: int, end: int | None, duration: float,
             positions: dict[int, int], since_position: int) -> dict[str, Any]:
    return {"domain": "web", "property": prop, "cause": cause, "request_id": request, "since_position": since_position,
            "started": _at(start).isoformat(timespec="microseconds"),
            "ended_position": None if end is None else positions[end],
            "ended": None if end is None else _at(end).isoformat(timespec="microseconds"), "duration": duration}


def test_audit_reports_outcomes_reasons_and_drift_episodes_of_a_period(url: str, tmp_path: Any) -> None:
    """The whole story, a part of it, one principal and one domain: every count, reason, episode and drift time as counted by hand; times without a zone are UTC."""
    positions = asyncio.run(_write_story(url, str(tmp_path / "sim.json")))
    # The memory request's outcomes are the story's 4th step's last two events; the media one's persistent outcome is one before its last.
    memory_live, media = positions[10], positions[60] - 1

    async def audits() -> list[dict[str, Any]]:
        async with vmledger.open(url, hypervisor=SimulatedHypervisor(str(tmp_path / "sim.json"))) as ledger:
            return [(await ledger.audit(**kw)).to_dict() for kw in (
                {"since": T0, "until": _at(300)}, {"since": _at(20), "until": _at(120)},
                {"since": T0, "until": _at(300), "principal": "bob"}, {"since": T0, "until": _at(300), "domain": "web"},
                {"since": T0.replace(tzinfo=None), "until": _at(300).replace(tzinfo=None)})]

    whole, part, bob, web, naive = asyncio.run(audits())
    # The memory request's persistent outcome made an in-flight difference its live outcome replaced at once: a request
    # being carried out, which the audit leaves out, and the table keeps no row of (3 episodes).
    episodes = [
        _episode("memory", "partial", "r1", 10, 40, 30.0, positions, memory_live),
        _episode("media:hdc", "refused", "r3", 60, 200, 140.0, positions, media),
        _episode("vcpus", "persistent_only", "r5", 100, 200, 100.0, positions, positions[100]),
    ]
    assert whole == {
        "since": T0.isoformat(timespec="microseconds"), "until": _at(300).isoformat(timespec="microseconds"),
        "domain": None, "principal": None,
        "requests": [
            _counts("alice", "memory", "live", partial=1), _counts("alice", "memory", "persistent", applied=1, refused=1),
            _counts("alice", "vcpus", "persistent", applied=1), _counts("bob", "media:hdc", "live", refused=1),
            _counts("bob", "media:hdc", "persistent", applied=1), _counts("bob", "vcpus", "live", refused=1),
            _counts("carol", "memory", "live", in_flight=1), _counts("carol", "memory", "persistent", in_flight=1)],
        "reasons": [{"status": "refused", "reason": r, "count": 1} for r in ("guest_unsupported", "out_of_range", "tray_locked")],
        "episodes": episodes,
        "drift": [{"domain": "web", "episodes": 3, "seconds": 30.0 + 140.0}],  # 100 s of vcpus lie within media's 140
    }
    assert (part["requests"], [(e["property"], e["duration"]) for e in part["episodes"]], part["drift"]) == (
        [_counts("alice", "memory", "persistent", refused=1), _counts("alice", "vcpus", "persistent", applied=1),
         _counts("bob", "media:hdc", "live", refused=1), _counts("bob", "media:hdc", "persistent", applied=1),
         _counts("bob", "vcpus", "live", refused=1)],
        [("memory", 20.0), ("media:hdc", 60.0), ("vcpus", 20.0)],
        [{"domain": "web", "episodes": 3, "seconds": 20.0 + 60.0}])
    assert naive == whole  # a time without a zone is UTC
    assert ([r["principal"] for r in bob["requests"]], [e["request_id"] for e in bob["episodes"]]) == (["bob"] * 3, ["r3"])
    assert (web["requests"][1], web["reasons"], web["episodes"]) == (
        _counts("alice", "memory", "persistent", applied=1), [{"status": "refused", "reason": r, "count": 1} for r in ("guest_unsupported", "tray_locked")], episodes)


def test_audit_command_prints_the_report_as_json_csv_and_a_table(url: str, tmp_path: Any,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`vmledger audit` prints the API's report in each format, and refuses a period that ends before it begins."""
    asyncio.run(_write_story(url, str(tmp_path / "sim.json")))

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--db", url, "--hypervisor", f"sim:{tmp_path / 'sim.json'}", "audit",
                     "--since", "2025-03-01T00:00:00Z", "--until", "2025-03-01T00:05:00Z", *args])
        return (code, *capsys.readouterr())

    code, out, _ = run("--json")
    report = json.loads(out)
    rows = list(csv.reader(io.StringIO(run("--format", "csv")[1])))
    table = run("--domain", "web", "--principal", "bob")[1].splitlines()
    refused = run("--until", "2025-02-01T00:00:00Z")
    assert (code, len(report["requests"]), report["drift"]) == (0, 8, [{"domain": "web", "episodes": 3, "seconds": 170.0}])
    assert ([r for r in rows if r[0] in ("section", "drift")], [r[:4] for r in rows if r[0] == "reasons"]) == (
        [["section", "principal", "property", "scope", "requests", "applied", "partial", "refused", "failed", "in_flight"],
         ["section", "status", "reason", "count"],
         ["section", "domain", "property", "cause", "request_id", "since_position", "started", "ended_position", "ended",
          "duration"],
         ["section", "domain", "episodes", "seconds"], ["drift", "web", "3", "170.0"]],
        [["reasons", "refused", "guest_unsupported", "1"], ["reasons", "refused", "out_of_range", "1"],
         ["reasons", "refused", "tray_locked", "1"]])
    assert (table[0], table[-1]) == (
        "audit from 2025-03-01T00:00:00.000000+00:00 to 2025-03-01T00:05:00.000000+00:00 (domain web, principal bob)",
        "  web: 2m20s in 1 episode")
    assert refused == (2, "", "vmledger: error: the period ends before it begins: until precedes since\n")


def test_diff_lists_every_change_with_its_event_and_request(url: str, tmp_path: Any,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`diff` between two positions, or two times, lists each value moved, in order, with the event and request that moved it."""
    positions = asyncio.run(_write_story(url, str(tmp_path / "sim.json")))
    capsys.readouterr()
    code = main(["--db", url, "--hypervisor", f"sim:{tmp_path / 'sim.json'}", "diff", "web",
                 "--from", str(positions[1]), "--to", "2025-03-01T00:01:00Z", "--json"])
    found = json.loads(capsys.readouterr()[0])

    def change(scope: str, prop: str, before: Any, after: Any, position: int, event: str, request: str | None,
               seconds: int) -> dict[str, Any]:
        return {"scope": scope, "property": prop, "before": before, "after": after, "position": position,
                "event": event, "request_id": request, "at": _at(seconds).isoformat(timespec="microseconds")}

    assert (code, found) == (0, {"domain": "web", "from_position": positions[1], "to_position": positions[60], "changes": [
        change("persistent", "memory", GiB, 2 * GiB, positions[10] - 1, "MemoryChangeApplied", "r1", 10),
        change("live", "memory", GiB, 3 * GiB // 2, positions[10], "MemoryChangePartiallyApplied", "r1", 10),
        change("live", "memory", 3 * GiB // 2, 2 * GiB, positions[40], "LiveValueObserved", None, 40),
        change("persistent", "media:hdc", "", "/iso/a.iso", positions[60] - 1, "MediaChangeApplied", "r3", 60),
    ]})


def test_revert_brings_back_what_can_go_back_and_lists_the_rest(url: str, tmp_path: Any,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """After `revert --to A` on the simulator, `show` equals `show` as of A for every property but the one fixed while running, which the report lists; a dry run writes nothing, and exits 3 as the revert does."""
    sim = str(tmp_path / "sim.json")

    def cli(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["--db", url, "--hypervisor", f"sim:{sim}", *args])
        return code, capsys.readouterr()[0]

    async def story() -> int:
        async with vmledger.open(url, hypervisor=SimulatedHypervisor(sim)) as ledger:
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4,
                                cdroms={"hdc": ""})
            await ledger.start("web")
            a = await ledger.log.head()
            await ledger.set("web", "max_memory", 8 * GiB, scope="persistent")
            await ledger.stop("web")
            await ledger.start("web")  # boots with 8 GiB: it can go back in the config only
            await ledger.set("web", "memory", 6 * GiB)
            await ledger.set("web", "media:hdc", "/iso/b.iso")
            await ledger.set("web", "vcpus", 3, scope="persistent")
            return a

    async def views(a: int, head: int) -> tuple[Any, Any, list]:
        async with vmledger.open(url, hypervisor=SimulatedHypervisor(sim)) as ledger:
            then = domain_view(next(iter((await ledger.model_at(a)).states.values())))
            events = [e async for e in ledger.events(from_position=head)]
            return (await ledger.show("web")).to_dict(), then, events

    a = asyncio.run(story())
    head = cli("events")[1].count("\n")
    dry = cli("revert", "web", "--to", str(a), "--dry-run", "--json")
    after_dry = cli("events")[1].count("\n")
    code, out = cli("revert", "web", "--to", str(a), "--json")
    report = json.loads(out)
    now, then, events = asyncio.run(views(a, head))
    # Memory goes down before its bound, max_memory, does.
    assert (json.loads(dry[1])["steps"], dry[0], after_dry) == ([
        {"property": "media:hdc", "scope": "both", "value": "", "current": "/iso/b.iso"},
        {"property": "memory", "scope": "both", "value": GiB, "current": 6 * GiB},
        {"property": "vcpus", "scope": "persistent", "value": 2, "current": 3},
        {"property": "max_memory", "scope": "persistent", "value": 4 * GiB, "current": 8 * GiB}], 3, head)
    assert (code, report["unrevertible"], [r["reason"] for r in report["records"]]) == (
        3, [{"property": "max_memory", "scope": "live", "value": 4 * GiB, "current": 8 * GiB,
             "why": "fixed while the domain runs: it changes at the next boot"}], [f"revert to #{a}"] * 4)
    assert [r["property"] for r in report["records"]] == ["media:hdc", "memory", "vcpus", "max_memory"]
    assert {e.metadata.correlation_id for e in events} == {report["correlation_id"]}
    back = [p for p in now["properties"] if p["property"] != "max_memory"]
    assert back == [p for p in then["properties"] if p["property"] != "max_memory"] == [
        {"property": "max_vcpus", "persistent": 4, "live": 4, "drift": None},
        {"property": "media:hdc", "persistent": "", "live": "", "drift": None},
        {"property": "memory", "persistent": GiB, "live": GiB, "drift": None},
        {"property": "numa_nodes", "persistent": 1, "live": 1, "drift": None},
        {"property": "vcpus", "persistent": 2, "live": 2, "drift": None}]
    assert now["properties"][0] == {"property": "max_memory", "persistent": 4 * GiB, "live": 8 * GiB,
                                    "drift": "requires_restart"}


def test_a_ledger_of_rules_2_gets_its_episodes_and_outcome_days_on_open(url: str, tmp_path: Any) -> None:
    """A ledger written before episodes and outcomes were counted (rules 2) has them rebuilt when a writer opens it, and verifies; a reader's audit is refused until then."""
    sim = SimulatedHypervisor(str(tmp_path / "sim.json"))
    asyncio.run(_write_story(url, str(tmp_path / "sim.json")))

    async def rows(ledger: vmledger.Ledger) -> tuple[int, int]:
        return tuple([(await ledger.log.fetch_all(sql))[0][0] for sql in (
            "SELECT count(*) FROM episodes", "SELECT CAST(coalesce(sum(count), 0) AS BIGINT) FROM outcome_days")])

    async def downgrade() -> tuple[int, int]:
        async with vmledger.open(url, hypervisor=sim) as ledger:
            counted = await rows(ledger)
            for sql in ("DELETE FROM episodes", "DELETE FROM outcome_days",
                        "UPDATE projection_position SET position = 2 WHERE name = 'rules'"):
                await _execute(ledger, sql)
            return counted

    async def reopen() -> tuple[tuple[int, int], str, tuple[int, int], bool]:
        async with vmledger.open(url, hypervisor=sim, read_only=True) as ledger:
            stale = await rows(ledger)
            with pytest.raises(vmledger.StorageError) as refused:  # a reader cannot rebuild them
                await ledger.audit()
        async with vmledger.open(url, hypervisor=sim) as ledger:
            return stale, str(refused.value), await rows(ledger), await ledger.verify() == await ledger.log.head()

    written = asyncio.run(downgrade())
    if not url.startswith("postgres"):
        with sqlite3.connect(url) as conn:  # the schema stamp of a version before the two tables
            conn.execute("PRAGMA user_version = 1")
    # Three episodes; six requests' outcomes: r1, r3 and r6 in two scopes, r2, r4 and r5 in one.
    assert (written, *asyncio.run(reopen())) == ((3, 9), (0, 0), (
        "this ledger's projections were made by an older vmledger, without the audit's tables: "
        "open it once for writing (vmledger rebuild, say) to rebuild them"), (3, 9), True)


def test_a_ledger_of_rules_4_reads_the_same_and_loses_its_windows_that_ended_in_flight_on_open(
        url: str, tmp_path: Any) -> None:
    """Rules 4 kept a row for each window between a request's two outcomes, which ended in flight: a reader's audit of such a ledger equals the current rules' audit, its verify says the rows are another version's rather than damaged, and a writer's open deletes the rows and verifies."""
    sim = SimulatedHypervisor(str(tmp_path / "sim.json"))
    positions = asyncio.run(_write_story(url, str(tmp_path / "sim.json")))
    # r1's persistent outcome (the step's last event but one) began the window, its live outcome ended it.
    window = ("w", "memory", positions[10] - 1, "in_flight", "r1", _at(10).isoformat(timespec="microseconds"),
              positions[10], _at(10).isoformat(timespec="microseconds"))
    in_flight = "SELECT count(*) FROM episodes WHERE cause = 'in_flight' AND ended IS NOT NULL"

    async def downgrade() -> tuple[dict[str, Any], int]:
        async with vmledger.open(url, hypervisor=sim) as ledger:
            report = (await ledger.audit(since=T0, until=_at(300))).to_dict()
            before = (await ledger.log.fetch_all(in_flight))[0][0]
        for sql in ("INSERT INTO episodes (domain, property, since_position, cause, request_id, since, ended_position, "
                    "ended) VALUES ({})".format(", ".join(repr(v) for v in window)),
                    "UPDATE projection_position SET position = 4 WHERE name = 'rules'"):
            await _execute(ledger, sql)
        return report, before

    async def reopen() -> tuple[dict[str, Any], int, str, int, int, bool]:
        async with vmledger.open(url, hypervisor=sim, read_only=True) as ledger:
            report = (await ledger.audit(since=T0, until=_at(300))).to_dict()
            stored = (await ledger.log.fetch_all(in_flight))[0][0]
            # A reader cannot rebuild the rows, nor compare them with this version's fold: no damage to report.
            with pytest.raises(vmledger.StorageError) as refused:
                await ledger.verify()
        async with vmledger.open(url, hypervisor=sim) as ledger:
            rules = await ledger.log.fetch_all("SELECT position FROM projection_position WHERE name = 'rules'")
            return (report, stored, str(refused.value), (await ledger.log.fetch_all(in_flight))[0][0], rules[0][0],
                    await ledger.verify() == await ledger.log.head())

    report, before = asyncio.run(downgrade())
    if not url.startswith("postgres"):
        with sqlite3.connect(url) as conn:  # the schema stamp of another version
            conn.execute("PRAGMA user_version = 1")
    assert (before, *asyncio.run(reopen())) == (0, report, 1, (
        f"this ledger's projections were made by another vmledger's fold rules (4; this one's are {RULES}), so "
        "they cannot be compared with its fold: open the ledger once for writing (vmledger rebuild, say) to "
        "rebuild them, then verify"), 0, RULES, True)


def test_whole_days_count_from_the_day_table_and_verify_catches_an_edited_count(url: str, tmp_path: Any) -> None:
    """A period of whole days (and an open one) counts the story's requests as counted by hand, from `outcome_days`; a count edited there fails verify, in full and since a checkpoint, naming the day's first request."""
    positions = asyncio.run(_write_story(url, str(tmp_path / "sim.json")))
    sim = SimulatedHypervisor(str(tmp_path / "sim.json"))

    async def audits() -> tuple[list[Any], vmledger.Checkpoint]:
        async with vmledger.open(url, hypervisor=sim) as ledger:
            found = [[r.to_dict() for r in (await ledger.audit(**kw)).requests] for kw in (
                {"since": T0, "until": T0 + timedelta(days=2)}, {"until": T0 + timedelta(days=1)}, {})]
            return found, await ledger.checkpoint()

    async def damage(since: vmledger.Checkpoint | None) -> str:
        async with vmledger.open(url, hypervisor=sim) as ledger:
            with pytest.raises(vmledger.ChainBrokenError) as caught:
                await ledger.checkpoint(since)
            return str(caught.value)

    async def tamper() -> None:
        async with vmledger.open(url, hypervisor=sim) as ledger:
            await _execute(ledger, "UPDATE outcome_days SET count = count + 1 WHERE principal = 'bob' AND scope = 'live' "
                                   "AND status = 'refused' AND reason = 'tray_locked'")

    found, checkpoint = asyncio.run(audits())
    asyncio.run(tamper())
    whole = [_counts("alice", "memory", "live", partial=1), _counts("alice", "memory", "persistent", applied=1, refused=1),
             _counts("alice", "vcpus", "persistent", applied=1), _counts("bob", "media:hdc", "live", refused=1),
             _counts("bob", "media:hdc", "persistent", applied=1), _counts("bob", "vcpus", "live", refused=1),
             _counts("carol", "memory", "live", in_flight=1), _counts("carol", "memory", "persistent", in_flight=1)]
    message = (f"ledger damaged at position {positions[10] - 2}: projection outcome_days disagrees with the log at row "
               "('2025-03-01', 'bob')")  # r1's request, the day's first
    assert (found, asyncio.run(damage(None)), asyncio.run(damage(checkpoint))) == ([whole] * 3, message, message)



def test_the_history_of_a_period_and_its_pages_are_slices_of_the_whole_history(url: str, tmp_path: Any) -> None:
    """`history` with `since` and `until` (both included; naive: UTC), `limit` and `offset`, bounds and pages the query reads alone, gives the slice of the whole history that comparing the times in Python keeps; a bad page is refused."""
    sim = str(tmp_path / "sim.json")
    asyncio.run(_write_story(url, sim))
    times = [T0 + timedelta(seconds=s) for s in (10, 60, 130)]  # r1, r3 and r6 were requested then
    bounds = [None, *times, times[1] + timedelta(microseconds=1), times[1] - timedelta(microseconds=1),
              times[1].replace(tzinfo=None), times[1].astimezone(timezone(timedelta(hours=2)))]
    pages = [(None, 0), (2, 0), (2, 1), (None, 4)]

    async def query() -> tuple[list[Any], dict[Any, Any], list[str]]:
        async with vmledger.open(url, hypervisor=SimulatedHypervisor(sim), read_only=True) as ledger:
            found = {}
            for (i, since), (j, until), (k, (limit, offset)) in itertools.product(
                    enumerate(bounds), enumerate(bounds), enumerate(pages)):
                found[i, j, k] = [r.request_id for r in await ledger.history(
                    since=since, until=until, limit=limit, offset=offset)]
            # The console's filter of an outcome in any scope, and its count of a filtered history.
            for status in ("applied", "partial", "refused", "failed", "in_flight"):
                rows = await queries.history_records(ledger.log.fetch_all, outcome=status)
                count = await queries.history_count(ledger.log.fetch_all, outcome=status, since=times[1])
                found[status] = ([r["request_id"] for r in rows], count)
            refused = []
            for bad in ({"limit": 0}, {"limit": True}, {"offset": -1}, {"offset": None}, {"limit": 2**63}):
                with pytest.raises(vmledger.InvalidRequestError) as caught:
                    await ledger.history(**bad)
                refused.append(str(caught.value).split(" must ")[0])
            return await ledger.history(), found, refused

    whole, found, refused = asyncio.run(query())
    utc = [None if b is None else b.replace(tzinfo=timezone.utc) if b.tzinfo is None else b for b in bounds]
    for status in ("applied", "partial", "refused", "failed", "in_flight"):
        ids, count = found.pop(status)
        kept = [r.request_id for r in whole if any(o.status == status for o in r.outcomes.values())]
        assert (ids, count) == (kept, len([r for r in whole if r.request_id in kept and r.requested_at >= times[1]]))
    for (i, j, k), ids in found.items():
        kept = [r.request_id for r in whole
                if (utc[i] is None or r.requested_at >= utc[i]) and (utc[j] is None or r.requested_at <= utc[j])]
        limit, offset = pages[k]
        assert ids == kept[offset:None if limit is None else offset + limit], (bounds[i], bounds[j], pages[k])
    assert [r.request_id for r in whole] == ["r1", "r2", "r3", "r4", "r5", "r6"]
    assert found[2, 2, 0] == ["r3"] and found[4, 0, 0] == ["r4", "r5", "r6"]  # one instant; from just after r3
    assert refused == ["limit", "limit", "offset", "offset", "limit"]
    assert [r.request_id for r in whole if "in_flight" in {o.status for o in r.outcomes.values()}] == ["r6"]


def test_diff_through_an_undefine_lists_the_persistent_values_going(url: str, tmp_path: Any,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """An undefine ends the persistent config: `diff` across it lists each persistent value going, at its event."""
    sim = str(tmp_path / "sim.json")

    async def story() -> int:
        async with vmledger.open(url, hypervisor=SimulatedHypervisor(sim)) as ledger:
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4)
            await ledger.start("web")
            await ledger.stop("web")
            await ledger.undefine("web")
            return await ledger.log.head()

    head = asyncio.run(story())
    capsys.readouterr()
    code = main(["--db", url, "--hypervisor", f"sim:{sim}", "diff", "web", "--from", str(head - 1), "--json"])
    found = json.loads(capsys.readouterr()[0])
    assert (code, [(c["scope"], c["property"], c["before"], c["after"], c["event"]) for c in found["changes"]]) == (
        0, [("persistent", p, v, None, "DomainUndefined") for p, v in (
            ("max_memory", 4 * GiB), ("max_vcpus", 4), ("memory", GiB), ("numa_nodes", 1), ("vcpus", 2))])


def test_a_drift_still_open_counts_up_to_now_in_a_period_that_ends_later(url: str, tmp_path: Any) -> None:
    """Audited until ten days ahead, a drift begun a moment ago has drifted a moment, not ten days."""
    async def go() -> tuple:
        sim = SimulatedHypervisor(tmp_path / "sim.json")
        async with vmledger.open(url, hypervisor=sim) as ledger:
            await ledger.define("web", guest_type="pv", memory=2**30, max_memory=2**32, vcpus=1, max_vcpus=2)
            await ledger.start("web")
            await sim.balloon("web", 2**31)
            await ledger.observe("web")  # the balloon: an external drift, open
            began = datetime.now(timezone.utc)
            report = await ledger.audit(until=began + timedelta(days=10))
            return report, (datetime.now(timezone.utc) - began).total_seconds()

    report, elapsed = asyncio.run(go())
    assert ([(d.domain, d.episodes) for d in report.drift], [e.ended for e in report.episodes]) == ([("web", 1)], [None])
    assert 0 <= report.drift[0].seconds <= elapsed + 1 and report.episodes[0].duration <= elapsed + 1
