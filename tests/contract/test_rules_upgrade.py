"""Rows an older version's fold rules made are rebuilt when a writer opens the ledger (issue 13)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest

import vmledger
from vmledger.adapters.simulated import SimulatedHypervisor
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
