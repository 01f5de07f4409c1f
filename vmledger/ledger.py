"""The Ledger service: runs each request through decide -> log -> hypervisor -> log."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import weakref
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, TypeVar, cast

import attrs

from vmledger.adapters.port import Hypervisor
from vmledger.eventstore.catalogue import (
    CATALOGUE,
    CONFIG_PROPERTIES,
    MAX_REQUEST_ID_LENGTH,
    Capability,
    GuestType,
    Kind,
    Reason,
    Scope,
    check_device,
    check_name,
    check_page,
    check_position,
    check_principal,
    check_request_id,
    check_seconds,
    check_text,
    check_value,
    lookup,
    media_property,
    shown,
)
from vmledger.eventstore.decisions import (
    Decision,
    SetRequest,
    decide_live,
    decide_observed,
    decide_persistent,
    decide_set,
    decide_stop,
    decide_undefine,
    out_of_range,
)
from vmledger.eventstore.errors import (
    ChainBrokenError,
    ConcurrencyError,
    HypervisorRefusedError,
    InvalidRequestError,
    LockTimeoutError,
    RequestIdReusedError,
    StorageError,
    UnknownDomainError,
    UnknownPropertyError,
    UnknownRequestError,
    VmledgerError,
)
from vmledger.eventstore.events import (
    ChangeOutcome, DomainDefined, DomainStarted, Event, GuestCapabilitiesObserved, event_type,
)
from vmledger.eventstore.hypervisor import DomainSpec, LiveResult, Value
from vmledger.eventstore import transfer
from vmledger.eventstore.log import EventFilter, Metadata, RecordedEvent, timestamp
from vmledger.eventstore.state import DomainState, fold
from vmledger.projections import queries
from vmledger.projections.model import (
    Model, count_outcome_days, outcome_day_rows, state_from_json, stored_outcome_rows,
)
from vmledger.projections.scan import scan
from vmledger.projections.store import OUTCOME_DAYS_ROWS, RULES, DuplicateRequestError
from vmledger.projections.verify import (
    chain_in_worker, compare, compare_days, digest, domain_groups, folded_rows, paired_groups,
)
from vmledger._checkpoint import Checkpoint
from vmledger.replay import Replaying
from vmledger.results import AuditReport, ConfigDiff, DomainView, DriftRow, PropertyValue, RequestRecord, RevertReport
from vmledger._audit import audit_report, config_changes, revert_plan

__all__ = ["Ledger", "default_principal"]

_RETRIES = 20
#: Domain states remembered for the next decision, at most (the oldest is forgotten first).
_KNOWN_STATES = 4096
D = TypeVar("D")
_IMPORT_CHUNK = 2000
#: Who asks when a caller names nobody: the user name of the process, as the CLI has it; or, when
#: the system has no name for the user, this.
UNKNOWN_PRINCIPAL = "unknown"
_log = logging.getLogger("vmledger")


def check_definition(name: str, *, guest_type: str, memory: int, max_memory: int, vcpus: int, max_vcpus: int,
                     numa_nodes: int = 1, cdroms: Mapping[str, str] | None = None) -> dict[str, Value]:
    """Return the config a definition makes, or raise what `Ledger.define` raises for it, reading nothing.

    Raises:
        InvalidRequestError: a bad name, guest type, size, count or device, or bounds that do not hold.
    """
    check_name(name)
    if not isinstance(guest_type, str) or guest_type not in {g.value for g in GuestType}:
        raise InvalidRequestError(f"invalid guest type {shown(guest_type)} (use pv or hvm)")
    if cdroms is not None and not isinstance(cdroms, Mapping):
        raise InvalidRequestError(f"cdroms must map device names to media paths, not {shown(cdroms)}")
    config: dict[str, Value] = {
        "memory": memory, "max_memory": max_memory, "vcpus": vcpus,
        "max_vcpus": max_vcpus, "numa_nodes": numa_nodes,
    }
    for prop in CONFIG_PROPERTIES:
        check_value(lookup(prop), config[prop])
    for device, path in (cdroms or {}).items():
        config[media_property(check_device(device))] = check_value(CATALOGUE["media"], path)
    for prop in CONFIG_PROPERTIES:
        if why := out_of_range(lookup(prop), config[prop], config):
            raise InvalidRequestError(why)
    return config


class Ledger(Replaying):
    """The ledger of one database and one hypervisor; made by `vmledger.open`."""

    def __init__(
        self,
        log: Any,
        hypervisor: Hypervisor,
        *,
        clock: Callable[[], datetime],
        new_id: Callable[[], str],
        hypervisor_timeout: float = 10.0,
    ) -> None:
        self.log = log
        self.hypervisor = hypervisor
        self._clock = clock
        self._new_id = new_id
        self._timeout = hypervisor_timeout
        # Weak: a lock lives while a task holds or awaits it, so names asked for once do not pile up.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        #: Domain name -> the state this process's last append to it made, oldest first.
        self._known: dict[str, DomainState] = {}

    # Helpers.

    async def _state(self, name: str) -> DomainState:
        return await queries.find_domain(self.log.fetch_all, check_name(name))

    async def _append(self, state: DomainState, events: list[Event] | tuple[Event, ...],
                      meta: Metadata) -> list[RecordedEvent]:
        """Append at `state`'s version, and remember the state the events make for the next decision."""
        try:
            recorded = await self.log.append(state.uuid, state.version, events, meta, now=self._clock())
        except BaseException:
            self._known.pop(state.name, None)
            raise
        state = fold(recorded, state)  # type: ignore[assignment]
        self._known.pop(state.name, None)
        if state.defined:
            self._known[state.name] = state
            if len(self._known) > _KNOWN_STATES:
                del self._known[next(iter(self._known))]
        return recorded

    async def _decide(self, name: str, read: Callable[[str], Awaitable[DomainState | None]],
                      decide: Callable[[DomainState | None], D]) -> tuple[DomainState | None, D]:
        """Return a domain's state and what `decide` makes of it, for an append at that state's version.

        The state this process's last append made is used unread when
        `decide` makes something of it (events, or a `Decision`).  Another
        process may have appended since: the append's version check then
        refuses it, and the caller decides again on a fresh read.  A decision
        that raises, or finds nothing to write, on a remembered state is made
        again on a fresh one, since a stale state must never stop a write.
        """
        known = self._known.pop(name, None)
        if known is not None:
            with contextlib.suppress(VmledgerError):
                if made := decide(known):
                    self._known[name] = known
                    return known, made
        state = await read(name)
        return state, decide(state)

    async def _retrying(self, name: str, decide: Callable[[DomainState], list[Event] | tuple[Event, ...]],
                        meta: Metadata) -> list[RecordedEvent]:
        """Decide and append; on a version conflict decide again on a fresh read."""
        for _ in range(_RETRIES):
            async with self._serial(name):
                state, events = await self._decide(name, self._state, decide)
                if not events:
                    return []
                try:
                    return await self._append(state, events, meta)
                except ConcurrencyError as e:
                    conflict = e
        raise _contended(name, conflict)

    def _serial(self, name: str) -> asyncio.Lock:
        """Return the lock that orders this process's decisions on one domain.

        Deciding on a state another task of this process is about to change
        only earns a version conflict; other processes still race, and the
        expected-version check settles those.

        Raises:
            InvalidRequestError: `name` is not a valid domain name (a list, say, is no key at all).
        """
        lock = self._locks.get(check_name(name))
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    # Lifecycle.

    async def define(
        self,
        name: str,
        *,
        guest_type: str,
        memory: int,
        max_memory: int,
        vcpus: int,
        max_vcpus: int,
        numa_nodes: int = 1,
        cdroms: Mapping[str, str] | None = None,
        principal: str | None = None,
    ) -> DomainView:
        """Define a domain on the hypervisor and record `DomainDefined`; return its view.

        Raises:
            InvalidRequestError: a bad name, size, count or device, bounds that do
                not hold, or a name already defined.
            HypervisorError: the hypervisor refused the definition.
        """
        config = check_definition(name, guest_type=guest_type, memory=memory, max_memory=max_memory, vcpus=vcpus,
                                  max_vcpus=max_vcpus, numa_nodes=numa_nodes, cdroms=cdroms)
        meta = _meta(principal)
        if await self._recorded(name):
            raise InvalidRequestError(f"domain {name!r} is already defined")
        uuid = self._new_id()
        pv = guest_type == GuestType.PV.value
        caps = {c.value: None for c in Capability}
        if pv:
            caps[Capability.BALLOON.value] = True
        event = DomainDefined(domain=name, uuid=uuid, guest_type=guest_type, config=config, capabilities=caps)
        await self.hypervisor.define(DomainSpec(
            name=name, uuid=uuid, guest_type=guest_type, config=event.config, capabilities=event.capabilities,
        ))
        try:
            await self.log.append(uuid, 0, [event], meta, now=self._clock())
        except VmledgerError:
            await self.hypervisor.undefine(name)
            raise
        return await self.show(name)

    async def start(self, name: str, *, principal: str | None = None) -> DomainView:
        """Boot a domain and record `DomainStarted` with the live config the hypervisor reports.

        Raises:
            UnknownDomainError: no such domain.
            InvalidRequestError: the domain is already running.
            HypervisorError: the hypervisor would not start it.
        """
        meta = _meta(principal)
        state = await self._state(name)
        if state.running:
            raise InvalidRequestError(f"domain {name!r} is already running")
        live = await self.hypervisor.start(name)
        observed = await self.hypervisor.observe(name)

        def decide(state: DomainState) -> list[Event]:
            # An observer (`watch`, `observe`) may have recorded this start meanwhile.
            events: list[Event] = [] if state.running else [DomainStarted(config=live)]
            caps = {k: v for k, v in observed.capabilities if state.capabilities.get(k) != v}
            if caps:
                events.append(GuestCapabilitiesObserved(capabilities=caps))
            return events

        await self._retrying(name, decide, meta)
        return await self.show(name)

    async def stop(self, name: str, *, principal: str | None = None) -> DomainView:
        """Shut a domain off and record `DomainStopped`.

        A request still waiting for its live outcome gets it first: `…Failed`
        with reason `domain_not_running`, since its live value is gone.

        Raises:
            UnknownDomainError: no such domain.
            InvalidRequestError: the domain is not running.
            HypervisorError: the hypervisor would not stop it.
        """
        meta = _meta(principal)
        state = await self._state(name)
        if not state.running:
            raise InvalidRequestError(f"domain {name!r} is not running")
        await self.hypervisor.stop(name)
        # An observer may have recorded this stop meanwhile.
        await self._retrying(name, lambda s: decide_stop(s) if s.running else [], meta)
        return await self.show(name)

    async def undefine(self, name: str, *, principal: str | None = None) -> None:
        """Remove a stopped domain and record `DomainUndefined`; its stream stays for audit.

        A request still waiting for an outcome gets it first: `…Failed`, since
        the config it concerned is gone.

        Raises:
            UnknownDomainError: no such domain.
            InvalidRequestError: the domain is running.
        """
        meta = _meta(principal)
        state = await self._state(name)
        if state.running:
            raise InvalidRequestError(f"domain {name!r} is running; stop it first")
        await self.hypervisor.undefine(name)
        await self._retrying(name, decide_undefine, meta)

    async def adopt(self, name: str, *, principal: str | None = None) -> DomainView:
        """Record a domain the hypervisor already has; return its view.

        Records `DomainDefined` from its inactive config and, if it runs,
        `DomainStarted` with its live values.

        Raises:
            InvalidRequestError: a bad name, a domain the ledger already records, or
                a hypervisor that cannot describe existing domains.
            HypervisorError: the hypervisor has no such domain.
        """
        check_name(name)
        describe = getattr(self.hypervisor, "describe", None)
        if describe is None:
            raise InvalidRequestError("this hypervisor cannot adopt existing domains (use libvirt+URI)")
        if await self._recorded(name):
            raise InvalidRequestError(f"domain {name!r} is already recorded")
        spec = await describe(name)
        observation = await self.hypervisor.observe(name)
        events: list[Event] = [DomainDefined(domain=spec.name, uuid=spec.uuid, guest_type=spec.guest_type,
                                             config=spec.config, capabilities=spec.capabilities)]
        if observation.running:
            events.append(DomainStarted(config=observation.live))
        # A stream undefined earlier continues (its history stays); a new one starts at 0.
        rows = await self.log.fetch_all("SELECT version FROM domains WHERE uuid = ?", (spec.uuid,))
        await self.log.append(spec.uuid, rows[0][0] if rows else 0, events,
                              _meta(principal), now=self._clock())
        return await self.show(name)

    async def adopt_all(self, *, principal: str | None = None) -> list[DomainView]:
        """Adopt every domain the hypervisor lists that the ledger does not record yet; return their views.

        A domain another process adopts meanwhile is left to it, and not returned.

        Raises:
            InvalidRequestError: the hypervisor cannot list its domains.
        """
        list_domains = getattr(self.hypervisor, "list_domains", None)
        if list_domains is None:
            raise InvalidRequestError("this hypervisor cannot adopt existing domains (use libvirt+URI)")
        known = {d.domain for d in await self.domains()}
        adopted = []
        for name in await list_domains():
            if name not in known:
                try:
                    adopted.append(await self.adopt(name, principal=principal))
                except (InvalidRequestError, ConcurrencyError):
                    if not await self._recorded(name):
                        raise
        return adopted

    async def _recorded(self, name: str) -> bool:
        return bool(await self.log.fetch_all("SELECT 1 FROM domains WHERE name = ? AND defined = 1", (name,)))

    async def watch(self, *, principal: str | None = None, interval: float = 60.0,
                    on_recorded: Callable[[str, RecordedEvent], None] | None = None) -> None:
        """Record out-of-band changes until cancelled: at start, when announced, and every `interval` seconds.

        Watching starts with one observation of every domain, which records
        what changed while nobody watched.  Then the domain of each
        notification the hypervisor sends (libvirt: lifecycle, balloon and
        tray events) is observed, and every domain is observed again
        `interval` seconds after the previous sweep ended: no hypervisor
        announces every change (libvirt's test driver announces no memory or
        vCPU change at all), and libvirt does not replay the events it sent
        while a connection was down.  When the hypervisor's connection comes
        back after it closed (libvirtd restarted), every domain is observed
        at once, which records what changed in the gap.  A domain the
        hypervisor no longer has is recorded undefined.  A hypervisor without
        notifications, such as the simulated one, is watched by the sweeps alone.

        Each observation is `observe`'s, so a request younger than twice the
        hypervisor timeout is left to its caller.  A domain whose observation
        fails is logged as one warning (logger `vmledger`) and skipped; the
        watch goes on.  `on_recorded(domain, event)` is called for each event
        the watch records, as it is recorded.

        Raises:
            InvalidRequestError: `interval` is not a finite number of seconds
                above 0, or `principal` is not valid text.
            HypervisorError: the hypervisor's notifications cannot be subscribed to.
        """
        principal = check_principal(_who(principal))
        interval = check_seconds("the watch interval", interval)
        notifications = getattr(self.hypervisor, "notifications", None)
        async with contextlib.AsyncExitStack() as stack:
            # Subscribed before the first sweep: a change made during it is seen by it or announced.
            events = None if notifications is None else await stack.enter_async_context(notifications())
            await self._sweep(principal, on_recorded)
            loop = asyncio.get_running_loop()
            due = loop.time() + interval
            announced: asyncio.Future[tuple[str, str, Value]] | None = None
            # One observation at a time: of two racing observations of a domain,
            # the one that read the hypervisor first could record its older state last.
            try:
                while True:
                    if events is not None and announced is None:
                        announced = asyncio.ensure_future(anext(events))
                    if announced is None:
                        await asyncio.sleep(due - loop.time())
                    else:
                        await asyncio.wait((announced,), timeout=max(0.0, due - loop.time()))
                    if announced is not None and announced.done():
                        domain, kind, _detail = announced.result()
                        announced = None
                        if kind == "reconnected":
                            # The events of the gap are lost: catch up with a sweep now.
                            due = loop.time()
                        else:
                            await self._watch_one(domain, principal, on_recorded)
                    if loop.time() >= due:
                        await self._sweep(principal, on_recorded)
                        due = loop.time() + interval
            finally:
                if announced is not None:
                    announced.cancel()
                    # The subscription closes next: let the read it was waiting on end first.
                    await asyncio.wait((announced,))

    async def _sweep(self, principal: str, on_recorded: Callable[[str, RecordedEvent], None] | None) -> None:
        """Observe every defined domain, one at a time."""
        for view in await self.domains():
            await self._watch_one(view.domain, principal, on_recorded)

    async def _watch_one(self, name: str, principal: str,
                         on_recorded: Callable[[str, RecordedEvent], None] | None) -> None:
        """Observe one domain for `watch`; a failure is logged, never raised."""
        try:
            recorded = await self.observe(name, principal=principal)
        except InvalidRequestError:
            pass  # announced by the hypervisor, but not (or no longer) recorded by the ledger, or a name it cannot hold
        except VmledgerError as e:
            _log.warning("watch: cannot observe domain %r: %s", name, e)
        else:
            for event in recorded if on_recorded is not None else ():
                on_recorded(name, event)

    # Requests.

    async def set(
        self,
        name: str,
        prop: str,
        value: Value,
        *,
        scope: str = Scope.BOTH.value,
        request_id: str | None = None,
        principal: str | None = None,
        reason: str | None = None,
        expected_version: int | None = None,
        correlation_id: str | None = None,
    ) -> RequestRecord:
        """Request a change and record it with its outcome in every scope concerned.

        Returns the request's record, as `history` gives it.  Repeating a
        request id returns the first record, marked `replayed`, and appends
        nothing.  `principal` defaults to the user name of the process.
        `expected_version` makes the request a compare-and-set: it is
        recorded only if the domain's stream is at that version when its
        `…Requested` is appended (HTTP `If-Match`).  `correlation_id` ties
        the requests of one task together in the events' metadata (by
        default each request is its own: its id).

        Raises:
            InvalidRequestError: the request is malformed, or its id was used for
                another request (nothing is written).
            UnknownDomainError, UnknownPropertyError: nothing is written.
            ConcurrencyError: the domain's stream is not at `expected_version`; nothing is written.
        """
        principal = _who(principal)
        if request_id is not None:
            check_request_id(request_id)  # looked up before anything else
        request = SetRequest(
            request_id=self._new_id() if request_id is None else request_id, domain=name,
            property=prop, value=value, scope=scope, principal=principal, reason=reason,
        )
        if correlation_id is not None:
            check_text("correlation id", correlation_id, MAX_REQUEST_ID_LENGTH)
        if expected_version is not None and (isinstance(expected_version, bool) or not isinstance(expected_version, int)
                                             or expected_version < 0):
            raise InvalidRequestError(f"expected_version must be a whole number from 0, not {shown(expected_version)}")
        meta = Metadata(principal=principal, request_id=request.request_id,
                        correlation_id=request.request_id if correlation_id is None else correlation_id)
        for _ in range(_RETRIES):
            # A generated id is new: only a caller's id can have been recorded already.
            if request_id is not None and (seen := await self._seen(request)) is not None:
                return RequestRecord.from_dict(seen, replayed=True)
            async with self._serial(name):
                if expected_version is not None:
                    self._known.pop(name, None)  # compared with the stored version, not one remembered
                state, decision = await self._decide(name, self._find_for_request,
                                                     lambda s: decide_set(request, s))
                if expected_version is not None and cast(DomainState, state).version != expected_version:
                    # The append below checks the same version, so a writer in between is caught there.
                    raise ConcurrencyError(cast(DomainState, state).uuid, expected_version,
                                           cast(DomainState, state).version,
                                           detail="the domain moved past the version the request expects")
                try:
                    recorded = await self._append(cast(DomainState, state), decision.events, meta)
                    break
                except ConcurrencyError as e:
                    conflict = e
                    continue
                except DuplicateRequestError:
                    continue  # another caller recorded the same id first: report theirs
        else:
            raise _contended(name, conflict)
        # The request's history record as this caller's appends make it, which is the stored one
        # while every outcome is this caller's own; another writer's (a stop's, say) is read.
        requested_at = cast(DomainState, state)  # decide_set raised if there was no domain
        history = Model(states={requested_at.uuid: requested_at})
        history.feed_all(recorded)
        own = True
        try:
            own = await self._apply(request, requested_at.uuid, decision, history, meta)
        except asyncio.CancelledError:  # interrupted (Ctrl-C, a caller's timeout): say what is left behind
            _log.warning("request %s is recorded, but was interrupted before its outcomes were all recorded; what "
                         "is missing stays in flight until observe resolves it", request.request_id)
            raise
        except StorageError as e:  # the request is recorded: say which, and how it ends
            raise StorageError(f"request {request.request_id} is recorded, but not all its outcomes: {e}; it stays "
                               "in flight until observe resolves it") from e
        if own:
            return RequestRecord.from_dict(queries.history_record(history.history_row(request.request_id)))
        return await self.request(request.request_id)

    async def _apply(self, request: SetRequest, uuid: str, decision: Decision, history: Model,
                     meta: Metadata) -> bool:
        """Ask the hypervisor for a recorded request's change and record the outcomes, into `history`.

        Each scope's hypervisor call and the outcome it makes are made under
        that scope's lock of the domain, honoured by every process writing the
        log, so that the calls of one scope reach the hypervisor and the log in
        one order: without it, two requests of one property could leave the
        log saying one value and the hypervisor holding the other, each request
        recorded applied.  The config and the running guest are apart, so a
        request's live change need not wait for another's config write.
        A lock another writer keeps longer than a call and its outcome take
        fails that scope, the hypervisor not asked (`_turn`).

        Returns whether every outcome is this caller's own (another writer, a stop say, may have settled one).
        """
        name, prop, own = request.domain, request.property, True
        if decision.persistent_value is not None:
            async with contextlib.AsyncExitStack() as held:
                error, reason, refused = await self._turn(held, uuid, name, Scope.PERSISTENT), Reason.TIMEOUT, False
                if error is None:
                    error, reason, refused = await self._apply_persistent(name, prop, decision.persistent_value)
                own = _outcomes_into(history, await self._retrying(
                    name, lambda s: decide_persistent(request, s, error, reason, refused=refused) if _awaits(
                        s, request, Scope.PERSISTENT.value) else (), meta)) and own
        if decision.live_value is not None:
            async with contextlib.AsyncExitStack() as held:
                busy = await self._turn(held, uuid, name, Scope.LIVE)
                result = (LiveResult.failed(None, Reason.TIMEOUT, busy) if busy is not None
                          else await self._apply_live(name, prop, decision.live_value))
                own = _outcomes_into(history, await self._retrying(
                    name, lambda s: decide_live(request, s, result) if _awaits(s, request, Scope.LIVE.value) else (),
                    meta)) and own
        return own

    async def _turn(self, held: contextlib.AsyncExitStack, uuid: str, name: str, scope: Scope) -> str | None:
        """Take the domain's lock of `scope` into `held`; return None, or why not, when another writer kept it.

        Its holder is waited for as long as a hypervisor call and the writing
        of its outcome may take (the hypervisor timeout and the busy timeout):
        a holder stopped or hung past that fails this scope of the request, the
        hypervisor not asked, rather than leave it waiting for good.
        """
        try:
            await held.enter_async_context(self.log.exclusive(f"{uuid}/{scope.value}", work=self._timeout))
        except LockTimeoutError as e:
            return (f"another writer held the lock on the {scope.value} changes of domain {name!r} for {e.seconds:g}s, "
                    "longer than a hypervisor call and the writing of its outcome take: the hypervisor was not asked")
        return None

    async def _apply_persistent(self, name: str, prop: str, value: Value) -> tuple[str | None, Reason, bool]:
        """Ask the hypervisor for a persistent change; return its error (None if done), reason and whether refused."""
        try:
            async with asyncio.timeout(self._timeout):
                await self.hypervisor.apply_persistent(name, prop, value)
        except TimeoutError:
            return f"no answer from the hypervisor within {self._timeout:g}s", Reason.TIMEOUT, False
        except HypervisorRefusedError as e:
            with contextlib.suppress(ValueError):  # a reason not of the catalogue: failed, as any other
                return str(e), Reason(e.reason), True
            return str(e), Reason.HYPERVISOR_ERROR, False
        except VmledgerError as e:
            # An adapter's own timeout (libvirt's) is a timeout too.
            return str(e), Reason.TIMEOUT if isinstance(e.__cause__, TimeoutError) else Reason.HYPERVISOR_ERROR, False
        return None, Reason.HYPERVISOR_ERROR, False

    async def _find_for_request(self, name: str) -> DomainState | None:
        check_name(name)
        rows = await self.log.fetch_all("SELECT state FROM domains WHERE name = ? AND defined = 1", (name,))
        return state_from_json(rows[0][0]) if rows else None

    async def _seen(self, request: SetRequest) -> dict[str, Any] | None:
        if not isinstance(request.request_id, str):
            return None
        found = await queries.history_records(self.log.fetch_all, request_id=request.request_id)
        if not found:
            return None
        first = found[0]
        same = (first["domain"], first["property"], first["requested"], first["scope"]) == (
            request.domain, request.property, request.value, request.scope)
        if not same:
            raise RequestIdReusedError(
                f"request id {request.request_id!r} was already used for another request")
        return first

    async def _apply_live(self, name: str, prop: str, value: Value) -> LiveResult:
        try:
            async with asyncio.timeout(self._timeout):
                return await self.hypervisor.apply_live(name, prop, value)
        except TimeoutError:
            return LiveResult.failed(None, Reason.TIMEOUT, f"no answer from the hypervisor within {self._timeout:g}s")
        except (VmledgerError, OSError) as e:
            return LiveResult.failed(None, Reason.HYPERVISOR_ERROR, str(e) or type(e).__name__)

    async def request(self, request_id: str) -> RequestRecord:
        """Return the history record of one request.

        Raises:
            InvalidRequestError: a malformed id.
            UnknownRequestError: no request has that id.
        """
        check_request_id(request_id)
        found = await queries.history_records(self.log.fetch_all, request_id=request_id)
        if not found:
            raise UnknownRequestError(f"unknown request id {request_id!r}")
        return RequestRecord.from_dict(found[0])

    # Reads.

    async def get(self, name: str, prop: str, *, scope: str = Scope.CURRENT.value) -> PropertyValue:
        """Return one property's value in the live or persistent config.

        Raises:
            UnknownDomainError, UnknownPropertyError, InvalidRequestError.
        """
        entry = lookup(prop)
        if scope not in (Scope.LIVE.value, Scope.PERSISTENT.value, Scope.CURRENT.value):
            raise InvalidRequestError(f"invalid scope {scope!r} for get (use live, persistent or current)")
        state = await self._state(name)
        if not state.has_property(prop):
            raise UnknownPropertyError(f"domain {name!r} has no {prop!r}")
        if scope == Scope.CURRENT.value:
            scope = Scope.LIVE.value if state.running else Scope.PERSISTENT.value
        slots = state.live if scope == Scope.LIVE.value else state.persistent
        value: Value | None
        if prop == "power_state":
            value = "running" if state.running else "shut off"
        elif entry.kind is Kind.RO_RUN:
            slot = state.live.get("memory")
            value = slot.value if slot else None
        else:
            slot = slots.get(prop)
            value = slot.value if slot else None
        return PropertyValue(domain=state.name, property=prop, scope=scope, value=value)

    async def show(self, name: str) -> DomainView:
        """Return both configs of a domain side by side, with capabilities, tray locks and drift.

        Raises:
            UnknownDomainError: no such domain.
        """
        return DomainView.from_dict(queries.domain_view(await self._state(name)))

    async def domains(self) -> list[DomainView]:
        """Return the view of every defined domain, by name."""
        return [DomainView.from_dict(queries.domain_view(s)) for s in await queries.list_domains(self.log.fetch_all)]

    async def position_of(self, as_of: int | datetime) -> int:
        """Return the log position an as-of argument names (a position or a time).

        Raises:
            InvalidRequestError: neither a position from 0 to 2**63 - 1 nor a `datetime`, or a
                position past the head of the log (which would answer the present, silently).
        """
        if isinstance(as_of, datetime):
            return await self.log.position_at(as_of)
        position = check_position(as_of)
        if position > (head := await self.log.head()):
            raise InvalidRequestError(f"position {position} is past the head of the log ({head})")
        return position

    async def model_at(self, position: int) -> Model:
        """Return the read model folded from the first `position` events."""
        model = Model()
        async for rec in self.log.read_all(to_position=position):
            model.feed(rec)
        return model

    async def drift(self, name: str | None = None, *, as_of: int | datetime | None = None) -> list[DriftRow]:
        """Return where live differs from persistent, with cause, request and since when.

        Raises:
            UnknownDomainError: `name` is not a defined domain (now, or at `as_of`).
            InvalidRequestError: a malformed name or as-of argument.
        """
        if name is not None:
            check_name(name)
        if as_of is None:
            uuid = (await self._state(name)).uuid if name is not None else None
            return [DriftRow.from_dict(d) for d in await queries.drift_rows(self.log.fetch_all, uuid)]
        model = await self.model_at(await self.position_of(as_of))
        uuid = None
        if name is not None:
            found = [u for u, s in model.states.items() if s.name == name and s.defined]
            if not found:
                raise UnknownDomainError(f"unknown domain {name!r} at that point")
            uuid = found[0]
        return [DriftRow.from_dict(d) for d in queries.model_drift(model, uuid)]

    async def history(
        self,
        name: str | None = None,
        prop: str | None = None,
        *,
        principal: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[RequestRecord]:
        """Return every request with its outcomes, oldest first, filtered as asked.

        A domain's history stays when it is undefined: `name` selects the
        requests of every domain that bore it, defined now or not.  `since`
        and `until` are both included; a naive time is taken as UTC.  With
        `limit`, at most that many requests, from the `offset`th on (0 the
        first): a page of the list, which the query reads alone.

        Raises:
            UnknownDomainError: no domain, defined or undefined, ever had the name `name`.
            InvalidRequestError: `since` or `until` is not a `datetime`, `limit` is not a positive integer
                or `offset` not a natural one, or another argument is malformed.
        """
        check_page(limit, offset)
        filters = await self.history_filters(name, prop, principal=principal, since=since, until=until)
        return [RequestRecord.from_dict(r) for r in await queries.history_records(
            self.log.fetch_all, **filters, limit=limit, offset=offset)]

    async def history_filters(self, name: str | None = None, prop: str | None = None, *,
                              principal: str | None = None, since: datetime | None = None,
                              until: datetime | None = None) -> dict[str, Any]:
        """Check the filters of `history`; return them as `projections.queries.history_records` takes them.

        For a caller that counts or pages the history itself in the
        projection tables (the console: `history_count`, a page newest
        first): `name` becomes the uuids of every domain that bore it.

        Raises:
            UnknownDomainError, InvalidRequestError: as `history`.
        """
        for bound in (since, until):
            if bound is not None and not isinstance(bound, datetime):
                raise InvalidRequestError(f"since and until must be datetimes, not {shown(bound)}")
        uuids = None if name is None else await queries.domains_named(self.log.fetch_all, check_name(name))
        if prop is not None:
            lookup(prop)
        if principal is not None:
            check_principal(principal)
        return {"uuids": uuids, "prop": prop, "principal": principal, "since": since, "until": until}

    # Audit and replay tools.

    async def audit(self, *, since: datetime | None = None, until: datetime | None = None,
                    domain: str | None = None, principal: str | None = None) -> AuditReport:
        """Report a period: outcomes per principal, property and scope, the top reasons, and drift episodes.

        Requests count when they were made within `[since, until]`; drift
        episodes when they overlap it, each with the time it lies within it,
        and each domain with the time any of its properties drifted.  Without
        `until` the period ends now.  `domain` selects every domain that bore
        the name; `principal` the requests it made and the episodes they caused.
        The answer comes from the `outcome_days`, `history` and `episodes` tables, never a replay of the log.

        Raises:
            UnknownDomainError: no domain ever had the name `domain`.
            InvalidRequestError: `since` or `until` is not a `datetime`, `until` precedes `since`, or a name is malformed.
        """
        for bound in (since, until):
            if bound is not None and not isinstance(bound, datetime):
                raise InvalidRequestError(f"since and until must be datetimes, not {shown(bound)}")
        # A time without a zone is UTC, as everywhere in the ledger.
        since, until = _utc(since), _utc(until)
        now = self._clock()
        end = now if until is None else until
        if since is not None and end < since:
            raise InvalidRequestError("the period ends before it begins: until precedes since")
        uuids = None if domain is None else await queries.domains_named(self.log.fetch_all, check_name(domain))
        if principal is not None:
            check_principal(principal)
        # Rules 4 brought the last of the audit's tables; rows of later rules read the same (`KEPT_EPISODES`).
        await self._need_rules(4, "the audit's tables")
        first, last = (None if t is None else timestamp(t) for t in (since, until))
        counts = await queries.outcome_counts(self.log.fetch_all, since=first, until=last, uuids=uuids,
                                              principal=principal)
        episodes = await queries.episode_rows(self.log.fetch_all, since=first, until=timestamp(end), uuids=uuids,
                                              principal=principal)
        return audit_report(counts, episodes, since=since, until=end, domain=domain, principal=principal, now=now)

    async def _need_rules(self, rules: int, what: str) -> None:
        """Refuse to read projection rows that the rules `rules` brought, when older rules made the stored ones.

        A writer rebuilds such rows when it opens the ledger; a reader cannot.

        Raises:
            StorageError: older rules made the rows.
        """
        if await self._stored_rules() < rules:
            raise StorageError(f"this ledger's projections were made by an older vmledger, without {what}: "
                               "open it once for writing (vmledger rebuild, say) to rebuild them")

    async def _stored_rules(self) -> int:
        """Return the fold rules the stored projection rows were made by (1: a ledger of before rules were named)."""
        found = await self.log.fetch_all("SELECT position FROM projection_position WHERE name = 'rules'")
        return found[0][0] if found else 1

    async def diff(self, name: str, *, from_position: int | datetime = 0,
                   to_position: int | datetime | None = None) -> ConfigDiff:
        """Return how a domain's persistent and live configs changed between two points, event by event.

        Each point is a log position or a time (the last position recorded
        by then); `to_position` defaults to the head.  `name` is the domain
        that bore it at `to_position`, defined now or undefined since.

        Raises:
            UnknownDomainError: no domain had the name at `to_position`.
            InvalidRequestError: a point is malformed or past the head, or `from_position` is after `to_position`.
        """
        start = await self.position_of(from_position)
        end = await self.log.head() if to_position is None else await self.position_of(to_position)
        if start > end:
            raise InvalidRequestError(f"the diff goes backwards: from #{start} to #{end}")
        uuid = await self._stream_named(name, end)
        changes = config_changes(await self.log.read_stream(uuid, to_position=end), start)
        return ConfigDiff(domain=name, from_position=start, to_position=end, changes=tuple(changes))

    async def _stream_named(self, name: str, position: int) -> str:
        """Return the stream of the domain that bore `name` at `position`: the last defined there or before.

        Raises:
            UnknownDomainError: none had.
        """
        found = None
        for uuid in await queries.domains_named(self.log.fetch_all, check_name(name)):
            first = (await self.log.fetch_all("SELECT min(position) FROM events WHERE stream = ?", (uuid,)))[0][0]
            if first is not None and first <= position:
                found = uuid
        if found is None:
            raise UnknownDomainError(f"unknown domain {name!r} at position {position}")
        return found

    async def revert(self, name: str, *, to: int | datetime, scope: str = Scope.BOTH.value, dry_run: bool = False,
                     principal: str | None = None) -> RevertReport:
        """Bring a domain's config back to what it was at a position or time, with ordinary requests.

        Each request is recorded as `set` records it, with the reason
        `revert to #POSITION` and one correlation id for them all; its record
        is in the report.  `scope` `persistent` reverts the persistent config,
        `both` the live one too (`_audit.revert_plan` says how).  Values that
        cannot go back (fixed while running, a device gone or new) are listed
        in `unrevertible`, not requested.  `dry_run` plans and writes nothing.

        Raises:
            UnknownDomainError: `name` is not a defined domain.
            InvalidRequestError: the domain did not exist at `to`, `to` is malformed or past the head,
                or `scope` is neither `persistent` nor `both`.
        """
        if scope not in (Scope.PERSISTENT.value, Scope.BOTH.value):
            raise InvalidRequestError(f"invalid scope {shown(scope)} for revert (use persistent or both)")
        if not isinstance(dry_run, bool):
            raise InvalidRequestError(f"dry_run must be true or false, not {shown(dry_run)}")
        principal = check_principal(_who(principal))
        position = await self.position_of(to)
        now = await self._state(name)
        then = fold(await self.log.read_stream(now.uuid, to_position=position))
        if then is None:
            raise InvalidRequestError(f"domain {name!r} did not exist at position {position}")
        steps, lost = revert_plan(then, now, scope)
        correlation_id, records = self._new_id(), []
        for step in [] if dry_run else steps:
            records.append(await self.set(name, step.property, step.value, scope=step.scope, principal=principal,
                                          reason=f"revert to #{position}", correlation_id=correlation_id))
        return RevertReport(domain=name, to_position=position, correlation_id=correlation_id, dry_run=dry_run,
                            steps=tuple(steps), records=tuple(records), unrevertible=tuple(lost))

    def events(self, *, from_position: int = 0, to_position: int | None = None, domain: str | None = None,
               types: str | Iterable[str] | None = None, since: datetime | None = None,
               until: datetime | None = None) -> AsyncIterator[RecordedEvent]:
        """Yield recorded events after `from_position`, in order, filtered as asked.

        `domain` keeps the events of every domain that bore the name,
        `types` those of the event types named, and `since` and `until` those
        recorded in that period (both included).  Each filter is answered
        from an index, not by reading the whole log.

        Raises:
            InvalidRequestError: a position is not a whole number from 0 to 2**63 - 1, a type is
                not an event type, `since` or `until` is not a `datetime`, or a name is malformed.
            UnknownDomainError: no domain, defined or undefined, ever had the name `domain`
                (raised when the iteration starts).
        """
        if to_position is not None:
            check_position(to_position)
        start, where = check_position(from_position), _event_filter(types=types, since=since, until=until)
        if domain is None:
            return self.log.read_all(from_position=start, to_position=to_position, where=where)
        return self._domain_events(check_name(domain), start, to_position, where)

    async def _domain_events(self, name: str, start: int, to_position: int | None,
                             where: EventFilter) -> AsyncIterator[RecordedEvent]:
        where = attrs.evolve(where, streams=tuple(await queries.domains_named(self.log.fetch_all, name)))
        async for rec in self.log.read_all(from_position=start, to_position=to_position, where=where):
            yield rec

    def subscribe(self, *, from_position: int = 0, domain: str | None = None,
                  types: str | Iterable[str] | None = None, since: datetime | None = None) -> AsyncIterator[RecordedEvent]:
        """Yield every event after `from_position`, then follow new ones as they are appended, filtered as `events`.

        A domain defined later under the name `domain` is followed too.

        Raises:
            InvalidRequestError: as for `events`.
            UnknownDomainError: as for `events`.
        """
        start = check_position(from_position)
        where = _event_filter(types=types, since=since)
        if domain is None and where == EventFilter():
            return self.log.subscribe(from_position=start)
        return self._follow_filtered(start, None if domain is None else check_name(domain), where)

    async def _follow_filtered(self, start: int, name: str | None, where: EventFilter) -> AsyncIterator[RecordedEvent]:
        head = await self.log.head()
        if name is not None:  # looked up after the head: every domain of that name up to it is known
            where = attrs.evolve(where, streams=tuple(await queries.domains_named(self.log.fetch_all, name)))
        async for rec in self.log.read_all(from_position=start, to_position=head, where=where):
            yield rec
        async for rec in self.log.subscribe(from_position=max(start, head)):
            if name is not None and isinstance(rec.event, DomainDefined) and rec.event.domain == name:
                where = attrs.evolve(where, streams=(*(where.streams or ()), rec.stream))
            if where.matches(rec):
                yield rec

    # Observation.

    async def observe(self, name: str | None = None, *, principal: str | None = None) -> list[RecordedEvent]:
        """Compare the hypervisor's state with the log and record what differs.

        This is how a request its caller never finished (the process died
        between `…Requested` and an outcome) is resolved; `vmledger.open`
        does not do it.  Once older than twice the hypervisor timeout, such a
        request gets its outcome from what the hypervisor really holds: the
        live value of the running domain, the persistent config.  A domain
        found stopped fails every pending live outcome (reason
        `domain_not_running`), as its live value is gone.

        Raises:
            UnknownDomainError: `name` is not a defined domain.
        """
        names = [name] if name is not None else [d.domain for d in await self.domains()]
        # A request younger than this may still have its caller waiting on the hypervisor.
        stale_before = self._clock() - timedelta(seconds=2 * self._timeout)
        recorded: list[RecordedEvent] = []
        for domain in names:
            recorded += await self._observe_one(domain, stale_before, _meta(principal))
        return recorded

    async def _observe_one(self, name: str, stale_before: datetime, meta: Metadata) -> list[RecordedEvent]:
        """Observe one domain and record what differs, deciding only on the state the observation followed.

        An observation read before another caller recorded a change (a stop,
        say) would undo that change in the log: when the log moved while the
        hypervisor was read, read it again.
        """
        for _ in range(_RETRIES):
            version = (await self._state(name)).version
            observation = await self.hypervisor.observe(name)
            async with self._serial(name):
                state = await self._state(name)
                if state.version != version:
                    conflict = ConcurrencyError(state.uuid, version, state.version)
                    continue
                events = decide_observed(state, observation, stale_before)
                if not events:
                    return []
                try:
                    return await self._append(state, events, meta)
                except ConcurrencyError as e:
                    conflict = e
        raise _contended(name, conflict)

    # Moving a ledger between databases.

    async def export(self, *, from_position: int = 0) -> AsyncIterator[str]:
        """Yield the log as export lines (JSON, every stored field with its hash link), in order.

        Raises:
            InvalidRequestError: the position is not a whole number from 0 to 2**63 - 1.
            StorageError: a stored event's data or metadata is no JSON.
        """
        check_position(from_position)
        async for row in self.log.read_rows(from_position, None):
            yield transfer.to_line(row)

    async def import_lines(self, lines: Callable[[], Iterable[str]]) -> int:
        """Import an exported log into this empty ledger, all or nothing; return the last position.

        `lines()` is read once, a chunk at a time (blank lines are skipped,
        but counted in the line numbers of errors): each chunk's chain is
        checked, then its events are stored and folded, all in one
        transaction.  The first error that importing line by line would meet
        rolls it back whole: the ledger stays empty.  So does cancelling the
        call, at the next chunk, unless the import was already committing.

        Raises:
            InvalidRequestError: the ledger is not empty, a line is not an export line, or the
                events do not fold (an event before its domain's `DomainDefined`, a defined name reused).
            DuplicateRequestError: a `…Requested` reuses a request id.
            DamagedExportError: the export's chain breaks, naming the position and the line.
        """
        if await self.log.head():
            raise InvalidRequestError("import needs an empty ledger")
        checker = transfer.ChainChecker(decode=scan)
        try:
            await self.log.import_rows(transfer.checked_chunks(lines(), checker, _IMPORT_CHUNK))
        except ValueError as e:
            if isinstance(e, UnicodeError):  # reading `lines()` failed: no export line to speak of
                raise
            # The fold refuses an event: the chain holds, but no ledger wrote it.
            raise InvalidRequestError(f"the export's events do not fold: {e}") from e
        except InvalidRequestError as e:
            refused = getattr(e, "refused", None)  # an event the store refuses, as it would an append
            if refused is None:
                raise
            text = (f"the export's events do not fold: {e} "
                    f"({type(refused.event).__name__} at position {refused.position})")
            if isinstance(e, DuplicateRequestError):
                raise DuplicateRequestError(e.request_id, text) from e
            raise InvalidRequestError(text) from e
        return checker.position

    # Maintenance.

    async def rebuild(self, *, progress: Callable[[int, int], None] | None = None) -> int:
        """Rebuild every projection from the log; return the position rebuilt to.

        `progress(position, head)` is called as the fold goes, possibly from
        another thread.  Writers wait until the rebuild commits.  Cancelled
        (Ctrl-C), it rolls back at its next statement: the projections stay
        as they were.
        """
        return await self.log.rebuild(progress)

    async def verify(self, *, from_position: int = 0) -> int:
        """Check the hash chain and that the projections equal a rebuild; return the head.

        With `from_position`, the chain is trusted up to that position and
        recomputed from there; the projections are still compared whole.

        Raises:
            ChainBrokenError: naming the first position that does not check out.
            InvalidRequestError: the position is not a whole number, or past the head.
            StorageError: another version's fold rules made the projections, and this
                ledger is open read-only, so it cannot rebuild them.
        """
        return (await self._verify(check_position(from_position), None)).position

    async def checkpoint(self, since: Checkpoint | None = None) -> Checkpoint:
        """Verify the ledger, only what changed after `since` if given; return a checkpoint of it.

        Without `since` this is `verify()`.  With it, the event at the
        checkpoint's position must still carry the checkpoint's hash (so the
        log was neither cut short nor rewritten up to there), the chain is
        recomputed from there, the domains with later events are refolded
        from their own streams, and every other domain's projection rows
        must still match the checkpoint's digest.  The cost is the new
        events, the streams they touch, and one scan of the projections.
        A checkpoint whose digests other fold rules made (`Checkpoint.rules`:
        an older vmledger's, whose rows a writer has rebuilt since) proves
        nothing of today's rows: past its event's hash, all is verified in
        full.  The checkpoint returned names the rules of this version.

        Raises:
            ChainBrokenError: naming the first position that does not check out.
            InvalidRequestError: `since` is not a checkpoint.
            StorageError: as `verify`.
        """
        if since is not None and not isinstance(since, Checkpoint):
            raise InvalidRequestError(f"since must be a Checkpoint, not {type(since).__name__}")
        return await self._verify(since.position if since else 0, since)

    async def _verify(self, start: int, since: Checkpoint | None) -> Checkpoint:
        async with self.log.snapshot():
            stored = await self._stored_rules()
            if stored != RULES:  # a reader's: a writer rebuilt them when it opened the ledger
                raise StorageError(
                    f"this ledger's projections were made by another vmledger's fold rules ({stored}; this one's are "
                    f"{RULES}), so they cannot be compared with its fold: open the ledger once for writing "
                    "(vmledger rebuild, say) to rebuild them, then verify")
            head = await self.log.head()
            if since is not None and since.position > head:
                raise ChainBrokenError(head + 1, (
                    f"the log ends at position {head}, before the checkpoint's position {since.position}: "
                    "events were removed"))
            if start > head:
                raise InvalidRequestError(f"position {start} is past the head of the log ({head})")
            if since is not None and since.position and await self._hash_at(since.position) != since.hash:
                raise ChainBrokenError(since.position, "the event differs from the checkpoint's: the log was rewritten")
            if since is not None and since.rules != RULES:  # its digests are of rows other rules made
                start, since = 0, None
            parts = self.log.part_rows  # where the fold runs in worker processes, the chain is checked in one too
            in_parts = parts is not None and self.log.projector.folds_in_parts(head)  # type: ignore[attr-defined]
            if since is None and not start and in_parts:
                head, domains = await self._verify_in_parts(parts, head)
            else:
                head = await self.log.verify_chain(from_position=start, decode=scan)
                domains = await (self._compare_all(head) if since is None else self._compare_since(since, head))
            return Checkpoint(position=head, hash=await self._hash_at(head), domains=domains, rules=RULES)

    async def _verify_in_parts(self, parts: Any, head: int) -> tuple[int, dict[str, str]]:
        """Check the whole chain and compare every domain's rows (`_compare_all`); return the head and the digests.

        For a fold in worker processes reading the log through `parts`: the
        chain is checked in one more once they end, while this process
        compares (so that the workers' memory and the chain's are not taken
        at once).  Its verdict comes first all the same: a broken chain is
        the error raised, whatever the fold or the comparison met (a damaged
        event explains both).
        """
        checking: asyncio.Future[int] | None = None

        def chain() -> Awaitable[int]:
            return chain_in_worker(parts, self.log.fetch_all, head, lambda: self.log.verify_chain(decode=scan))

        def folded() -> None:
            nonlocal checking
            checking = asyncio.ensure_future(chain())

        try:
            try:
                digests = await self._compare_all(head, folded)
            except Exception:
                await (checking or chain())  # a broken chain is raised ahead of what the fold or comparison met
                raise
        except BaseException:  # cancelled, even while the chain is checked after a failure: its worker stops too
            if checking is not None and not checking.done():
                checking.cancel()
                await asyncio.gather(checking, return_exceptions=True)
            raise
        return await cast("asyncio.Future[int]", checking), digests

    async def _hash_at(self, position: int) -> str:
        rows = await self.log.fetch_all("SELECT hash FROM events WHERE position = ?", (position,))
        return rows[0][0] if rows else ""

    async def _compare_all(self, head: int, folded: Callable[[], None] | None = None) -> dict[str, str]:
        """Compare every domain's stored rows, then the day counts, with a fold of the log up to `head`; return the domains' digests.

        `folded()`, if given, is called once the fold is done, before the comparison.
        """
        digests = {}
        async with folded_rows(self.log.read_rows(0, head), parts=self.log.part_rows, head=head,
                               projector=self.log.projector) as expected:
            if folded is not None:
                folded()
            async for uuid, want, have in paired_groups(expected, self.log.fetch_all):
                compare(want, have)
                digests[uuid] = digest(have)
            await compare_days(await expected(OUTCOME_DAYS_ROWS), self.log.fetch_all, head)
        return digests

    async def _compare_since(self, since: Checkpoint, head: int) -> dict[str, str]:
        """Refold the domains with events after `since`; check every other one against its digest; return the digests.

        The day counts, no domain's, are checked against the outcomes of every domain's history rows, checked so.
        """
        touched = {row[0] for row in await self.log.fetch_all(
            "SELECT DISTINCT stream FROM events WHERE position > ?", (since.position,))}
        empty: dict[str, list[tuple]] = {}
        digests = {}

        async def check(uuid: str, rows: dict[str, list[tuple]], digested: str) -> None:
            if uuid in touched:
                model = Model()
                model.feed_all(await self.log.read_stream(uuid))
                want = model.all_rows()
                compare(want, {table: rows.get(table, []) for table in want})
            elif since.domains.get(uuid) != digested:
                name = rows["domains"][0][1] if rows.get("domains") else uuid
                raise ChainBrokenError(since.position, (
                    f"projection rows of domain {name} changed since the checkpoint, with no event of its own"))

        # The day counts are no domain's: they must be those of the outcome rows, each domain's checked here.
        days: Counter[tuple] = Counter()
        async for uuid, rows in domain_groups(self.log.fetch_all):
            digests[uuid] = digest(rows)
            await check(uuid, rows, digests[uuid])
            count_outcome_days(days, (o for row in rows["history"] for o in stored_outcome_rows(row)))
        for uuid in sorted((set(since.domains) | touched) - set(digests)):
            await check(uuid, empty, digest(empty))
        await compare_days(outcome_day_rows(days), self.log.fetch_all, head)
        return digests


def default_principal() -> str:
    """Return who asks when a caller names nobody: the user name of this process (`unknown` if it has none).

    One rule for the CLI and the Python API alike.
    """
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return UNKNOWN_PRINCIPAL


def _who(principal: str | None) -> str:
    """Return `principal`, or the default one when it is None."""
    return default_principal() if principal is None else principal


def _meta(principal: str | None) -> Metadata:
    """Return the metadata of a lifecycle or observation append by `principal` (None: the default one).

    Raises:
        InvalidRequestError: the principal is not valid text.
    """
    return Metadata(principal=check_principal(_who(principal)))


def _outcomes_into(history: Model, recorded: list[RecordedEvent]) -> bool:
    """Add an outcome append's records to a request's history; tell whether it held outcomes only, and any."""
    if not recorded or not all(isinstance(rec.event, ChangeOutcome) for rec in recorded):
        return False
    for rec in recorded:
        history.feed_history(rec, False, "")  # an outcome needs neither the domain's power state nor its name
    return True


def _awaits(state: DomainState, request: SetRequest, scope: str) -> bool:
    """Tell whether `request` still awaits its outcome in `scope`.

    A stop or `observe` may have recorded it meanwhile: never record a second one.
    """
    pending = state.pending.get(request.request_id)
    return pending is not None and pending.awaits(scope)


def _utc(when: datetime | None) -> datetime | None:
    """Return `when` with UTC as its zone if it names none (None stays None)."""
    return when.replace(tzinfo=timezone.utc) if when is not None and when.tzinfo is None else when


def _event_filter(*, types: str | Iterable[str] | None = None, since: datetime | None = None,
                  until: datetime | None = None) -> EventFilter:
    """Return the filter of event types and a period that a caller names, checked.

    Raises:
        InvalidRequestError: a type is not an event type, or a bound is not a `datetime`.
    """
    for bound in (since, until):
        if bound is not None and not isinstance(bound, datetime):
            raise InvalidRequestError(f"since and until must be datetimes, not {shown(bound)}")
    # A naive time is UTC, as the log stores it; made aware here so that it compares with recorded times.
    since, until = _utc(since), _utc(until)
    if types is None:
        return EventFilter(since=since, until=until)
    # Any iterable of names (a list, a set, a dict's keys); not bytes, nor a mapping, whose keys would pass unseen.
    names = (types,) if isinstance(types, str) else None
    if names is None and isinstance(types, Iterable) and not isinstance(types, (bytes, bytearray, Mapping)):
        names = tuple(types)
    if names is None:
        raise InvalidRequestError(f"types must be an event type's name or a collection of them, not {shown(types)}")
    for name in names:
        event_type(name)
    return EventFilter(types=tuple(sorted(set(names))), since=since, until=until)


def _contended(name: str, conflict: ConcurrencyError) -> ConcurrencyError:
    """Return the error of a request that lost every race for its domain's stream."""
    return ConcurrencyError(conflict.stream, conflict.expected, conflict.actual, detail=(
        f"gave up after {_RETRIES} attempts: other writers changed domain {name!r} each time"))
