"""`vmledger.connect()` answers as `vmledger.open()` does: the same calls on a served ledger and a local one.

Each call `tests.equivalence.OPS` draws is made on a ledger this process
opens and, through `vmledger.connect`, on one that a `vmledger serve`
process holds; the two start alike and get the same calls in the same
order.  Every answer must be the same, and every error the same class of
the ledger's with the same message, but for what each ledger makes for
itself (`tests.equivalence.answers`).

So the server answers bad input in the ledger's words, not its web
framework's (a scope, a value of another type); it takes or refuses what
the simulator takes or refuses in process; and an error keeps its class on
the wire.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmledger
from tests.e2e.served import Served, need_serve, served
from tests.equivalence import OPS, PRINCIPAL, answers, new_name


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, str]]:
    """Return a server on a fresh SQLite ledger, and the path of another fresh one for this process to open."""
    need_serve()
    root = tmp_path_factory.mktemp("equivalence")
    with served(f"sqlite:///{root}/served.db", str(root / "server.log")) as server:
        yield server, str(root / "local.db")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(guest_type=st.sampled_from(["pv", "hvm"]), running=st.booleans(), ops=OPS)
def test_a_served_ledger_answers_every_call_as_a_local_one(ledgers: tuple[Served, str], guest_type: str,
                                                           running: bool, ops: list[tuple]) -> None:
    """The same calls on a local ledger and through `vmledger.connect`: the same answers, the same errors."""
    server, path = ledgers
    name = new_name()

    async def both() -> tuple[list[Any], list[Any]]:
        async with vmledger.open(path, hypervisor_timeout=0.5) as local, \
                vmledger.connect(server.url, token=server.tokens[PRINCIPAL]) as remote:
            return (await answers(local, name, guest_type, running, ops),
                    await answers(remote, name, guest_type, running, ops))

    here, there = asyncio.run(both())
    assert there == here
