"""`vmledger.connect()` answers as `vmledger.open()` does: the same calls on a served ledger and a local one.

Hypothesis draws a sequence of calls on one domain: requests of every
kind, well-formed or not, reads, power changes, `observe`, and the
simulator's perturbations.  Each call is made on a ledger this process
opens and, through `vmledger.connect`, on one that a `vmledger serve`
process holds; the two start alike and get the same calls in the same
order.  Every answer must be the same, and every error the same class of
the ledger's with the same message, but for what each ledger makes for
itself: the times, the hashes that chain them, the domain's uuid and the
ids of the requests a revert makes.  Positions are compared from the
example's first, so that one example's difference does not spill into the
next.

So the server answers bad input in the ledger's words, not its web
framework's (a scope, a value of another type); it takes or refuses what
the simulator takes or refuses in process; and an error keeps its class on
the wire.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import re
from typing import Any, Iterator

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmledger
from vmledger.eventstore import errors
from tests.e2e.served import Served, need_serve, served

MiB, GiB = 2**20, 2**30
PRINCIPAL = "alice"  # the admin token's name (the simulator's endpoints want an admin): the principal recorded
PROPS = ("memory", "vcpus", "max_memory", "max_vcpus", "media:hdc", "media:hdd", "numa_nodes", "bogus")
VALUES = st.one_of(
    st.sampled_from([0, 256 * MiB, 512 * MiB, GiB, 1536 * MiB, 2 * GiB, 4 * GiB, 8 * GiB, 2**62, -GiB]),
    st.integers(-1, 6),
    st.sampled_from(["", "/iso/a.iso", "/iso/b.iso", "2GiB", "é", True, None, 1.5]),
)
SIZES = st.sampled_from([256 * MiB, 768 * MiB, GiB, 3 * GiB])
OPS = st.lists(st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PROPS), VALUES,
              st.sampled_from(["both", "both", "persistent", "live", "current", "bogus"]), st.integers(0, 9),
              st.sampled_from([None, "", "planned upgrade", "ticket #42 é"]), st.sampled_from([None, None, 0, 3, 5])),
    st.tuples(st.just("get"), st.sampled_from(PROPS), st.sampled_from(["current", "persistent", "live", "bogus"])),
    st.tuples(st.sampled_from(["show", "drift", "history", "events", "start", "stop", "observe", "undefine"])),
    st.tuples(st.just("request"), st.integers(0, 9)),
    st.tuples(st.just("diff"), st.integers(0, 8)),
    st.tuples(st.just("revert"), st.integers(0, 8), st.sampled_from(["both", "persistent", "live"]), st.booleans()),
    st.tuples(st.just("balloon"), SIZES),
    st.tuples(st.just("configure"), st.sampled_from(PROPS), VALUES),
    st.tuples(st.sampled_from(["lock_tray", "unlock_tray"]), st.sampled_from(["hdc", "hdd"])),
    st.tuples(st.just("set_capability"), st.sampled_from(["balloon", "memory_hotplug", "vcpu_hotplug", "bogus"]),
              st.booleans()),
    st.tuples(st.just("inject_fault"), st.sampled_from(PROPS), st.just("error")),
), max_size=12)
_names = itertools.count(1)
#: An id a ledger makes for itself (the domain's uuid, a request's id): 32 hexadecimal digits.
_MADE = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, str]]:
    """Return a server on a fresh SQLite ledger, and the path of another fresh one for this process to open."""
    need_serve()
    root = tmp_path_factory.mktemp("equivalence")
    with served(f"sqlite:///{root}/served.db", str(root / "server.log")) as server:
        yield server, str(root / "local.db")


async def _call(ledger: Any, name: str, base: int, op: tuple) -> Any:
    """Make one drawn call on `ledger`, about domain `name`, defined at position `base`."""
    kind, *args = op
    if kind == "set":
        prop, value, scope, n, reason, version = args
        return await ledger.set(name, prop, value, scope=scope, request_id=f"{name}-{n}", principal=PRINCIPAL,
                                reason=reason, expected_version=version)
    if kind == "get":
        return await ledger.get(name, args[0], scope=args[1])
    if kind == "request":
        return await ledger.request(f"{name}-{args[0]}")
    if kind in ("start", "stop", "observe", "undefine"):
        return await getattr(ledger, kind)(name, principal=PRINCIPAL)
    if kind in ("show", "drift", "history"):
        return await getattr(ledger, kind)(name)
    if kind == "events":
        return [e async for e in ledger.events(domain=name, from_position=base - 1)]
    if kind == "diff":
        return await ledger.diff(name, from_position=base + args[0])
    if kind == "revert":
        return await ledger.revert(name, to=base + args[0], scope=args[1], dry_run=args[2], principal=PRINCIPAL)
    return await getattr(ledger.hypervisor, kind)(name, *args)  # the simulator's perturbations


def _plain(value: Any, base: int, uuid: str) -> Any:
    """Return `value` as plain data, the times, hashes and ids each ledger makes replaced, positions from `base`."""
    if attrs.has(type(value)):
        return {type(value).__name__: _plain(attrs.asdict(value, recurse=False), base, uuid)}
    if isinstance(value, dict):
        return {k: ("hash" if k == "hash" else v - base if k.endswith("position") and isinstance(v, int)
                    else _plain(v, base, uuid)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, base, uuid) for v in value]
    if isinstance(value, dt.datetime):
        return "time"
    if isinstance(value, str) and _MADE.fullmatch(value):
        return "uuid" if value == uuid else "made id"  # a request id a revert made, say
    return value


def _error(e: Exception) -> tuple[str, str, str]:
    """Return an error as compared: the ledger's class it is (or derives from), and its message.

    A compare-and-set refused over HTTP is a 412 in HTTP's words (`If-Match`),
    a `ConcurrencyError` all the same: of its message, the conflict is compared.
    """
    cls = next(c for c in type(e).__mro__ if c.__module__ in (errors.__name__, "builtins"))
    text = _MADE.sub("id", str(e))
    if isinstance(e, errors.ConcurrencyError):
        text = text.rpartition("(last: ")[2].rstrip(")")
    return "raised", cls.__name__, text


async def _answers(ledger: Any, name: str, guest_type: str, running: bool, ops: list[tuple]) -> list[Any]:
    """Define `name` on `ledger`, make the calls, and return every answer or error as plain data."""
    view = await ledger.define(name, guest_type=guest_type, memory=GiB, max_memory=4 * GiB, vcpus=1, max_vcpus=4,
                               cdroms={"hdc": ""}, principal=PRINCIPAL)
    base, uuid = view.position, view.uuid
    if running:
        await ledger.start(name, principal=PRINCIPAL)
    got = []
    for op in [*ops, ("show",), ("history",), ("drift",), ("events",)]:
        try:
            answer = await _call(ledger, name, base, op)
        except Exception as e:  # noqa: BLE001 - the error is the answer compared
            answer = _error(e)
        got.append((op, _plain(answer, base, uuid)))
    # Gone once compared, so that the domains of earlier examples do not use up the simulated host's memory.
    for end in (ledger.stop, ledger.undefine):
        try:
            await end(name, principal=PRINCIPAL)
        except vmledger.VmledgerError:
            pass  # stopped already
    return got


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(guest_type=st.sampled_from(["pv", "hvm"]), running=st.booleans(), ops=OPS)
def test_a_served_ledger_answers_every_call_as_a_local_one(ledgers: tuple[Served, str], guest_type: str,
                                                           running: bool, ops: list[tuple]) -> None:
    """The same calls on a local ledger and through `vmledger.connect`: the same answers, the same errors."""
    server, path = ledgers
    name = f"vm{next(_names)}"

    async def both() -> tuple[list[Any], list[Any]]:
        async with vmledger.open(path, hypervisor_timeout=0.5) as local, \
                vmledger.connect(server.url, token=server.tokens[PRINCIPAL]) as remote:
            return (await _answers(local, name, guest_type, running, ops),
                    await _answers(remote, name, guest_type, running, ops))

    here, there = asyncio.run(both())
    assert there == here
