"""The calls two ledgers get alike, and their answers as compared, for the tests that set two side by side.

`OPS` draws a sequence of calls on one domain: requests of every kind,
well-formed or not, the definition of another domain, well-formed or not,
reads (history and drift as of a position, an audit too), power changes,
reverts, `observe`, and the simulator's perturbations.  `answers` defines
the domain on a ledger, makes the calls, and returns every answer or error
as plain data, without what each ledger makes for itself: the times, the
hashes that chain them and the durations between them, the uuids and the
ids of the requests a revert makes; positions count from the domain's
definition, so that one example's difference does not spill into the next.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from typing import Any

import attrs
from hypothesis import strategies as st

import vmledger
from vmledger.eventstore import errors

__all__ = ["OPS", "PRINCIPAL", "answers", "new_name"]

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
    st.tuples(st.just("drift_as_of"), st.integers(-1, 12)),
    st.tuples(st.just("history_of"), st.sampled_from(PROPS), st.sampled_from([None, PRINCIPAL, "nobody"]),
              st.sampled_from([None, 0, 1, 2, 1001]), st.integers(0, 3)),
    st.tuples(st.just("audit"), st.booleans()),
    st.tuples(st.just("define"), st.sampled_from(["", "-b", "-b", " b", "-" + "b" * 64, "-é"]),
              st.sampled_from(["pv", "hvm", "kvm", "", None, 1]), VALUES, VALUES, VALUES, VALUES,
              st.sampled_from([1, 0, 2, True, "1"]),
              st.sampled_from([{}, {"hdc": ""}, {"hdc": "/iso/a.iso"}, {"": ""}, {"hdc": 1}, [], "hdc"])),
    st.tuples(st.just("revert"), st.integers(0, 8), st.sampled_from(["both", "persistent", "live"]), st.booleans()),
    st.tuples(st.just("balloon"), SIZES),
    st.tuples(st.just("configure"), st.sampled_from(PROPS), VALUES),
    st.tuples(st.sampled_from(["lock_tray", "unlock_tray"]), st.sampled_from(["hdc", "hdd"])),
    st.tuples(st.just("set_capability"), st.sampled_from(["balloon", "memory_hotplug", "vcpu_hotplug", "bogus"]),
              st.booleans()),
    st.tuples(st.just("inject_fault"), st.sampled_from(PROPS), st.just("error")),
), max_size=12)
_names = itertools.count(1)
#: What each ledger makes of its own times: a hash chaining them, seconds between them.
_MEASURED = ("hash", "seconds", "duration")
#: An id a ledger makes for itself (the domain's uuid, a request's id): 32 hexadecimal digits.
_MADE = re.compile(r"[0-9a-f]{32}")


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
    if kind == "drift_as_of":
        return await ledger.drift(name, as_of=base + args[0])
    if kind == "history_of":
        prop, principal, limit, offset = args
        return await ledger.history(name, prop, principal=principal, limit=limit, offset=offset)
    if kind == "audit":
        return await ledger.audit(domain=name if args[0] else None, principal=PRINCIPAL)
    if kind == "define":  # another domain, its name this one's with a suffix, well-formed or not
        suffix, guest_type, memory, max_memory, vcpus, max_vcpus, numa_nodes, cdroms = args
        return await ledger.define(name + suffix, guest_type=guest_type, memory=memory, max_memory=max_memory,
                                   vcpus=vcpus, max_vcpus=max_vcpus, numa_nodes=numa_nodes, cdroms=cdroms,
                                   principal=PRINCIPAL)
    if kind == "diff":
        return await ledger.diff(name, from_position=base + args[0])
    if kind == "revert":
        return await ledger.revert(name, to=base + args[0], scope=args[1], dry_run=args[2], principal=PRINCIPAL)
    return await getattr(ledger.hypervisor, kind)(name, *args)  # the simulator's perturbations


def _plain(value: Any, base: int, uuid: str) -> Any:
    """Return `value` as plain data, the times and ids each ledger makes replaced, positions from `base`."""
    if attrs.has(type(value)):
        return {type(value).__name__: _plain(attrs.asdict(value, recurse=False), base, uuid)}
    if isinstance(value, dict):
        return {k: (k if k in _MEASURED else v - base if k.endswith("position") and isinstance(v, int)
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


async def answers(ledger: Any, name: str, guest_type: str, running: bool, ops: list[tuple]) -> list[Any]:
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




def new_name() -> str:
    """Return a domain name no earlier example used."""
    return f"vm{next(_names)}"
