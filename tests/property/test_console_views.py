"""The console's two sources agree: what a page shows now equals what it shows as of the head (issue 15).

Now, the pages read the projection tables; as of a position, a model folded
up to it.  Over random stories the two must give the same fleet, domains,
drift, history and timelines at the head of the log.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import vmledger
from vmledger.console import views
from vmledger.eventstore.errors import VmledgerError

MiB, GiB = 2**20, 2**30
NAMES = ("a", "b")
SETS = st.tuples(st.just("set"), st.sampled_from(NAMES), st.sampled_from(["memory", "vcpus", "max_memory", "media:hdc"]),
                 st.integers(1, 6), st.sampled_from(["both", "live", "persistent", "current"]))
#: Sets come three times as often as anything else: the history and the drift are what the pages show.
ACTIONS = st.one_of(
    SETS, SETS, SETS,
    st.tuples(st.just("start"), st.sampled_from(NAMES)),
    st.tuples(st.just("stop"), st.sampled_from(NAMES)),
    st.tuples(st.just("balloon"), st.sampled_from(NAMES), st.integers(5, 15)),
    st.tuples(st.just("host_free"), st.integers(0, 4)),
    st.tuples(st.just("lock"), st.sampled_from(NAMES)),
    st.tuples(st.just("undefine"), st.sampled_from(NAMES)),
)


def _value(prop: str, n: int) -> Any:
    return {"memory": n * 256 * MiB, "max_memory": n * GiB, "vcpus": n, "media:hdc": f"/iso/{n}.iso"}[prop]


async def _act(ledger: Any, action: tuple[Any, ...]) -> None:
    sim, kind, *args = ledger.hypervisor, action[0], *action[1:]
    if kind == "start":
        await ledger.start(args[0], principal="ann")
    elif kind == "stop":
        await ledger.stop(args[0], principal="ann")
    elif kind == "set":
        name, prop, n, scope = args
        await ledger.set(name, prop, _value(prop, n), scope=scope, principal=("ann", "bo")[n % 2])
    elif kind == "balloon":
        await sim.balloon(args[0], args[1] * 100 * MiB)
        await ledger.observe(args[0], principal="watch")
    elif kind == "host_free":
        await sim.set_host_free(args[0] * 100 * MiB)
    elif kind == "lock":
        await sim.lock_tray(args[0], "hdc")
    else:
        await ledger.undefine(args[0], principal="ann")


async def _both(ledger: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return what every page's data is now, and as of the head."""
    head = await ledger.log.head()
    out = []
    for at in (await views.moment(ledger, None), await views.moment(ledger, str(head))):
        pages: dict[str, Any] = {"fleet": await views.fleet(ledger, at), "drift": await views.drift(ledger, at)}
        for row in pages["fleet"]:
            pages[row.domain] = await views.domain(ledger, at, row.domain)
            for prop in ("memory", "vcpus", "media:hdc"):
                pages[f"{row.domain}/{prop}"] = await views.timeline(ledger, at, row.domain, prop)
        pages["history"] = await views.history(ledger, at)
        for outcome in views.OUTCOMES:
            pages[f"history/{outcome}"] = await views.history(ledger, at, outcome=outcome)
        pages["history/bo"] = await views.history(ledger, at, principal="bo", prop="memory")
        # Pages of 3, newest first: now, counted and read by offset; as of the head, cut from the model's list.
        filters = [{}, {"principal": "bo", "prop": "memory"}, *({"outcome": o} for o in views.OUTCOMES),
                   *({"name": row.domain} for row in pages["fleet"])]
        for i, (kept, page) in enumerate(itertools.product(filters, (None, "2", "3", "9"))):
            pages[f"history page {i}"] = await views.history_page(ledger, at, page, 3, **kept)
        # A fleet row alone, as the event stream updates it, is the fleet's.
        pages["fleet rows"] = ([await views.fleet_row(ledger, row.domain) for row in pages["fleet"]]
                               if at.model is None else pages["fleet"])
        out.append(pages)
    return out[0], out[1]


@settings(max_examples=25, deadline=None)
@given(actions=st.lists(ACTIONS, min_size=4, max_size=16))
def test_every_page_shows_the_same_now_and_as_of_the_head(actions: list[tuple[Any, ...]]) -> None:
    """Fleet, domain, drift, history (its pages too) and timeline data read from the tables equal those folded up to the head."""
    async def story() -> tuple[dict[str, Any], dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="vmledger-console-") as tmp:
            async with vmledger.open(os.path.join(tmp, "l.db"), hypervisor_timeout=0.2) as ledger:
                for name, guest in zip(NAMES, ("pv", "hvm")):
                    await ledger.define(name, guest_type=guest, memory=GiB, max_memory=2 * GiB, vcpus=1,
                                        max_vcpus=4, cdroms={"hdc": ""}, principal="ann")
                for action in actions:
                    try:
                        await _act(ledger, action)
                    except VmledgerError:
                        pass  # a start of a running domain, a set of an undefined one: refused, as it should be
                return await _both(ledger)

    now, then = asyncio.run(story())
    assert now == then
