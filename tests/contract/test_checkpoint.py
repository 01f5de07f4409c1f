"""Checkpoints make repeated verification cheap and catch what a plain verify cannot: a cut or rewritten log."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import Any

import attrs
import pytest

import vmledger
from vmledger.eventstore.errors import ChainBrokenError, InvalidRequestError
from vmledger.eventstore.log import GENESIS_HASH
from vmledger.projections.store import RULES
from tests.contract.test_store import HASH, Row, Store, _relinked

GiB = 2**30


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Store:
    """Return the store of a fresh database on the backend under test (the simulator's state in tmp_path)."""
    monkeypatch.chdir(tmp_path)  # on PostgreSQL the simulator keeps its state in the current directory
    if request.param == "postgres":
        return Store("postgres", request.getfixturevalue("pg_database"))
    return Store("sqlite", str(tmp_path))


def _url(store: Store) -> str:
    return store.where if store.backend == "postgres" else f"sqlite:///{store.where}/store.db"


def _execute(store: Store, sql: str) -> None:
    """Run one statement straight through the driver, behind the ledger's back."""
    if store.backend == "sqlite":
        with contextlib.closing(sqlite3.connect(f"{store.where}/store.db")) as conn, conn:
            conn.execute(sql)
    else:
        async def run() -> None:
            import asyncpg

            conn = await asyncpg.connect(store.where)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()
        asyncio.run(run())


async def _story(url: str) -> vmledger.Checkpoint:
    """Define and start two domains, set memory on one; return a checkpoint taken in full."""
    async with vmledger.open(url) as ledger:
        for name in ("web", "db"):
            await ledger.define(name, guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=1, max_vcpus=4)
            await ledger.start(name)
        await ledger.set("web", "memory", 2 * GiB, request_id="r1")
        return await ledger.checkpoint()


async def _more(url: str) -> None:
    async with vmledger.open(url) as ledger:
        await ledger.set("web", "vcpus", 2, request_id="r2")


async def _checkpoint(url: str, since: vmledger.Checkpoint | None) -> vmledger.Checkpoint:
    async with vmledger.open(url) as ledger:
        return await ledger.checkpoint(since)


async def _verify(url: str) -> int:
    async with vmledger.open(url) as ledger:
        return await ledger.verify()


async def _rebuild(url: str) -> None:
    async with vmledger.open(url) as ledger:
        await ledger.rebuild()


def _damage(url: str, since: vmledger.Checkpoint) -> str:
    """Return what a verify since `since` says of the ledger."""
    with pytest.raises(ChainBrokenError) as caught:
        asyncio.run(_checkpoint(url, since))
    return str(caught.value)


def test_a_checkpoint_since_the_last_equals_one_taken_in_full(where: Store) -> None:
    """Verifying since a checkpoint gives the checkpoint a full verify gives, at the same head."""
    url = _url(where)
    first = asyncio.run(_story(url))
    asyncio.run(_more(url))
    since = asyncio.run(_checkpoint(url, first))
    full = asyncio.run(_checkpoint(url, None))
    assert (since.position, since == full) == (first.position + 3, True)  # requested, persistent and live outcomes


def test_a_checkpoint_with_nothing_new_checks_out(where: Store) -> None:
    """A checkpoint verified again with no new events gives itself back."""
    url = _url(where)
    first = asyncio.run(_story(url))
    assert asyncio.run(_checkpoint(url, first)) == first


def test_a_cut_tail_passes_verify_but_not_the_checkpoint(where: Store) -> None:
    """Cutting the last events (and rebuilding the projections) is invisible to verify, caught by the checkpoint."""
    url = _url(where)
    first = asyncio.run(_story(url))
    where.rewrite(lambda rows: rows[:-2])
    asyncio.run(_rebuild(url))
    head = asyncio.run(_verify(url))
    assert (head, _damage(url, first)) == (first.position - 2, (
        f"ledger damaged at position {first.position - 1}: the log ends at position {first.position - 2}, "
        f"before the checkpoint's position {first.position}: events were removed"))


def test_a_log_rewritten_with_fresh_links_passes_verify_but_not_the_checkpoint(where: Store) -> None:
    """Rewriting an early event and recomputing every later link is caught at the checkpoint's position."""
    url = _url(where)
    first = asyncio.run(_story(url))

    def forge(rows: list[Row]) -> list[Row]:
        rows[0][6] = '{"correlation_id":null,"principal":"mallory","request_id":null}'
        prev, forged = GENESIS_HASH, []
        for row in rows:
            forged.append(_relinked(prev, row))
            prev = forged[-1][HASH]
        return forged

    where.rewrite(forge)
    asyncio.run(_rebuild(url))
    head = asyncio.run(_verify(url))
    assert (head, _damage(url, first)) == (first.position, (
        f"ledger damaged at position {first.position}: the event differs from the checkpoint's: "
        "the log was rewritten"))


def test_a_checkpoint_of_other_fold_rules_is_verified_in_full_past_its_hash(where: Store) -> None:
    """Digests an older version's rules made (a row those rules kept, a rule since changed) would differ from today's rows with no event to explain it: past the checkpoint's hash, such a checkpoint is verified in full, while the same digests under today's rules are damage."""
    url = _url(where)
    first = asyncio.run(_story(url))
    asyncio.run(_more(url))
    other = {uuid: "0" * 64 for uuid in first.domains}
    older = attrs.evolve(first, domains=other, rules=None)
    rewritten = attrs.evolve(older, hash="0" * 64)
    assert (asyncio.run(_checkpoint(url, older)), _damage(url, attrs.evolve(first, domains=other)),
            _damage(url, rewritten)) == (
        asyncio.run(_checkpoint(url, None)),
        f"ledger damaged at position {first.position}: projection rows of domain db changed since the "
        "checkpoint, with no event of its own",
        f"ledger damaged at position {first.position}: the event differs from the checkpoint's: "
        "the log was rewritten")
    assert (first.rules, asyncio.run(_checkpoint(url, older)).rules) == (RULES, RULES)


def test_an_edited_projection_of_a_domain_without_new_events_is_caught(where: Store) -> None:
    """A projection row edited where no event followed the checkpoint differs from the checkpoint's digest."""
    url = _url(where)
    first = asyncio.run(_story(url))
    asyncio.run(_more(url))  # touches web only
    _execute(where, "UPDATE persistent SET value = '3' WHERE property = 'vcpus' AND domain IN "
                    "(SELECT uuid FROM domains WHERE name = 'db')")
    assert _damage(url, first) == (
        f"ledger damaged at position {first.position}: projection rows of domain db changed since the "
        "checkpoint, with no event of its own")


def test_an_edited_projection_of_a_domain_with_new_events_is_refolded_and_caught(where: Store) -> None:
    """A projection row edited in a domain with events after the checkpoint differs from its refold."""
    url = _url(where)
    first = asyncio.run(_story(url))
    asyncio.run(_more(url))
    _execute(where, "UPDATE persistent SET value = '3' WHERE property = 'vcpus' AND domain IN "
                    "(SELECT uuid FROM domains WHERE name = 'web')")
    assert _damage(url, first).endswith("projection persistent disagrees with the log at row "
                                        f"({asyncio.run(_uuid(url, 'web'))!r}, 'vcpus')")


async def _uuid(url: str, name: str) -> str:
    async with vmledger.open(url) as ledger:
        return (await ledger.show(name))["uuid"]


def test_an_edited_event_after_the_checkpoint_is_caught_at_its_position(where: Store) -> None:
    """The chain is recomputed from the checkpoint on: an edit past it is named at its position."""
    url = _url(where)
    first = asyncio.run(_story(url))
    asyncio.run(_more(url))

    def edit(rows: list[Row]) -> list[Row]:
        rows[first.position][6] = '{"correlation_id":null,"principal":"mallory","request_id":null}'
        return rows

    where.rewrite(edit)
    assert _damage(url, first) == (
        f"ledger damaged at position {first.position + 1}: hash does not match the stored event")


@pytest.mark.parametrize("start", [-1, "1", True, 2**63, 1.0])
def test_verify_refuses_a_malformed_start(tmp_path: Any, start: Any) -> None:
    """A start that is no whole number from 0 to 2**63 - 1 is an invalid request."""
    async def go() -> None:
        async with vmledger.open(f"sqlite:///{tmp_path}/l.db") as ledger:
            await ledger.verify(from_position=start)

    with pytest.raises(InvalidRequestError):
        asyncio.run(go())


def test_verify_refuses_a_start_past_the_head(where: Store) -> None:
    """Starting past the head is bad input, not damage."""
    url = _url(where)
    first = asyncio.run(_story(url))

    async def go() -> None:
        async with vmledger.open(url) as ledger:
            await ledger.verify(from_position=first.position + 1)

    with pytest.raises(InvalidRequestError) as caught:
        asyncio.run(go())
    assert str(caught.value) == f"position {first.position + 1} is past the head of the log ({first.position})"
