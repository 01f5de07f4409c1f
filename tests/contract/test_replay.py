"""Custom projections: `replay` and `follow` feed a class of one's own every event in order, upcast, resumable (issue 17)."""

from __future__ import annotations

import asyncio
import collections
import json
import pathlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vmledger
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.eventstore.events import LiveValueObserved
from vmledger.eventstore.log import RecordedEvent

LINES = (pathlib.Path(__file__).resolve().parents[1] / "data" / "v1-log.jsonl").read_text(encoding="utf-8").splitlines()
#: The log as the export file holds it, read without vmledger: (position, type, schema version).
STORED = [(e["position"], e["type"], e["schema_version"]) for e in map(json.loads, LINES)]
GiB = 2**30


class TypeCounts:
    """Counts events by type in its `state`, and remembers the positions it was fed (not saved)."""

    def __init__(self) -> None:
        self.state: dict[str, int] = {}
        self.fed: list[RecordedEvent] = []

    def apply(self, event: RecordedEvent) -> None:
        self.state[event.type] = self.state.get(event.type, 0) + 1
        self.fed.append(event)


def _open(url: str, tmp_path: Any) -> Any:
    return vmledger.open(url, hypervisor=SimulatedHypervisor(tmp_path / "sim.json"))


def test_replay_feeds_every_event_in_order_upcast(url: str, tmp_path: Any) -> None:
    """A replay of an imported version-1 log feeds each event once, in position order, version-1 rows as the current class."""
    async def go() -> tuple[int, TypeCounts, int, list[int]]:
        async with _open(url, tmp_path) as ledger:
            await ledger.import_lines(lambda: LINES)
            whole, part = TypeCounts(), TypeCounts()
            last = await ledger.replay(whole)
            await ledger.replay(part, from_position=5, to_position=12)
            return last, whole, await ledger.replay(TypeCounts(), from_position=21), [r.position for r in part.fed]

    last, whole, none_fed, part = asyncio.run(go())
    observed = [r.event for r in whole.fed if r.type == "LiveValueObserved"]
    assert ((last, none_fed, part), [(r.position, r.type) for r in whole.fed], {type(e) for e in observed},
            {e.previous for e in observed}) == (
        (21, 21, list(range(6, 13))), [(p, t) for p, t, _ in STORED], {LiveValueObserved}, {None})
    assert [v for _, t, v in STORED if t == "LiveValueObserved"] == [1, 1]  # the rows were version 1 indeed


def test_a_checkpointed_replay_resumes_where_it_stopped(url: str, tmp_path: Any) -> None:
    """A replay cut at any position and resumed from its checkpoint by a new instance ends with the whole log's state."""
    async def setup() -> None:
        async with _open(url, tmp_path) as ledger:
            await ledger.import_lines(lambda: LINES)

    asyncio.run(setup())

    @settings(database=None, deadline=None, max_examples=8)
    @given(st.integers(0, len(STORED)), st.sampled_from((None, "MemoryChangeRequested")))
    def check(stop: int, types: str | None) -> None:
        checkpoint = tmp_path / "counts.json"
        checkpoint.unlink(missing_ok=True)

        async def go() -> tuple[dict, dict, list[int]]:
            async with _open(url, tmp_path) as ledger:
                await ledger.replay(TypeCounts(), to_position=stop, types=types, checkpoint=checkpoint)
                first = json.loads(checkpoint.read_text(encoding="utf-8"))
                resumed = TypeCounts()
                await ledger.replay(resumed, types=types, checkpoint=checkpoint)
                return first, json.loads(checkpoint.read_text(encoding="utf-8")), [r.position for r in resumed.fed]

        first, last, resumed = asyncio.run(go())
        kept = [(p, t) for p, t, _ in STORED if types in (None, t)]
        before = [(p, t) for p, t in kept if p <= stop]
        assert (first, last, resumed) == (
            {"position": before[-1][0] if before else 0, "state": dict(collections.Counter(t for _, t in before))},
            {"position": kept[-1][0], "state": dict(collections.Counter(t for _, t in kept))},
            [p for p, _ in kept if p > (before[-1][0] if before else 0)])

    check()


def test_follow_feeds_new_events_and_saves_its_checkpoint_when_cancelled(url: str, tmp_path: Any) -> None:
    """`follow` feeds the log and then each new event; cancelled, it saves its state, and a new follower resumes after it."""
    checkpoint = tmp_path / "counts.json"

    async def follow_until(ledger: vmledger.Ledger, counts: TypeCounts, count: int) -> None:
        task = asyncio.ensure_future(ledger.follow(counts, types=["DomainDefined", "MemoryChangeRequested"],
                                                   checkpoint=checkpoint))
        try:
            async with asyncio.timeout(20):
                while len(counts.fed) < count:
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def go() -> tuple[list[int], dict, list[int], dict, list[int]]:
        async with _open(url, tmp_path) as ledger:
            first = TypeCounts()
            task = asyncio.ensure_future(follow_until(ledger, first, 2))
            await asyncio.sleep(0.2)
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4)
            await ledger.start("web")
            await ledger.set("web", "memory", 2 * GiB, principal="alice")
            await task
            saved = json.loads(checkpoint.read_text(encoding="utf-8"))
            await ledger.set("web", "memory", 3 * GiB, principal="bob")
            await ledger.define("db", guest_type="hvm", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4)
            second = TypeCounts()
            await follow_until(ledger, second, 2)
            kept = [r.position async for r in ledger.events()
                    if r.type in ("DomainDefined", "MemoryChangeRequested")]
            return ([r.position for r in first.fed], saved, [r.position for r in second.fed],
                    json.loads(checkpoint.read_text(encoding="utf-8")), kept)

    first, saved, second, last, kept = asyncio.run(go())
    assert (first, saved, second, last) == (
        kept[:2], {"position": kept[1], "state": {"DomainDefined": 1, "MemoryChangeRequested": 1}},
        kept[2:], {"position": kept[3], "state": {"DomainDefined": 2, "MemoryChangeRequested": 2}})


def test_a_checkpoint_needs_a_state_and_a_checkpoint_file(url: str, tmp_path: Any) -> None:
    """A projection without `state`, or a file that is no checkpoint, is the caller's error and feeds nothing."""
    class Stateless:
        def apply(self, event: RecordedEvent) -> None:
            raise AssertionError("fed")

    (tmp_path / "bad.json").write_text('{"position": -1, "state": {}}', encoding="utf-8")

    async def go() -> list[str]:
        errors = []
        async with _open(url, tmp_path) as ledger:
            await ledger.import_lines(lambda: LINES)
            for projection, path in ((Stateless(), tmp_path / "new.json"), (TypeCounts(), tmp_path / "bad.json")):
                with pytest.raises(vmledger.InvalidRequestError) as caught:
                    await ledger.replay(projection, checkpoint=path)
                errors.append(str(caught.value).replace(str(tmp_path), "TMP"))
        return errors

    assert asyncio.run(go()) == ["a projection saved in a checkpoint needs a `state` attribute",
                                 "'TMP/bad.json' is not a projection checkpoint (position and state)"]
