"""Drift tells the truth: every row, now and as of every position, is the reference rule's, on both backends (issue 13).

Commands drive a real ledger on the simulated hypervisor: definitions,
starts, stops, requests in every scope (in and out of bounds, for values
already held), out-of-band balloons and config changes, tray locks, faults
and timeouts, observations.  `tests/drift_reference.py` computes each drift
row from the events alone; the ledger's stored rows and its as-of answers
must equal it.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import vmledger
from vmledger.adapters.simulated import SimulatedHypervisor
from tests.drift_reference import reference_drift
from tests.pg import create_database

MiB, GiB = 2**20, 2**30
NAMES = ("web", "db")
VALUES = {
    "memory": (512 * MiB, 1 * GiB, 2 * GiB, 100 * GiB),
    "max_memory": (2 * GiB, 4 * GiB, 8 * GiB),
    "vcpus": (1, 2, 4, 9),
    "max_vcpus": (2, 4),
    "media:hdc": ("", "/iso/a.iso", "/iso/b.iso"),
}
_names = st.sampled_from(NAMES)
_SETS = st.sampled_from(sorted(VALUES)).flatmap(lambda prop: st.tuples(
    st.just("set"), _names, st.just(prop), st.sampled_from(VALUES[prop]),
    st.sampled_from(("live", "persistent", "both", "current"))))
COMMANDS = st.one_of(
    _SETS, _SETS, _SETS,
    st.tuples(st.just("define"), _names, st.sampled_from(("pv", "hvm"))),
    st.tuples(st.sampled_from(("start", "stop", "start", "lock", "unlock")), _names),
    st.tuples(st.just("balloon"), _names, st.sampled_from((768 * MiB, 1 * GiB, 1536 * MiB))),
    st.sampled_from(sorted(VALUES)).flatmap(lambda prop: st.tuples(
        st.just("configure"), _names, st.just(prop), st.sampled_from(VALUES[prop]))),
    st.tuples(st.just("host_free"), st.sampled_from((0, 300 * MiB, 64 * GiB))),
    st.tuples(st.just("capability"), _names, st.sampled_from(("balloon", "memory_hotplug", "vcpu_hotplug")),
              st.booleans()),
    st.tuples(st.just("fault"), _names, st.sampled_from(("memory", "vcpus", "media:hdc")),
              st.sampled_from(("error", "error", "timeout"))),
    st.tuples(st.just("observe"), st.sampled_from((None, *NAMES))),
)
_databases = itertools.count(1)


async def _run(ledger: vmledger.Ledger, sim: SimulatedHypervisor, command: tuple) -> None:
    """Run one command; a caller error or a hypervisor refusal is part of the story, not a failure."""
    kind, *args = command
    calls = {
        "define": lambda name, guest: ledger.define(name, guest_type=guest, memory=1 * GiB, max_memory=4 * GiB,
                                                    vcpus=2, max_vcpus=4, cdroms={"hdc": ""}),
        "start": ledger.start, "stop": ledger.stop,
        "lock": lambda name: sim.lock_tray(name, "hdc"), "unlock": lambda name: sim.unlock_tray(name, "hdc"),
        "set": lambda name, prop, value, scope: ledger.set(name, prop, value, scope=scope, principal="alice"),
        "balloon": sim.balloon, "configure": sim.configure, "host_free": sim.set_host_free,
        "capability": sim.set_capability, "fault": sim.inject_fault, "observe": ledger.observe,
    }
    try:
        await calls[kind](*args)
    except vmledger.VmledgerError:
        pass


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Any:
    """Return a function making the URL of a fresh, empty ledger database on each backend."""
    if request.param == "sqlite":
        return lambda tmp: str(tmp / "ledger.db")
    dsn = request.getfixturevalue("pg_dsn")
    return lambda tmp: create_database(dsn, f"drift_{next(_databases)}")


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(guests=st.tuples(st.sampled_from(("pv", "hvm")), st.sampled_from(("pv", "hvm"))),
       commands=st.lists(COMMANDS, min_size=1, max_size=25))
# A balloon the host can grow only part of the way: a live change partially applied, then both scopes.
@example(guests=("pv", "pv"), commands=[("host_free", 300 * MiB), ("set", "web", "memory", 2 * GiB, "live"),
                                        ("set", "web", "memory", 100 * GiB, "both")])
def test_every_drift_row_is_the_reference_rule_s_now_and_as_of_every_position(
        backend: Any, tmp_path_factory: pytest.TempPathFactory, guests: tuple[str, str], commands: list[tuple]) -> None:
    """After any commands, drift now and as of every position equals the reference rule over the events up to there.

    Both domains are defined first and `web` started, so that most commands meet a running domain.
    """
    commands = [("define", "web", guests[0]), ("define", "db", guests[1]), ("start", "web"), *commands]
    tmp = tmp_path_factory.mktemp("drift")

    async def go() -> tuple[list, list]:
        sim = SimulatedHypervisor(tmp / "sim.json")
        async with vmledger.open(backend(tmp), hypervisor=sim, hypervisor_timeout=0.05) as ledger:
            now = []  # (head, drift) after each command, from the stored rows
            for command in commands:
                await _run(ledger, sim, command)
                now.append((await ledger.log.head(), await ledger.drift()))
            events = [rec async for rec in ledger.events()]
            as_of = [await ledger.drift(as_of=p) for p in range(len(events) + 1)]
        return ([now, as_of], [[(head, reference_drift(events[:head])) for head, _ in now],
                               [reference_drift(events[:p]) for p in range(len(events) + 1)]])

    got, want = asyncio.run(go())
    assert got == want
