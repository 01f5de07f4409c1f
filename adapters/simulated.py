"""The simulated hypervisor: the embedded default, its state in a JSON file.

It models PV and HVM guests, a host memory pool (so a large balloon request is
satisfied only in part), lockable CD-ROM trays and one-shot injected faults.
The state lives in one JSON file so that separate processes (CLI calls) see the
same hypervisor; every operation runs under an exclusive `flock` on
`<state_path>.lock`, in a thread, and a change appends the domains it changed
to the file as a line (see `SimulatedHypervisor._load`), which is written
whole again once those lines outgrow the state.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
import uuid
from typing import IO, Any, Callable

from vmledger.adapters._threads import in_thread
from vmledger.eventstore.catalogue import (
    CATALOGUE,
    MEDIA_PREFIX,
    Capability,
    GuestType,
    Kind,
    Reason,
    check_value,
    lookup,
    shown,
    size_text,
)
from vmledger.eventstore.codec import dumps_plain
from vmledger.eventstore.errors import (
    HypervisorError,
    HypervisorRefusedError,
    InvalidRequestError,
    UnknownDomainError,
    UnknownPropertyError,
    VmledgerError,
)
from vmledger.eventstore.hypervisor import DomainSpec, LiveResult, Observation, Value

__all__ = ["SimulatedHypervisor"]

_DEFAULT_CAPABILITIES = {
    GuestType.PV: {"balloon": True, "memory_hotplug": False, "vcpu_hotplug": True},
    GuestType.HVM: {"balloon": False, "memory_hotplug": False, "vcpu_hotplug": False},
}
_UNSUPPORTED = {
    "memory": "guest has neither a balloon driver nor memory hotplug",
    "vcpus": "guest does not support vCPU hotplug",
}
_FAULT_KINDS = ("error", "timeout", "late")
#: The length of the token a save writes into the lock file (`uuid.uuid4().hex`).
_TOKEN_BYTES = 32
#: The bytes of saves a state file may hold beyond twice its state before a save writes it whole (`_save`).
_SLACK = 256 << 10
_JSON = json.JSONDecoder()

State = dict[str, Any]


class _Late:
    """A late fault was consumed: the change is applied, but only after `hang_seconds`."""


class _Hang:
    """A timeout fault was consumed: the caller must hang, then fail."""

    def __init__(self, current: Value | None) -> None:
        self.current = current


def _check_bounds(name: str, config: dict[str, Any], prop: str, value: Value) -> None:
    """Raise HypervisorRefusedError (`out_of_range`) if a number breaks its bounds in `config` (`memory` above
    `max_memory`, say)."""
    entry = lookup(prop)
    if isinstance(value, int) and not (
            value >= entry.minimum
            and (not entry.upper or entry.upper not in config or value <= config[entry.upper])
            and (not entry.lower or entry.lower not in config or value >= config[entry.lower])):
        shown_value = size_text(value) if entry.type == "bytes" else value
        raise HypervisorRefusedError(f"{prop} {shown_value} is outside its bounds in the config of {name!r}",
                                     Reason.OUT_OF_RANGE.value)


class SimulatedHypervisor:
    """Simulate a hypervisor whose state is shared through a JSON file.

    `host_free` is the free host memory (bytes) used only when the state file
    does not exist yet.  `hang_seconds` is how long an injected timeout hangs.
    """

    def __init__(self, state_path: str | os.PathLike, *, host_free: int = 64 * 2**30) -> None:
        self.state_path = os.fspath(state_path)
        self.lock_path = self.state_path + ".lock"
        self.hang_seconds = 3600.0
        self._initial_free = host_free
        self._queue: list[tuple[Callable[[State], Any], bool, tuple[str, ...] | None, asyncio.Future[Any]]] = []
        self._worker: asyncio.Task[None] | None = None
        #: (stamp, state, room) of the file as this adapter last read or wrote it: see `_stamp`, `_save`.
        self._cache: tuple[tuple, State, int] | None = None

    @classmethod
    def for_database(
        cls, db_path: str | os.PathLike, *, host_free: int = 64 * 2**30
    ) -> "SimulatedHypervisor":
        """Return the simulator whose state lives beside the database, in `<db_path>.sim.json`."""
        return cls(os.fspath(db_path) + ".sim.json", host_free=host_free)

    async def __aenter__(self) -> "SimulatedHypervisor":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the port --------------------------------------------------------------

    async def define(self, spec: DomainSpec) -> None:
        """Define a domain with its persistent config.

        Raises:
            HypervisorError: a domain of that name is already defined.
            InvalidRequestError: unknown guest type or capability name.
        """
        guest = _guest_type(spec.guest_type)
        caps = dict(_DEFAULT_CAPABILITIES[guest])
        for cap, on in spec.capabilities:
            if on is not None:
                caps[_capability(cap)] = bool(on)

        def change(state: State) -> None:
            if spec.name in state["domains"]:
                # Told with where the simulator keeps it: a state file left beside a ledger made afresh holds
                # domains that ledger never recorded.
                raise HypervisorError(f"domain {spec.name!r} is already defined on the simulated host, whose state "
                                      f"is in {self.state_path} (delete that file to start the simulator afresh)")
            state["domains"][spec.name] = {
                "uuid": spec.uuid,
                "guest_type": guest.value,
                "running": False,
                "persistent": dict(spec.config),
                "live": {},
                "capabilities": caps,
                "locked_trays": [],
                "faults": {},
            }

        await self._run(change, domains=(spec.name,))

    async def undefine(self, name: str) -> None:
        """Remove a stopped domain's definition.

        Raises:
            HypervisorError: the domain is unknown or running.
        """

        def change(state: State) -> None:
            if _domain(state, name)["running"]:
                raise HypervisorError(f"domain {name!r} is running")
            del state["domains"][name]

        await self._run(change, domains=(name,))

    async def start(self, name: str) -> tuple:
        """Boot the domain from its persistent config; return its live config as pairs.

        Raises:
            HypervisorError: the domain is unknown or running, or the host lacks the memory.
        """

        def change(state: State) -> tuple:
            dom = _domain(state, name)
            if dom["running"]:
                raise HypervisorError(f"domain {name!r} is already running")
            memory = dom["persistent"].get("memory", 0)
            if memory > state["host_free"]:
                raise HypervisorError("not enough free host memory")
            state["host_free"] -= memory
            dom.update(running=True, live=dict(dom["persistent"]), locked_trays=[])
            return tuple(sorted(dom["live"].items()))

        return await self._run(change, domains=(name,))

    async def stop(self, name: str) -> None:
        """Shut the domain off and return its memory to the host pool.

        Raises:
            HypervisorError: the domain is unknown or not running.
        """

        def change(state: State) -> None:
            dom = _running(state, name)
            state["host_free"] += dom["live"].get("memory", 0)
            dom.update(running=False, live={}, locked_trays=[])

        await self._run(change, domains=(name,))

    async def apply_persistent(self, name: str, prop: str, value: Value) -> None:
        """Write one value into the persistent config the domain boots with next.

        Raises:
            HypervisorRefusedError: the value breaks its bounds in the config the domain holds (a maximum
                changed behind the ledger's back), as libvirt refuses such a config (`out_of_range`).
            HypervisorError: the domain is unknown.
        """

        def change(state: State) -> None:
            config = _domain(state, name)["persistent"]
            _check_bounds(name, config, prop, value)
            config[prop] = value

        await self._run(change, domains=(name,))

    async def apply_live(self, name: str, prop: str, value: Value) -> LiveResult:
        """Ask the running domain for a live change and report what really happened.

        An injected timeout is consumed (and saved) before hanging, and the
        change is not applied, whether the caller cancels or not.

        Raises:
            HypervisorError: the domain is unknown.
        """
        result = await self._run(lambda state: _apply_live(state, name, prop, value), domains=(name,))
        if isinstance(result, _Late):
            # Like a blocking hypervisor call: the caller's timeout cannot stop the thread.
            return await in_thread(self._answer_late, name, prop, value)
        if isinstance(result, _Hang):
            await asyncio.sleep(self.hang_seconds)
            return LiveResult.failed(result.current, Reason.TIMEOUT, "hypervisor did not answer")
        return result

    def _answer_late(self, name: str, prop: str, value: Value) -> LiveResult | _Hang:
        time.sleep(self.hang_seconds)
        return self._transact(lambda state: _apply_live(state, name, prop, value), (name,))

    async def observe(self, name: str) -> Observation:
        """Report the domain's live state, capabilities, tray locks and persistent config.

        Raises:
            HypervisorError: the domain is unknown.
        """

        def read(state: State) -> Observation:
            dom = _domain(state, name)
            return Observation(
                running=dom["running"],
                live=tuple(sorted(dom["live"].items())),
                capabilities=tuple(sorted(dom["capabilities"].items())),
                locked_trays=frozenset(dom["locked_trays"]),
                persistent=tuple(sorted(dom["persistent"].items())),
            )

        return await self._run(read, write=False)

    async def aclose(self) -> None:
        """Release the adapter's resources (it holds none between calls)."""

    async def restore(self, domains: "list[tuple[DomainSpec, Observation]]") -> bool:
        """Start a simulator whose state file is missing from what a ledger recorded; return whether it did.

        Each domain is defined with its spec's guest type and its
        observation's persistent config, running with its live config if
        the observation says so, with its capabilities (an unknown one takes
        the guest type's default) and locked trays.  The host's free memory
        is the default pool less what the running domains hold.  A state
        file that exists is left alone.

        Raises:
            HypervisorError: the state file cannot be written.
        """
        if not domains or os.path.exists(self.state_path):
            return False

        def change(state: State) -> bool:
            if state["domains"]:
                return False  # another process made the state meanwhile
            for spec, seen in domains:
                guest = _guest_type(spec.guest_type)
                caps = dict(_DEFAULT_CAPABILITIES[guest])
                caps.update({k: bool(v) for k, v in seen.capabilities if v is not None and k in caps})
                live = dict(seen.live) if seen.running else {}
                state["domains"][spec.name] = {
                    "uuid": spec.uuid, "guest_type": guest.value, "running": seen.running,
                    "persistent": dict(seen.persistent), "live": live, "capabilities": caps,
                    "locked_trays": sorted(seen.locked_trays) if seen.running else [], "faults": {},
                }
                state["host_free"] = max(0, state["host_free"] - live.get("memory", 0))
            return True

        return await self._run(change)

    # -- perturbations behind the ledger's back ---------------------------------

    async def balloon(self, name: str, size: int) -> None:
        """Set the running domain's live memory out of band, taking it from the host pool.

        Raises:
            UnknownDomainError: the simulator has no such domain.
            HypervisorError: not running, size out of range, or the host lacks the memory.
        """

        def change(state: State) -> None:
            _named(state, name)
            live = _running(state, name)["live"]
            if size <= 0 or size > live.get("max_memory", 0):
                raise HypervisorError(
                    f"balloon size {size_text(size)} is outside 1..max_memory ({size_text(live.get('max_memory', 0))})")
            delta = size - live.get("memory", 0)
            if delta > state["host_free"]:
                raise HypervisorError("not enough free host memory")
            state["host_free"] -= delta
            live["memory"] = size

        await self._run(change, domains=(name,))

    async def configure(self, name: str, prop: str, value: Value) -> None:
        """Change one value of the config the domain boots with next out of band, as `virsh setmem --config` does.

        Raises:
            InvalidRequestError: the value does not fit the property.
            UnknownDomainError: the simulator has no such domain.
            UnknownPropertyError: the domain's config has no such property.
            HypervisorError: the value breaks its bounds in that config.
        """
        entry = lookup(prop)
        check_value(entry, value)

        def change(state: State) -> None:
            config = _named(state, name)["persistent"]
            if prop not in config:
                raise UnknownPropertyError(f"domain {name!r} has no {shown(prop)} in its config")
            _check_bounds(name, config, prop, value)
            config[prop] = value

        await self._run(change, domains=(name,))

    async def set_host_free(self, size: int) -> None:
        """Set the free host memory pool in bytes.

        Raises:
            InvalidRequestError: size is not a non-negative whole number.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidRequestError(
                f"host free memory must be a whole number >= 0, not {size!r}"
            )

        def change(state: State) -> None:
            state["host_free"] = size

        await self._run(change, domains=())

    async def host_free(self) -> int:
        """Return the free host memory pool in bytes."""
        return await self._run(lambda state: state["host_free"], write=False)

    async def ping(self) -> None:
        """Return once the state file can be read (a readiness probe).

        Raises:
            HypervisorError: the state file cannot be read, or is damaged.
        """
        await self._run(lambda state: None, write=False)

    async def lock_tray(self, name: str, device: str) -> None:
        """Lock the CD-ROM tray of `device`, as a guest does.

        Raises:
            UnknownDomainError, UnknownPropertyError: no such domain, or it has no such device.
            HypervisorError: the domain is not running.
        """
        await self._run(lambda state: _set_tray(state, name, device, locked=True), domains=(name,))

    async def unlock_tray(self, name: str, device: str) -> None:
        """Unlock the CD-ROM tray of `device`.

        Raises:
            UnknownDomainError, UnknownPropertyError: no such domain, or it has no such device.
            HypervisorError: the domain is not running.
        """
        await self._run(lambda state: _set_tray(state, name, device, locked=False), domains=(name,))

    async def set_capability(self, name: str, cap: str, on: bool) -> None:
        """Turn a guest capability on or off.

        Raises:
            InvalidRequestError: `cap` is not a capability name.
            UnknownDomainError: the simulator has no such domain.
        """
        key = _capability(cap)

        def change(state: State) -> None:
            _named(state, name)["capabilities"][key] = bool(on)

        await self._run(change, domains=(name,))

    async def inject_fault(self, name: str, prop: str, kind: str) -> None:
        """Make the next live change of `prop` fail with an `error`, hang until a `timeout`, or answer `late`.

        A `late` change waits `hang_seconds` in a thread that the caller's
        timeout cannot stop, as a blocking hypervisor call does, then applies
        the change and answers: an answer nobody may be waiting for.

        Raises:
            InvalidRequestError: `kind` is not `error`, `timeout` or `late`.
            UnknownPropertyError: `prop` is no property of the catalogue.
            UnknownDomainError: the simulator has no such domain.
        """
        lookup(prop)
        if kind not in _FAULT_KINDS:
            kinds = ", ".join(_FAULT_KINDS)
            raise InvalidRequestError(f"fault kind must be one of {kinds}, not {kind!r}")

        def change(state: State) -> None:
            _named(state, name)["faults"][prop] = kind

        await self._run(change, domains=(name,))

    # -- the state file ----------------------------------------------------------

    async def _run(self, fn: Callable[[State], Any], *, write: bool = True,
                   domains: tuple[str, ...] | None = None) -> Any:
        """Run `fn` on the state under the file lock; calls that arrive together share one load and save.

        `domains` names the domains a write may change (and the host's free
        memory, which any may): None for any.
        """
        future = asyncio.get_running_loop().create_future()
        self._queue.append((fn, write, domains, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                answers = await in_thread(self._transact_all, [call[:3] for call in batch])
            except BaseException as e:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(e if isinstance(e, Exception) else HypervisorError("interrupted"))
                if not isinstance(e, Exception):
                    raise
                continue
            for (*_, future), (ok, value) in zip(batch, answers):
                if not future.done():
                    future.set_result(value) if ok else future.set_exception(value)

    def _transact(self, fn: Callable[[State], Any], domains: tuple[str, ...]) -> Any:
        (ok, value), = self._transact_all([(fn, True, domains)])
        if not ok:
            raise value
        return value

    def _transact_all(self, calls: list[tuple[Callable[[State], Any], bool, tuple[str, ...] | None]]
                      ) -> list[tuple[bool, Any]]:
        """Run each call on the state under the lock, and save what they changed.

        Raises:
            HypervisorError: the state file cannot be read or written (a full disk, say).
        """
        # Every change checks before it mutates, so one that raises leaves the
        # state as it found it, and its neighbours' changes are saved alone.
        # The lock file, not the state file, is locked: os.replace swaps the latter.
        # The state parsed last time is used again while the file is as this
        # adapter left it; it is dropped whenever a call or a save fails.
        try:
            # Read and written in place (not opened for appending, where Linux's pwrite ignores the offset).
            with open(os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666), "rb+", buffering=0) as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                stamp, (cached, self._cache) = self._stamp(lock), (self._cache, None)
                state, room = cached[1:] if cached is not None and cached[0] == stamp else self._load()
                answers: list[tuple[bool, Any]] = []
                wrote = False
                changed: set[str] | None = set()  # the domains the calls changed; None for any
                for fn, write, domains in calls:
                    try:
                        answers.append((True, fn(state)))
                    except VmledgerError as e:
                        answers.append((False, e))
                        continue
                    except (LookupError, TypeError, AttributeError) as e:
                        # JSON, but not of the state's shape: every call of the batch fails, nothing is saved.
                        raise HypervisorError(
                            f"simulator state {self.state_path} is damaged: {type(e).__name__}: {e}") from e
                    if write:
                        wrote, changed = True, None if domains is None or changed is None else changed.union(domains)
                if wrote:
                    stamp, room = self._save(state, lock, changed, room)
                self._cache = (stamp, state, room)
                return answers
        except OSError as e:
            raise HypervisorError(
                f"the simulator cannot keep its state in {self.state_path}: {e.strerror or e}") from e

    def _load(self) -> tuple[State, int]:
        """Return the state the file holds, and the bytes of changes that may still be appended to it (see `_save`).

        The file is one JSON document, the state, written whole, then one
        line per save since, each the host's free memory and the domains that
        save changed (null for one undefined).  A last line cut off as it was
        written (no newline ends it) is no save: it is left out, and the next
        save writes the file whole.
        """
        try:
            with open(self.state_path, "rb") as f:
                text = f.read().decode("utf-8")
        except FileNotFoundError:
            return {"host_free": self._initial_free, "domains": {}}, -1
        except ValueError as e:
            raise HypervisorError(f"simulator state {self.state_path} is damaged: {e}") from e
        try:
            state, end = _JSON.raw_decode(text, len(text) - len(text.lstrip()))
            *saves, tail = text[end:].split("\n")
            for line in saves:
                if line.strip():
                    _overlay(state, json.loads(line))
        except (ValueError, LookupError, TypeError, AttributeError) as e:
            raise HypervisorError(
                f"simulator state {self.state_path} is damaged: {type(e).__name__}: {e}") from e
        # The whole file stays under twice the state and the slack: appending stays cheaper than loading.
        return state, -1 if tail.strip() or not saves else 2 * end + _SLACK - len(text)

    def _stamp(self, lock: IO[bytes]) -> tuple:
        """Return what tells one version of the state file from another (called under the lock).

        That is the token the last save wrote into the lock file, and the
        file's inode, modification time and size: the token tells saves
        apart where the file system reuses an inode within one tick of its
        clock, and the file's own marks catch an edit by hand.
        """
        token = os.pread(lock.fileno(), _TOKEN_BYTES, 0).decode("ascii", "replace")
        try:
            st = os.stat(self.state_path)
        except FileNotFoundError:
            return token, None
        return token, st.st_ino, st.st_mtime_ns, st.st_size

    def _save(self, state: State, lock: IO[bytes], changed: set[str] | None, room: int) -> tuple[tuple, int]:
        """Save what calls changed in `state`; return the file's new stamp and room (called under the lock).

        `changed` names the domains they changed (None for any).  They are
        appended to the file as one line while `room` (bytes, from `_load`
        or the last save) allows; else the file is replaced with the whole
        state.  So a save costs what it changed, not what the host holds.
        """
        # A new token first: whatever happens next, no reader takes its cached state for the file.
        # Written over the old one, of the same length: truncating a file that holds data makes
        # ext4 write it out first (auto_da_alloc), which cost as much as the rest of the save.
        os.pwrite(lock.fileno(), uuid.uuid4().hex.encode("ascii"), 0)
        if changed is not None:
            domains = state["domains"]
            save = {"host_free": state["host_free"], "domains": {n: domains.get(n) for n in sorted(changed)}}
            line = (dumps_plain(save) + "\n").encode("utf-8")
            if len(line) <= room:
                # Not fsynced, as a whole save is not: a line cut off in a crash lacks its newline, and
                # is no save (see `_load`).
                fd = os.open(self.state_path, os.O_WRONLY | os.O_APPEND)
                try:
                    view = memoryview(line)
                    while view:
                        view = view[os.write(fd, view):]
                finally:
                    os.close(fd)
                return self._stamp(lock), room - len(line)
        directory, name = os.path.split(os.path.abspath(self.state_path))
        # One name does, under the lock: a save that died leaves it behind, and the next whole save writes
        # it anew.  (mkstemp's random name cost a fifth of the save.)
        tmp = os.path.join(directory, f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        text = dumps_plain(state) + "\n"
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                # One compact string (orjson's where installed): json.dump encodes chunk by chunk.
                f.write(text)
            # Atomic but not fsynced: a simulated host that forgets its last
            # change in a power cut is realistic enough, and the ledger's own
            # durability never rests on it.
            os.replace(tmp, self.state_path)
        except BaseException:
            os.unlink(tmp)
            raise
        return self._stamp(lock), len(text) + _SLACK


def _overlay(state: State, save: dict[str, Any]) -> None:
    """Apply one save's line of the state file (see `SimulatedHypervisor._load`) to the state."""
    domains = state["domains"]
    for name, domain in save["domains"].items():
        if domain is None:
            domains.pop(name, None)
        else:
            domains[name] = domain
    state["host_free"] = save["host_free"]


def _guest_type(text: str) -> GuestType:
    try:
        return GuestType(text)
    except ValueError as e:
        raise InvalidRequestError(f"unknown guest type {text!r}") from e


def _capability(text: str) -> str:
    try:
        return Capability(text).value
    except ValueError as e:
        known = ", ".join(c.value for c in Capability)
        raise InvalidRequestError(f"unknown capability {text!r} (known: {known})") from e


def _domain(state: State, name: str) -> dict[str, Any]:
    dom = state["domains"].get(name)
    if dom is None:
        raise HypervisorError(f"domain {name!r} is not defined")
    return dom


def _named(state: State, name: str) -> dict[str, Any]:
    """Return the domain a perturbation names: naming one the simulator lacks is the caller's mistake."""
    dom = state["domains"].get(name)
    if dom is None:
        raise UnknownDomainError(f"unknown domain {shown(name)}")
    return dom


def _running(state: State, name: str) -> dict[str, Any]:
    dom = _domain(state, name)
    if not dom["running"]:
        raise HypervisorError(f"domain {name!r} is not running")
    return dom


def _set_tray(state: State, name: str, device: str, *, locked: bool) -> None:
    _named(state, name)
    dom = _running(state, name)
    if MEDIA_PREFIX + device not in dom["live"]:
        raise UnknownPropertyError(f"domain {name!r} has no removable device {shown(device)}")
    trays = set(dom["locked_trays"]) - {device}
    dom["locked_trays"] = sorted(trays | {device} if locked else trays)


def _apply_live(state: State, name: str, prop: str, value: Value) -> LiveResult | _Hang:
    dom = _domain(state, name)
    if not dom["running"]:
        return LiveResult.refused(None, Reason.DOMAIN_NOT_RUNNING, "domain is not running")
    live = dom["live"]
    current = live.get(prop)
    fault = dom["faults"].pop(prop, None)
    if fault == "error":
        return LiveResult.failed(current, Reason.HYPERVISOR_ERROR, "injected hypervisor error")
    if fault == "timeout":
        return _Hang(current)
    if fault == "late":
        return _Late()
    if prop.startswith(MEDIA_PREFIX):
        device = prop[len(MEDIA_PREFIX) :]
        if prop not in live:
            message = f"no removable device {device}"
            return LiveResult.refused(None, Reason.NOT_REMOVABLE, message)
        if device in dom["locked_trays"]:
            message = f"the guest has locked the tray of {device}"
            return LiveResult.refused(current, Reason.TRAY_LOCKED, message)
        live[prop] = value
        return LiveResult.applied(value)
    entry = CATALOGUE.get(prop)
    if entry is None or entry.kind is Kind.RO_RUN or prop == "media":
        return LiveResult.refused(current, Reason.READ_ONLY, f"{prop} is read-only")
    if entry.kind is Kind.RO_INS:
        message = f"cannot change {prop} on a running domain"
        return LiveResult.refused(current, Reason.REQUIRES_RESTART, message)
    caps = dom["capabilities"]
    if entry.live_needs and not any(caps.get(cap.value) for cap in entry.live_needs):
        message = _UNSUPPORTED.get(prop, f"guest cannot change {prop} live")
        return LiveResult.refused(current, Reason.GUEST_UNSUPPORTED, message)
    upper = live.get(entry.upper, 0)
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not whole or not entry.minimum <= value <= upper:
        bound = size_text(upper) if entry.type == "bytes" else upper
        message = f"{prop} must be between {entry.minimum} and {entry.upper} ({bound})"
        return LiveResult.refused(current, Reason.OUT_OF_RANGE, message)
    if prop != "memory":
        live[prop] = value
        return LiveResult.applied(value)
    delta = value - current
    free = state["host_free"]
    if delta > free:
        live[prop] = current + free
        state["host_free"] = 0
        return LiveResult.partial(current + free, f"host had only {size_text(free)} free")
    state["host_free"] = free - delta
    live[prop] = value
    return LiveResult.applied(value)
