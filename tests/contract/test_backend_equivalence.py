"""SQLite and PostgreSQL answer alike: the same calls on a ledger of each, the same answers.

The contract suite states each promise on both backends; this draws
sequences of calls (`tests.equivalence.OPS`: requests valid or not, reads,
power changes, reverts, `observe`, the simulator's perturbations) and makes
each on a SQLite ledger and on a PostgreSQL one, each with a simulator of
its own, started alike.  Every answer and every error must be the same, but
for what each ledger makes for itself (`tests.equivalence.answers`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmledger
from vmledger.adapters.simulated import SimulatedHypervisor
from tests.equivalence import OPS, answers, new_name
from tests.pg import create_database


@pytest.fixture(scope="module")
def ledgers(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """Return the paths of a fresh SQLite ledger, and of the PostgreSQL one's simulator, and that one's URL."""
    root = tmp_path_factory.mktemp("backends")
    yield str(root / "ledger.db"), str(root / "postgres.sim.json"), create_database(pg_dsn, "equivalence")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(guest_type=st.sampled_from(["pv", "hvm"]), running=st.booleans(), ops=OPS)
def test_postgresql_answers_every_call_as_sqlite_does(ledgers: tuple[str, str, str], guest_type: str,
                                                      running: bool, ops: list[tuple]) -> None:
    """The same calls on a SQLite ledger and on a PostgreSQL one: the same answers, the same errors."""
    path, sim, url = ledgers
    name = new_name()

    async def both() -> tuple[list[Any], list[Any]]:
        async with vmledger.open(path, hypervisor_timeout=0.5) as sqlite, \
                vmledger.open(url, hypervisor=SimulatedHypervisor(sim), hypervisor_timeout=0.5) as postgres:
            return (await answers(sqlite, name, guest_type, running, ops),
                    await answers(postgres, name, guest_type, running, ops))

    on_sqlite, on_postgres = asyncio.run(both())
    assert on_postgres == on_sqlite
