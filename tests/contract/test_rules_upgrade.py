"""Rows an older version's fold rules made are rebuilt when a writer opens the ledger (issue 13)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import pytest

import vmledger
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.cli import main
from vmledger.projections.store import RULES

GiB = 2**30


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Return the URL of an empty ledger database on each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return request.getfixturevalue("pg_database")


def test_rows_of_older_rules_are_rebuilt_on_open(url: str, tmp_path: Any) -> None:
    """A ledger whose drift row an older rule wrote, naming no rules, gets the current rule's row on open and verifies."""
    sim = tmp_path / "sim.json"

    async def write() -> list[dict[str, Any]]:
        async with vmledger.open(url, hypervisor=SimulatedHypervisor(sim)) as ledger:
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4)
            await ledger.start("web")
            await ledger.set("web", "vcpus", 3, scope="persistent")
            # As version 1's rules wrote it, and a ledger of then names no rules.
            for sql in ("UPDATE drift SET cause = 'requires_restart'", "DELETE FROM projection_position WHERE name = 'rules'"):
                await _execute(ledger, sql)
            return await ledger.drift()

    async def reopen() -> tuple[list[dict[str, Any]], bool, list[tuple]]:
        async with vmledger.open(url, hypervisor=SimulatedHypervisor(sim)) as ledger:
            rules = await ledger.log.fetch_all("SELECT position FROM projection_position WHERE name = 'rules'")
            return await ledger.drift(), await ledger.verify() == await ledger.log.head(), rules

    before = asyncio.run(write())
    if not url.startswith("postgres"):
        with sqlite3.connect(url) as conn:  # the schema stamp of a version that named no rules
            conn.execute("PRAGMA user_version = 1")
    after, head, rules = asyncio.run(reopen())
    assert ([d["cause"] for d in before], [d["cause"] for d in after], head, rules) == (
        ["requires_restart"], ["persistent_only"], True, [(RULES,)])


async def _execute(ledger: vmledger.Ledger, sql: str) -> None:
    """Change projection rows behind the ledger's back, as an older version's writer left them."""
    if hasattr(ledger.log, "dsn"):
        import asyncpg

        conn = await asyncpg.connect(ledger.log.dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    else:
        with sqlite3.connect(ledger.log.path) as conn:
            conn.execute(sql)


async def _rows_rebuilt(url: str) -> int:
    """Return how many `domains` rows PostgreSQL has counted inserted, which a rebuild inserts again (0 on SQLite)."""
    if not url.startswith("postgres"):
        return 0
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'domains'")
    finally:
        await conn.close()


def test_rebuild_of_a_ledger_of_older_rules_rebuilds_once_as_it_opens(
        url: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`vmledger rebuild` after an upgrade of the fold rules rebuilds once, as it opens; then as asked."""
    sim = tmp_path / "sim.json"

    async def write() -> int:
        async with vmledger.open(url, hypervisor=SimulatedHypervisor(sim)) as ledger:
            for name in ("web", "db"):
                await ledger.define(name, guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4)
            await ledger.start("web")
            await ledger.set("web", "vcpus", 3, scope="persistent")
            for sql in ("UPDATE drift SET cause = 'requires_restart'", "DELETE FROM projection_position WHERE name = 'rules'"):
                await _execute(ledger, sql)
            return await ledger.log.head()

    async def opened() -> tuple[bool, list[str], int]:
        async with vmledger.open(url, hypervisor=SimulatedHypervisor(sim)) as ledger:
            return ledger.log.rebuilt_on_open, [d["cause"] for d in await ledger.drift()], await ledger.verify()

    def older() -> None:
        if not url.startswith("postgres"):
            with sqlite3.connect(url) as conn:
                conn.execute("PRAGMA user_version = 1")

    head = asyncio.run(write())
    older()
    capsys.readouterr()
    runs = []
    for _ in range(2):
        inserted = asyncio.run(_rows_rebuilt(url))
        code = main(["--db", url, "--hypervisor", f"sim:{sim}", "rebuild"])
        runs.append((code, capsys.readouterr().out, asyncio.run(_rows_rebuilt(url)) - inserted))
    # Two domains: a rebuild inserts their two rows again, on PostgreSQL, where the count is kept.
    rebuilt = 2 if url.startswith("postgres") else 0
    assert runs == [(0, f"rebuilt projections up to position {head}\n", rebuilt)] * 2
    assert asyncio.run(opened()) == (False, ["persistent_only"], head)

    async def forget_rules() -> None:
        async with vmledger.open(url, hypervisor=SimulatedHypervisor(sim)) as ledger:
            await _execute(ledger, "DELETE FROM projection_position WHERE name = 'rules'")

    asyncio.run(forget_rules())
    older()
    assert asyncio.run(opened())[0]  # the flag the command reads


def test_a_ledger_of_rules_5_loses_its_outcomes_table_on_open_without_a_rebuild(url: str, tmp_path: Any) -> None:
    """Rules 5 kept each outcome twice, in the history row and in an `outcomes` row: a writer's open drops the table and names the current rules without a rebuild; audits before and after, a reader's among them, are the same."""
    sim = tmp_path / "sim.json"
    until: list[datetime] = []  # once the requests are made: open episodes last as long in each audit, to then

    async def write() -> tuple[Any, Any, int]:
        async with vmledger.open(url, hypervisor=SimulatedHypervisor(sim)) as ledger:
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4)
            await ledger.start("web")
            await ledger.set("web", "vcpus", 3, scope="both")
            await ledger.set("web", "vcpus", 9, scope="both")  # refused: above max_vcpus
            await ledger.set("web", "memory", 2 * GiB, scope="persistent")
            until.append(datetime.now(timezone.utc))
            audit, history = await ledger.audit(until=until[0]), await ledger.history()
            # The table as rules 5 kept it: a row per scope of each request, from its history row.
            for sql in ("CREATE TABLE outcomes (request_id TEXT NOT NULL, scope TEXT NOT NULL, domain TEXT NOT NULL, "
                        "property TEXT NOT NULL, principal TEXT NOT NULL, requested_at TEXT NOT NULL, "
                        "position BIGINT NOT NULL, status TEXT NOT NULL, reason TEXT, PRIMARY KEY (request_id, scope))",
                        "CREATE INDEX outcomes_time ON outcomes (requested_at, principal, property, scope, status, reason)",
                        "INSERT INTO outcomes SELECT request_id, 'persistent', domain, property, principal, requested_at, "
                        "position, 'applied', NULL FROM history",
                        "UPDATE projection_position SET position = 5 WHERE name = 'rules'"):
                await _execute(ledger, sql)
            return audit, history, await ledger.log.head()

    async def read() -> Any:
        async with vmledger.open(url, hypervisor=SimulatedHypervisor(sim), read_only=True) as ledger:
            return await ledger.audit(until=until[0])

    async def reopen() -> tuple[bool, Any, list[tuple], int, bool]:
        async with vmledger.open(url, hypervisor=SimulatedHypervisor(sim)) as ledger:
            rules = await ledger.log.fetch_all("SELECT position FROM projection_position WHERE name = 'rules'")
            tables = await ledger.log.fetch_all(
                "SELECT count(*) FROM sqlite_master WHERE name = 'outcomes'" if not url.startswith("postgres")
                else "SELECT count(*) FROM pg_class WHERE relname = 'outcomes'")
            return (ledger.log.rebuilt_on_open, await ledger.audit(until=until[0]), rules, tables[0][0],
                    await ledger.verify() == await ledger.log.head())

    audit, history, head = asyncio.run(write())
    if not url.startswith("postgres"):
        with sqlite3.connect(url) as conn:  # the schema stamp of the version of rules 5
            conn.execute("PRAGMA user_version = 1")
    assert asyncio.run(read()) == audit
    inserted = asyncio.run(_rows_rebuilt(url))
    assert asyncio.run(reopen()) == (False, audit, [(RULES,)], 0, True)
    assert asyncio.run(_rows_rebuilt(url)) == inserted  # no rebuild inserted the domain's row again
    # The audit counts what the requests' own records say, refused ones among them.
    told = Counter((r.principal, r.property, scope, o.status) for r in history for scope, o in r.outcomes.items())
    counted = Counter({(c.principal, c.property, c.scope, status): getattr(c, status) for c in audit.requests
                       for status in ("applied", "refused", "failed", "in_flight")})
    assert +counted == told and {status for *_, status in told} == {"applied", "refused"}
