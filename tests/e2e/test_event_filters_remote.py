"""The feed's filters, `replay` and `follow` against a real `vmledger serve`: as in process (issue 17)."""

from __future__ import annotations

import asyncio
from typing import Any

import vmledger
from tests.e2e.served import need_serve, served
from tests.e2e.test_cli_remote import cli  # noqa: F401 - the remote fixture, collected with the test below
from tests.e2e.test_event_filters_cli import test_events_filtered_by_domain_type_and_period  # noqa: F401
from vmledger.eventstore.log import RecordedEvent

GiB = 2**30


class Positions:
    """Keeps the positions and types it is fed, in its state."""

    def __init__(self) -> None:
        self.state: list[list[Any]] = []

    def apply(self, event: RecordedEvent) -> None:
        self.state.append([event.position, event.type])


def test_remote_replay_and_follow_with_filters_match_the_unfiltered_feed(tmp_path: Any) -> None:
    """Over HTTP, `replay` with a type and `follow` of a domain (the event stream filtered) feed what the whole feed says."""
    need_serve()
    db = f"sqlite:///{tmp_path}/ledger.db"
    checkpoint = tmp_path / "follow.json"

    async def go(url: str, token: str) -> tuple[list, list, list, list, list]:
        async with vmledger.connect(url, token=token) as ledger:
            for name in ("web", "db"):
                await ledger.define(name, guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4)
                await ledger.start(name)
            await ledger.set("web", "memory", 2 * GiB)
            before = [[r.position, r.type] async for r in ledger.events()]
            replayed = Positions()
            await ledger.replay(replayed, types=["MemoryChangeRequested", "DomainStarted"])
            followed = Positions()
            task = asyncio.ensure_future(ledger.follow(followed, domain="db", checkpoint=checkpoint))
            try:
                await ledger.set("db", "vcpus", 3)
                await ledger.set("web", "vcpus", 3)
                await ledger.set("db", "memory", 3 * GiB)
                async with asyncio.timeout(30):
                    while not followed.state or followed.state[-1][1] != "MemoryChangeApplied":
                        await asyncio.sleep(0.05)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            whole = [[r.position, r.type, r.stream] async for r in ledger.events()]
            return replayed.state, followed.state, whole, before, [checkpoint.read_text(encoding="utf-8")]

    with served(db, str(tmp_path / "server.log")) as server:
        replayed, followed, whole, before, saved = asyncio.run(go(server.url, server.tokens["alice"]))
    db_stream = next(s for p, t, s in whole if t == "DomainDefined" and p > 2)
    assert (replayed, followed) == (
        [[p, t] for p, t in before if t in ("MemoryChangeRequested", "DomainStarted")],
        [[p, t] for p, t, s in whole if s == db_stream and p <= followed[-1][0]])
    assert saved == [f'{{"position": {followed[-1][0]}, "state": {followed!r}}}\n'.replace("'", '"')]
