"""A Hypothesis state machine driving a real Ledger on a real SQLite file and the simulated hypervisor.

Rules define, start, stop and undefine domains, set properties (in and out of
range, well-formed or not, in every scope), observe, rebuild, and perturb the
simulator behind the ledger's back (balloon, persistent config, host pool,
trays, capabilities, injected faults).  After every step the invariants of STYLE.md hold: the chain
verifies and the projections equal a rebuild, positions have no gaps, drift is
exactly live != persistent, no request is left in flight, and drift as of the
head equals drift now.  At the end, drift as of every earlier head equals the
drift recorded then, and the reference drift rule's (tests/drift_reference.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from typing import Any, Awaitable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import vmledger
from vmledger.eventstore.catalogue import Capability, GuestType
from tests.drift_reference import reference_drift
from tests.strategies import GiB, MiB, SCOPES, SETTABLE, malformed_value, well_formed_value

NAMES = ("web", "db")
FAULT_PROPS = ("memory", "vcpus", "media:hdc")
#: At most this many injected timeouts per run: each costs the ledger's 0.2 s timeout.
MAX_TIMEOUTS = 1
NoError = type(None)
GUEST_TYPES = st.sampled_from([g.value for g in GuestType])
MEMORY = st.sampled_from((512 * MiB, 1 * GiB, 2 * GiB, 4 * GiB))
MAX_MEMORY = st.sampled_from((1 * GiB, 2 * GiB, 4 * GiB, 8 * GiB))


@st.composite
def set_arguments(draw: Any) -> tuple[str, Any, str, bool]:
    """Return `(property, value, scope, malformed)` for one `set` call."""
    prop = draw(st.sampled_from(SETTABLE))
    malformed = draw(st.sampled_from((False, False, False, False, True)))
    if not malformed:
        curated = draw(st.sampled_from((True, True, True, False)))
        return prop, draw(well_formed_value(prop, curated=curated)), draw(st.sampled_from(SCOPES)), False
    if draw(st.booleans()):
        return prop, draw(well_formed_value(prop)), draw(st.sampled_from(("", "sideways", "LIVE"))), True
    return prop, draw(malformed_value(prop)), draw(st.sampled_from(SCOPES)), True


def _scopes(scope: str, running: bool) -> list[str]:
    """Return the scopes a request concerns, sorted: what its history outcomes must name."""
    return {
        "live": ["live"],
        "persistent": ["persistent"],
        "both": ["live", "persistent"] if running else ["persistent"],
        "current": ["live"] if running else ["persistent"],
    }.get(scope, [])


async def _all(events: Any) -> list[Any]:
    return [rec async for rec in events]


class LedgerMachine(RuleBasedStateMachine):
    """Drive one ledger through random requests, lifecycle changes, observations and faults."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="vmledger-machine-")
        self.loop = asyncio.new_event_loop()
        self.opened = vmledger.open(os.path.join(self.tmp, "l.db"), hypervisor_timeout=0.2)
        self.ledger = self.loop.run_until_complete(self.opened.__aenter__())
        self.sim = self.ledger.hypervisor
        #: name -> running, as the rules expect the ledger to have it.
        self.domains: dict[str, bool] = {}
        #: (head, drift()) after every step, for the as-of check at the end.
        self.points: list[tuple[int, list[dict[str, Any]]]] = []
        #: name -> what the simulator changed behind the ledger's back since it last looked
        #: ("live", "trays", "capabilities", "persistent"); an observe brings them all back in line,
        #: a start or stop all but "persistent".
        self.unseen: dict[str, set[str]] = {}
        #: (name, property, value, scope, request id) of every recorded set.
        self.requests: list[tuple[str, str, Any, str, str]] = []
        self.timeouts = 0
        #: The checkpoint of the last rebuild rule, verified since by the next one.
        self.checkpoint: vmledger.Checkpoint | None = None

    def run(self, aw: Awaitable[Any]) -> Any:
        """Run one coroutine on the machine's own loop."""
        return self.loop.run_until_complete(aw)

    def head(self) -> int:
        """Return the log head."""
        return self.run(self.ledger.log.head())

    def attempt(self, aw: Awaitable[Any]) -> tuple[type, int, Any]:
        """Run `aw`; return the documented caller error's type (or NoneType), how far the head moved, the result."""
        before = self.head()
        error: BaseException | None = None
        result = None
        try:
            result = self.run(aw)
        except (vmledger.InvalidRequestError, vmledger.HypervisorError) as e:
            error = e
        return type(error), self.head() - before, result

    def teardown(self) -> None:
        """Check as-of drift against what each step saw, then close everything the machine opened."""
        try:
            as_of = [(p, self.run(self.ledger.drift(as_of=p))) for p, _ in self.points]
            events = self.run(_all(self.ledger.events()))
        finally:
            self.run(self.opened.__aexit__(None, None, None))
            self.run(self.loop.shutdown_asyncgens())
            self.run(self.loop.shutdown_default_executor())
            self.loop.close()
            shutil.rmtree(self.tmp)
        # The drift rule of issue 13, written plainly, agrees at every point.
        assert (as_of, as_of) == (self.points, [(p, reference_drift(events[:p])) for p, _ in self.points])

    # Lifecycle.

    def _running(self) -> list[str]:
        return sorted(n for n, up in self.domains.items() if up)

    def _stopped(self) -> list[str]:
        return sorted(n for n, up in self.domains.items() if not up)

    def _define(self, name: str, guest_type: str, memory: int, max_memory: int, vcpus: int, max_vcpus: int) -> None:
        bad = name in self.domains or memory > max_memory or vcpus > max_vcpus
        expected = vmledger.InvalidRequestError if bad else NoError
        outcome = self.attempt(self.ledger.define(
            name, guest_type=guest_type, memory=memory, max_memory=max_memory,
            vcpus=vcpus, max_vcpus=max_vcpus, cdroms={"hdc": "/iso/a.iso"},
        ))
        assert outcome[:2] == (expected, 0 if bad else 1)
        if not bad:
            self.domains[name] = False

    @initialize(guest_type=GUEST_TYPES, memory=st.sampled_from((512 * MiB, 1 * GiB)),
                max_memory=st.sampled_from((4 * GiB, 8 * GiB)), start=st.sampled_from((True, True, True, False)),
                pool=st.sampled_from((2 * GiB, 3 * GiB, 64 * GiB)))
    def first_domain(self, guest_type: str, memory: int, max_memory: int, start: bool, pool: int) -> None:
        """Begin with a host pool (small ones make partial balloons likely) and `web` defined, mostly running."""
        assert self.attempt(self.sim.set_host_free(pool)) == (NoError, 0, None)
        self._define(NAMES[0], guest_type, memory, max_memory, 1, 2)
        if start:
            self.start(NAMES[0])

    @rule(name=st.sampled_from(NAMES), guest_type=GUEST_TYPES, memory=MEMORY, max_memory=MAX_MEMORY,
          vcpus=st.integers(1, 4), max_vcpus=st.integers(1, 4))
    def define(self, name: str, guest_type: str, memory: int, max_memory: int, vcpus: int, max_vcpus: int) -> None:
        """Define a domain with one CD-ROM; a taken name or broken bounds is a caller error that writes nothing."""
        self._define(name, guest_type, memory, max_memory, vcpus, max_vcpus)

    @precondition(lambda self: self._stopped())
    @rule(data=st.data())
    def start_domain(self, data: st.DataObject) -> None:
        """Start a stopped domain; too big for the host pool is a HypervisorError that writes nothing."""
        self.start(data.draw(st.sampled_from(self._stopped()), label="name"))

    def start(self, name: str) -> None:
        memory = dict(self.run(self.sim.observe(name)).persistent)["memory"]  # what the simulator boots with
        expected = vmledger.HypervisorError if memory > self.run(self.sim.host_free()) else NoError
        error, moved, _ = self.attempt(self.ledger.start(name))
        assert (error, moved > 0, moved == 0) == (expected, expected is NoError, expected is not NoError)
        self.domains[name] = error is NoError
        self._lifecycle_seen(name)

    def _lifecycle_seen(self, name: str) -> None:
        """Forget what a start or stop brought back in line: all but an unseen config change."""
        self.unseen[name] = self.unseen.get(name, set()) & {"persistent"}

    @precondition(lambda self: self._running())
    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        """Stop a running domain: one `DomainStopped`."""
        name = data.draw(st.sampled_from(self._running()), label="name")
        assert self.attempt(self.ledger.stop(name))[:2] == (NoError, 1)
        self.domains[name] = False
        self._lifecycle_seen(name)

    @precondition(lambda self: self._stopped())
    @rule(data=st.data())
    def undefine(self, data: st.DataObject) -> None:
        """Undefine a stopped domain: one `DomainUndefined`."""
        name = data.draw(st.sampled_from(self._stopped()), label="name")
        assert self.attempt(self.ledger.undefine(name)) == (NoError, 1, None)
        del self.domains[name]
        self.unseen.pop(name, None)

    @rule(data=st.data())
    def try_wrong_lifecycle(self, data: st.DataObject) -> None:
        """Starting a running or unknown domain, stopping a stopped one, or undefining a running one writes nothing."""
        wrong = [("start", n) for n in NAMES if self.domains.get(n, True)]
        wrong += [("stop", n) for n in NAMES if not self.domains.get(n, False)]
        wrong += [("undefine", n) for n in NAMES if self.domains.get(n, True)]
        action, name = data.draw(st.sampled_from(wrong), label="misuse")
        expected = vmledger.InvalidRequestError if name in self.domains else vmledger.UnknownDomainError
        assert self.attempt(getattr(self.ledger, action)(name)) == (expected, 0, None)

    # Requests.

    def _set(self, name: str, args: tuple[str, Any, str, bool]) -> None:
        prop, value, scope, malformed = args
        expected = (vmledger.InvalidRequestError if malformed
                    else vmledger.UnknownDomainError if name not in self.domains else NoError)
        scopes = _scopes(scope, self.domains.get(name, False))
        live = dict(self.run(self.sim.observe(name)).live) if name in self.domains else {}  # before the request
        head = self.head()
        error, moved, record = self.attempt(self.ledger.set(name, prop, value, scope=scope))
        # A live outcome that finds the domain holding a value the log lacked (a balloon behind its back)
        # records it first, as an observation of the value the domain had; it is no step of the request.
        made = self.run(_all(self.ledger.events(from_position=head)))
        observed = [(r.event.property, r.event.value) for r in made if r.type == "LiveValueObserved"]
        assert observed in ([], [(prop, live.get(prop))])
        # So does a tray lock the live outcome of a media change shows: met (refused) or gone (applied).
        trays = [(r.type, r.event.device) for r in made if r.type in ("MediaTrayLocked", "MediaTrayUnlocked")]
        if trays:
            locked = record is not None and record["outcomes"]["live"]["reason"] == "tray_locked"
            device = prop.split(":", 1)[1]
            assert trays == [("MediaTrayLocked" if locked else "MediaTrayUnlocked", device)]
            assert locked == (device in self.run(self.sim.observe(name)).locked_trays)
        moved -= len(observed) + len(trays)
        got = (error, moved, sorted(record["outcomes"]) if record else None,
               [s for s, o in sorted(record["outcomes"].items()) if o["status"] == "in_flight"] if record else None,
               record == self.run(self.ledger.request(record["request_id"])) if record else None)
        ok = expected is NoError
        assert got == (expected, 1 + len(scopes) if ok else 0, scopes if ok else None, [] if ok else None,
                       True if ok else None)
        if record:
            self.requests.append((name, prop, value, scope, record["request_id"]))

    @rule(name=st.sampled_from((*NAMES, "nosuch")), args=set_arguments())
    def set(self, name: str, args: tuple[str, Any, str, bool]) -> None:
        """Set a property of any domain; malformed or unknown-domain requests write nothing, others record every scope."""
        self._set(name, args)

    @precondition(lambda self: self._running())
    @rule(data=st.data(), args=set_arguments())
    def set_running(self, data: st.DataObject, args: tuple[str, Any, str, bool]) -> None:
        """Set a property of a running domain, where the hypervisor answers for the live scope."""
        self._set(data.draw(st.sampled_from(self._running()), label="name"), args)

    @precondition(lambda self: self._running())
    @rule(data=st.data(), prop=st.sampled_from(FAULT_PROPS), scope=st.sampled_from(("live", "both", "current")),
          kind=st.sampled_from(("error", "error", "timeout")))
    def set_under_fault(self, data: st.DataObject, prop: str, scope: str, kind: str) -> None:
        """Inject a fault, then set the property of a running domain: every scope is recorded, none left in flight."""
        name = data.draw(st.sampled_from(self._running()), label="name")
        # Keep timeouts rare: each one costs the ledger's whole timeout.
        fault = "timeout" if kind == "timeout" and self.timeouts < MAX_TIMEOUTS else "error"
        self.timeouts += fault == "timeout"
        assert self.attempt(self.sim.inject_fault(name, prop, fault)) == (NoError, 0, None)
        self._set(name, (prop, data.draw(well_formed_value(prop, curated=True), label="value"), scope, False))

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def repeat_request(self, data: st.DataObject) -> None:
        """A recorded request id repeated returns its record, reused for another scope is an error; neither writes."""
        name, prop, value, scope, request_id = data.draw(st.sampled_from(self.requests), label="request")
        again = self.attempt(self.ledger.set(name, prop, value, scope=scope, request_id=request_id))
        other = data.draw(st.sampled_from([s for s in SCOPES if s != scope]), label="other scope")
        reused = self.attempt(self.ledger.set(name, prop, value, scope=other, request_id=request_id))
        assert (again, reused) == (
            (NoError, 0, self.run(self.ledger.request(request_id))), (vmledger.RequestIdReusedError, 0, None))

    # Observation and maintenance.

    @rule(name=st.sampled_from((None, *NAMES)))
    def observe(self, name: str | None) -> None:
        """Observing brings the ledger in line with the simulator, and observing again records nothing."""
        expected = vmledger.UnknownDomainError if name is not None and name not in self.domains else NoError
        error, _, _ = self.attempt(self.ledger.observe(name))
        again = self.attempt(self.ledger.observe(name))
        watched = sorted(self.domains) if name is None else [n for n in (name,) if n in self.domains]
        for seen in watched:
            self.unseen.pop(seen, None)
        assert (error, again[:2], self._ledger_views(watched)) == (
            expected, (expected, 0), self._sim_views(watched))

    @rule(data=st.data())
    def rebuild(self, data: st.DataObject) -> None:
        """Rebuilding writes nothing; verifying from any position, or since the last checkpoint, checks out."""
        head = self.head()
        start = data.draw(st.integers(0, head), label="verify from")
        since = self.run(self.ledger.checkpoint(self.checkpoint))
        self.checkpoint = self.run(self.ledger.checkpoint())
        assert (self.attempt(self.ledger.rebuild()), self.run(self.ledger.verify(from_position=start)), since) == (
            (NoError, 0, head), head, self.checkpoint)

    # Perturbations behind the ledger's back.

    @precondition(lambda self: self._running())
    @rule(data=st.data(), size=st.sampled_from((0, 512 * MiB, 1 * GiB, 3 * GiB, 8 * GiB, 16 * GiB)))
    def balloon(self, data: st.DataObject, size: int) -> None:
        """Balloon a running domain out of band; the simulator refuses an impossible size; the log never moves."""
        name = data.draw(st.sampled_from(self._running()), label="name")
        live = dict(self.run(self.sim.observe(name)).live)
        free = self.run(self.sim.host_free())
        fits = 0 < size <= live["max_memory"] and size - live["memory"] <= free
        expected = NoError if fits else vmledger.HypervisorError
        assert self.attempt(self.sim.balloon(name, size)) == (expected, 0, None)
        self.unseen.setdefault(name, set()).update({"live"} if fits else set())

    @precondition(lambda self: self.domains)
    @rule(data=st.data(), prop=st.sampled_from(("memory", "max_memory", "vcpus", "max_vcpus", "media:hdc")))
    def configure(self, data: st.DataObject, prop: str) -> None:
        """Change a domain's persistent config out of band; the simulator refuses a value out of bounds; the log never moves."""
        name = data.draw(st.sampled_from(sorted(self.domains)), label="name")
        value = data.draw(well_formed_value(prop, curated=True), label="value")
        config = dict(self.run(self.sim.observe(name)).persistent)
        upper, lower = {"memory": ("max_memory", None), "max_memory": (None, "memory"),
                        "vcpus": ("max_vcpus", None), "max_vcpus": (None, "vcpus")}.get(prop, (None, None))
        fits = prop.startswith("media:") or (
            value >= 1 and (upper is None or value <= config[upper]) and (lower is None or value >= config[lower]))
        assert self.attempt(self.sim.configure(name, prop, value)) == (
            NoError if fits else vmledger.HypervisorRefusedError, 0, None)
        self.unseen.setdefault(name, set()).update({"persistent"} if fits else set())

    @precondition(lambda self: self.domains)
    @rule(data=st.data(), kind=st.sampled_from(("host_free", "host_free", "tray", "tray", "capability", "error", "timeout")))
    def perturb(self, data: st.DataObject, kind: str) -> None:
        """Resize the host pool, lock or unlock a tray, flip a capability or inject a fault; the log never moves."""
        name = data.draw(st.sampled_from(sorted(self.domains)), label="name")
        running = self.domains[name]
        if kind == "host_free":
            change = self.sim.set_host_free(data.draw(st.sampled_from((0, 512 * MiB, 2 * GiB, 64 * GiB)), label="size"))
        elif kind == "tray":
            locked = data.draw(st.booleans(), label="locked")
            change = (self.sim.lock_tray if locked else self.sim.unlock_tray)(name, "hdc")
            self.unseen.setdefault(name, set()).update({"trays"} if running else set())
        elif kind == "capability":
            cap = data.draw(st.sampled_from([c.value for c in Capability]), label="capability")
            change = self.sim.set_capability(name, cap, data.draw(st.booleans(), label="on"))
            self.unseen.setdefault(name, set()).update({"capabilities"} if running else set())
        else:
            # Keep timeouts rare: each one costs the ledger's whole timeout.
            fault = "timeout" if kind == "timeout" and self.timeouts < MAX_TIMEOUTS else "error"
            self.timeouts += fault == "timeout"
            change = self.sim.inject_fault(name, data.draw(st.sampled_from(FAULT_PROPS), label="property"), fault)
        expected = vmledger.HypervisorError if kind == "tray" and not running else NoError
        assert self.attempt(change) == (expected, 0, None)

    # Invariants.

    @invariant()
    def ledger_is_consistent(self) -> None:
        """The chain verifies, positions are 1..head, drift is live != persistent, nothing is in flight, and the ledger agrees with the simulator on all it has seen."""
        head = self.head()
        verified = self.run(self.ledger.verify())
        positions = self.run(self._positions())
        views = {d["domain"]: d for d in self.run(self.ledger.domains())}
        drift_now = self.run(self.ledger.drift())
        drift = {n: self._drift_of(n) for n in views}
        expected_drift = {
            n: [(p["property"], p["persistent"], p["live"], p["drift"]) for p in v["properties"]
                if v["power_state"] == "running" and p["live"] != p["persistent"]]
            for n, v in views.items()
        }
        in_flight = [
            (r["request_id"], scope) for r in self.run(self.ledger.history())
            for scope, o in r["outcomes"].items() if o["status"] == "in_flight"
        ]
        names = sorted(self.domains)
        # What the simulator changed behind the ledger's back is expected to be unknown to it.
        known = {n: {k: v for k, v in view.items() if k not in self.unseen.get(n, ())}
                 for n, view in self._sim_views(names).items()}
        ledger_known = {n: {k: v for k, v in view.items() if k not in self.unseen.get(n, ())}
                        for n, view in self._ledger_views(names).items()}
        assert (verified, positions, {n: v["power_state"] == "running" for n, v in views.items()},
                drift, in_flight, self.run(self.ledger.drift(as_of=head)), ledger_known) == (
            head, list(range(1, head + 1)), self.domains, expected_drift, [], drift_now, known)
        self.points.append((head, drift_now))

    # Helpers.

    async def _positions(self) -> list[int]:
        return [rec.position async for rec in self.ledger.events()]

    def _drift_of(self, name: str) -> list[tuple[str, Any, Any, str]]:
        rows = self.run(self.ledger.drift(name))
        return [(r["property"], r["persistent"], r["live"], r["cause"]) for r in rows]

    def _persistent(self, name: str) -> dict[str, Any]:
        view = self.run(self.ledger.show(name))
        return {p["property"]: p["persistent"] for p in view["properties"]}

    def _ledger_views(self, names: list[str]) -> dict[str, Any]:
        """Return what the ledger says of each domain: running, live values, capabilities, trays, persistent config."""
        out = {}
        for name in names:
            view = self.run(self.ledger.show(name))
            running = view["power_state"] == "running"
            live = {p["property"]: p["live"] for p in view["properties"] if p["live"] is not None}
            out[name] = {"running": running, "live": live, "trays": view["locked_trays"],
                         "capabilities": view["capabilities"] if running else None,
                         "persistent": {p["property"]: p["persistent"] for p in view["properties"]
                                        if p["persistent"] is not None}}
        return out

    def _sim_views(self, names: list[str]) -> dict[str, Any]:
        """Return the same as `_ledger_views`, as the simulator reports it."""
        out = {}
        for name in names:
            seen = self.run(self.sim.observe(name))
            caps = dict(sorted(seen.capabilities)) if seen.running else None
            out[name] = {"running": seen.running, "live": dict(seen.live), "trays": sorted(seen.locked_trays),
                         "capabilities": caps, "persistent": dict(seen.persistent)}
        return out


LedgerMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, database=None,
)
TestLedgerMachine = LedgerMachine.TestCase


@pytest.mark.parametrize("field", ["reason", "principal", "media path",
                                   "request_id"])
def test_surrogate_in_request_text_is_a_caller_error(tmp_path: Any, field: str) -> None:
    """Text that UTF-8 cannot encode (a lone surrogate) in any request field is an InvalidRequestError that writes nothing."""
    bad = "bad \ud800 text"
    prop, value = ("media:hdc", "/iso/" + bad) if field == "media path" else ("vcpus", 2)
    extra = {} if field == "media path" else {field: bad}

    async def scenario() -> tuple[type, int]:
        async with vmledger.open(str(tmp_path / "l.db"), hypervisor_timeout=0.2) as ledger:
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=2 * GiB, vcpus=1, max_vcpus=2,
                                cdroms={"hdc": "/iso/a.iso"})
            before = await ledger.log.head()
            with pytest.raises(vmledger.InvalidRequestError) as caught:
                await ledger.set("web", prop, value, **extra)
            return caught.type, await ledger.log.head() - before

    assert asyncio.run(scenario()) == (vmledger.InvalidRequestError, 0)


_QUERIES = {
    "request": lambda ledger: ledger.request("bad \ud800 id"),
    "history": lambda ledger: ledger.history(principal="bad \ud800 principal"),
}


@pytest.mark.parametrize("query", sorted(_QUERIES))
def test_surrogate_in_query_text_is_a_vmledger_error(tmp_path: Any, query: str) -> None:
    """A lone surrogate in a request id or principal asked about raises a VmledgerError, not a raw driver error."""

    async def scenario() -> None:
        async with vmledger.open(str(tmp_path / "l.db"), hypervisor_timeout=0.2) as ledger:
            await _QUERIES[query](ledger)

    with pytest.raises(vmledger.VmledgerError):
        asyncio.run(scenario())
