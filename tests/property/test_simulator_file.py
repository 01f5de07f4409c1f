"""The simulator's state file: whatever calls two processes' simulators make, the file reads back as the state."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmledger.adapters import simulated
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.eventstore.errors import VmledgerError
from vmledger.eventstore.hypervisor import DomainSpec

GiB = 2**30
NAMES = ("a", "b")


def _spec(name: str) -> DomainSpec:
    config = {"memory": GiB, "max_memory": 4 * GiB, "vcpus": 1, "max_vcpus": 4, "numa_nodes": 1, "media:hdc": ""}
    return DomainSpec(name=name, uuid=f"{ord(name):032x}", guest_type="pv", config=tuple(sorted(config.items())),
                      capabilities=())


_calls = st.one_of(
    st.tuples(st.just("define"), st.sampled_from(NAMES)),
    st.tuples(st.just("undefine"), st.sampled_from(NAMES)),
    st.tuples(st.just("start"), st.sampled_from(NAMES)),
    st.tuples(st.just("stop"), st.sampled_from(NAMES)),
    st.tuples(st.just("memory"), st.sampled_from(NAMES), st.integers(1, 4).map(lambda n: n * GiB)),
    st.tuples(st.just("vcpus"), st.sampled_from(NAMES), st.integers(1, 4)),
    st.tuples(st.just("balloon"), st.sampled_from(NAMES), st.integers(1, 4).map(lambda n: n * GiB // 2)),
    st.tuples(st.just("tray"), st.sampled_from(NAMES), st.booleans()),
    st.tuples(st.just("host_free"), st.integers(0, 8).map(lambda n: n * GiB)),
)


async def _call(sim: SimulatedHypervisor, call: tuple) -> None:
    kind, *args = call
    if kind == "define":
        await sim.define(_spec(args[0]))
    elif kind in ("undefine", "start", "stop"):
        await getattr(sim, kind)(args[0])
    elif kind in ("memory", "vcpus"):
        await sim.apply_live(args[0], kind, args[1])
    elif kind == "balloon":
        await sim.balloon(*args)
    elif kind == "tray":
        await (sim.lock_tray if args[1] else sim.unlock_tray)(args[0], "hdc")
    else:
        await sim.set_host_free(args[0])


@pytest.mark.parametrize("slack", [0, 256 << 10])
@settings(database=None, deadline=None, max_examples=100)
@given(calls=st.lists(st.tuples(st.booleans(), _calls), max_size=40))
def test_the_state_file_reads_back_as_the_state_whoever_saved(slack: int, calls: list[tuple[bool, tuple]]) -> None:
    """Two simulators on one file take turns; after each call a third reads the file afresh and finds the state
    the one that called holds, the lines appended and the file written whole (no slack: often) alike."""
    original = simulated._SLACK
    simulated._SLACK = slack
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "sim.json"
            sims = (SimulatedHypervisor(path), SimulatedHypervisor(path))

            async def scenario() -> None:
                for second, call in calls:
                    sim = sims[second]
                    try:
                        await _call(sim, call)
                    except VmledgerError:
                        pass  # refused or failed: the state must still read back as it stands
                    if sim._cache is not None:
                        assert SimulatedHypervisor(path)._load()[0] == sim._cache[1]

            asyncio.run(scenario())
    finally:
        simulated._SLACK = original
