"""The libvirt hypervisor: vmledger in front of a real libvirt connection.

It drives any libvirt driver through libvirt-python (`pip install
'vmledger[libvirt]'`), which is imported only when an adapter is made, so this
module imports without it.  Every blocking libvirt call runs in a thread
(a daemon thread: see `_threads`) under a timeout, on one connection opened on first use
and opened again once it died (libvirtd restarted); libvirt connections are
thread-safe.

Sizes are bytes in vmledger and KiB in libvirt; a size that is not a whole
number of KiB is refused before libvirt is asked.  Live changes are read back
from the domain, so what is reported is what the domain has, not what libvirt
accepted.  libvirt errors keep their text, their code name and number in the
reported message, e.g. `Requested operation is not valid: domain is not
running (VIR_ERR_OPERATION_INVALID, code 55)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import uuid as uuidlib
import xml.etree.ElementTree as ET
from typing import Any, Callable, TypeVar

from vmledger.adapters._threads import in_thread
from vmledger.eventstore.catalogue import CATALOGUE, MEDIA_PREFIX, Capability, GuestType, Reason, size_text
from vmledger.eventstore.errors import HypervisorError, HypervisorRefusedError
from vmledger.eventstore.hypervisor import DomainSpec, LiveResult, Observation, Value

__all__ = ["LibvirtHypervisor", "Notifications", "INSTALL_HINT"]

INSTALL_HINT = (
    "install it with: apt-get install libvirt-dev pkg-config && pip install 'vmledger[libvirt]'"
)

KIB = 1024
_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 10**3, "k": 2**10, "kib": 2**10,
    "mb": 10**6, "m": 2**20, "mib": 2**20,
    "gb": 10**9, "g": 2**30, "gib": 2**30,
    "tb": 10**12, "t": 2**40, "tib": 2**40,
    "pb": 10**15, "p": 2**50, "pib": 2**50,
    "eb": 10**18, "e": 2**60, "eib": 2**60,
}
#: Lifecycle event numbers (VIR_DOMAIN_EVENT_*) as the words a notification carries.
_LIFECYCLE = ("defined", "undefined", "started", "suspended", "resumed", "stopped",
              "shutdown", "pmsuspended", "crashed")
#: A live change of memory or vCPUs may land in steps (a balloon inflates, a vCPU
#: unplug waits for the guest): read back until it arrives or this many seconds pass.
_SETTLE_STEP = 0.1
_OS_TYPES = {"hvm": GuestType.HVM.value, "xen": GuestType.PV.value, "linux": GuestType.PV.value}

T = TypeVar("T")

_setup_lock = threading.Lock()
_setup_done = False
_events_started = False


def _import_libvirt() -> Any:
    """Import libvirt-python once, silencing its default stderr error printer.

    Raises:
        HypervisorError: libvirt-python is not installed.
    """
    global _setup_done
    try:
        import libvirt
    except ImportError as e:
        raise HypervisorError(f"the libvirt hypervisor needs libvirt-python; {INSTALL_HINT}") from e
    with _setup_lock:
        if not _setup_done:
            # libvirt prints every error to stderr besides raising it; the adapter
            # reports each error once, in the event or the exception.
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _setup_done = True
    return libvirt


def _import_libvirt_qemu() -> Any:
    """Return libvirt-python's QEMU module (monitor pass-through), or None where it is missing."""
    try:
        import libvirt_qemu
    except ImportError:
        return None
    return libvirt_qemu


def _ensure_event_loop(libvirt: Any) -> None:
    """Make sure libvirt has an event loop, so domain events and keepalives flow.

    An application that registered libvirtaio keeps it; otherwise libvirt's
    default loop runs in a daemon thread, once per process.  libvirt allows one
    event loop per process for good, so one bound to an asyncio loop would break
    the next `asyncio.run` (every CLI command, every test).
    """
    global _events_started
    with _setup_lock:
        if _events_started:
            return
        _events_started = True
        try:
            import libvirtaio
        except ImportError:
            libvirtaio = None
        if libvirtaio is not None and libvirtaio.getCurrentImpl() is not None:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while libvirt.virEventRunDefaultImpl() == 0:
                pass

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()


class LibvirtHypervisor:
    """Drive domains through libvirt at `uri`, e.g. `qemu:///system` or `test:///default`.

    `timeout` bounds every libvirt call in seconds.  `settle` is how long a live
    memory or vCPU change is read back while it lands.  `reconnect` is how
    many seconds apart a subscription tries to reopen a connection that
    closed (libvirtd restarted).  `domain_type` is the
    `<domain type>` of domains that `define` creates (default: `test` for the
    test driver, `xen` for Xen, else `kvm`).  With `events` (the default), an
    event loop is registered before the connection opens, so `notifications`
    works on every driver.

    Raises:
        HypervisorError: libvirt-python is not installed.
    """

    def __init__(
        self,
        uri: str,
        *,
        timeout: float = 10.0,
        settle: float = 2.0,
        reconnect: float = 0.5,
        domain_type: str | None = None,
        events: bool = True,
    ) -> None:
        self.uri = uri
        self.timeout = timeout
        self.settle = settle
        self.reconnect = reconnect
        self.domain_type = domain_type or _default_domain_type(uri)
        self._events = events
        self._libvirt = _import_libvirt()
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        self._callbacks: set[int] = set()
        #: One function per subscription, called with a connection that closed.
        self._on_closed: set[Callable[[Any], None]] = set()
        self._qemu = _import_libvirt_qemu() if self.uri.split(":", 1)[0].split("+", 1)[0] == "qemu" else None

    async def __aenter__(self) -> "LibvirtHypervisor":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing ----------------------------------------------------------------

    def _connect(self) -> Any:
        """Return the connection, opening a new one when there is none or the old one died (libvirtd restarted)."""
        with self._conn_lock:
            if self._conn is not None and not self._conn.isAlive():
                dead, self._conn = self._conn, None
                self._callbacks.clear()  # they died with their connection
                with contextlib.suppress(self._libvirt.libvirtError):
                    dead.close()
            if self._conn is None:
                if self._events:
                    _ensure_event_loop(self._libvirt)
                try:
                    conn = self._libvirt.open(self.uri)
                except self._libvirt.libvirtError as e:
                    raise HypervisorError(f"cannot open libvirt at {self.uri}: {self._describe(e)}") from e
                if self._events:
                    conn.registerCloseCallback(lambda c, _reason, _o: self._on_close(conn), None)
                self._conn = conn
            return self._conn

    def _on_close(self, conn: Any) -> None:
        """Tell the subscriptions on `conn` that it closed (runs on libvirt's event thread)."""
        for closed in list(self._on_closed):
            closed(conn)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking libvirt call in a thread under the timeout; libvirt errors pass through.

        Raises:
            TimeoutError: libvirt did not answer within `timeout`.
        """
        async with asyncio.timeout(self.timeout):
            return await in_thread(fn, *args)

    async def _lifecycle(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a call whose failure is the caller's error: libvirt errors become `HypervisorError`."""
        try:
            return await self._run(fn, *args)
        except self._libvirt.libvirtError as e:
            raise HypervisorError(self._describe(e)) from e
        except TimeoutError as e:
            raise HypervisorError(f"libvirt at {self.uri} did not answer within {self.timeout:g}s") from e

    def _domain(self, name: str) -> Any:
        conn = self._connect()
        try:
            return conn.lookupByName(name)
        except self._libvirt.libvirtError as e:
            if e.get_error_code() != self._libvirt.VIR_ERR_NO_DOMAIN:
                raise
            raise HypervisorError(f"libvirt at {self.uri} has no domain {name!r}: {self._describe(e)}") from e

    def _xml(self, name: str, *, inactive: bool = False) -> str:
        flags = self._libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return self._domain(name).XMLDesc(flags)

    def _describe(self, e: Any) -> str:
        """Return libvirt's message with its error code name and number."""
        code = e.get_error_code()
        message = e.get_error_message() or str(e)
        return f"{message} ({_error_name(self._libvirt, code)}, code {code})"

    async def connection(self) -> Any:
        """Return the libvirt connection (a `libvirt.virConnect`), opening it if needed.

        For callers that need libvirt itself, such as tests that change a domain
        behind the ledger's back on the test driver's in-memory state.

        Raises:
            HypervisorError: the connection cannot be opened.
        """
        return await self._lifecycle(self._connect)

    # -- the port ----------------------------------------------------------------

    async def define(self, spec: DomainSpec) -> None:
        """Define a domain from `spec` with a minimal domain XML.

        Raises:
            HypervisorError: libvirt refused the definition, or the spec does not fit
                libvirt (a size not in whole KiB, a PV guest on KVM).
        """
        xml = _domain_xml(spec, self.domain_type)
        await self._lifecycle(lambda: self._connect().defineXML(xml))

    async def undefine(self, name: str) -> None:
        """Remove a stopped domain's definition.

        Raises:
            HypervisorError: the domain is unknown or libvirt refused.
        """
        await self._lifecycle(lambda: self._domain(name).undefine())

    async def start(self, name: str) -> tuple:
        """Boot the domain and return its live config as libvirt reports it.

        Raises:
            HypervisorError: the domain is unknown or libvirt would not start it.
        """

        def work() -> tuple:
            dom = self._domain(name)
            dom.create()
            return _parse_config(dom.XMLDesc(0))

        return await self._lifecycle(work)

    async def stop(self, name: str) -> None:
        """Shut the domain off at once (`virDomainDestroy`).

        Raises:
            HypervisorError: the domain is unknown or not running.
        """
        await self._lifecycle(lambda: self._domain(name).destroy())

    async def apply_persistent(self, name: str, prop: str, value: Value) -> None:
        """Write one value into libvirt's inactive config and check that libvirt stored it.

        Memory and vCPUs use `VIR_DOMAIN_AFFECT_CONFIG` (with `VIR_DOMAIN_MEM_MAXIMUM`
        or `VIR_DOMAIN_VCPU_MAXIMUM` for the maxima).  Media use `updateDeviceFlags`,
        or a redefinition of the inactive XML where the driver lacks that call; NUMA
        nodes are always a redefinition, splitting memory and vCPUs evenly.

        Raises:
            HypervisorRefusedError: the value is out of range (`_classify`), or not in whole KiB.
            HypervisorError: libvirt refused otherwise, or stored another value than asked.
        """
        lv = self._libvirt
        config = lv.VIR_DOMAIN_AFFECT_CONFIG

        def work() -> None:
            dom = self._domain(name)
            if prop == "memory":
                dom.setMemoryFlags(_kib(value), config)
            elif prop == "max_memory":
                dom.setMemoryFlags(_kib(value), config | lv.VIR_DOMAIN_MEM_MAXIMUM)
            elif prop == "vcpus":
                dom.setVcpusFlags(_count(value), config)
            elif prop == "max_vcpus":
                dom.setVcpusFlags(_count(value), config | lv.VIR_DOMAIN_VCPU_MAXIMUM)
            elif prop == "numa_nodes":
                self._redefine(dom, lambda root: _set_numa(root, _count(value)))
            elif prop.startswith(MEDIA_PREFIX):
                device = prop[len(MEDIA_PREFIX):]
                root = ET.fromstring(dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE))
                disk_xml = _media_xml(_cdrom(root, device, name), str(value))
                try:
                    dom.updateDeviceFlags(disk_xml, config)
                except lv.libvirtError as e:
                    if e.get_error_code() != lv.VIR_ERR_NO_SUPPORT:
                        raise
                    # The driver (e.g. the test driver) cannot update a device: edit
                    # the inactive XML instead, as `virsh edit` would.
                    self._redefine(dom, lambda r: _replace_media(_cdrom(r, device, name), str(value)))
            else:
                raise HypervisorError(f"{prop} is not part of a libvirt domain's config")
            stored = dict(_parse_config(dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE))).get(prop)
            if stored != value:
                raise HypervisorError(f"libvirt stored {prop} = {stored!r} instead of {value!r}")

        try:
            await self._lifecycle(work)
        except HypervisorError as e:
            cause = e.__cause__
            out_of_range = (Reason.OUT_OF_RANGE, True)
            if isinstance(cause, lv.libvirtError) and _classify(lv, cause, maximum=False) == out_of_range:
                raise HypervisorRefusedError(str(e), Reason.OUT_OF_RANGE.value) from cause
            raise

    def _redefine(self, dom: Any, edit: Callable[[ET.Element], None]) -> None:
        """Edit the domain's inactive XML (secrets included, so none is lost) and define it again."""
        lv = self._libvirt
        root = ET.fromstring(dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE | lv.VIR_DOMAIN_XML_SECURE))
        edit(root)
        self._connect().defineXML(ET.tostring(root, encoding="unicode"))

    async def apply_live(self, name: str, prop: str, value: Value) -> LiveResult:
        """Ask the running domain for a live change, then read back what it really has.

        Never raises for libvirt's refusals or faults: they become refused or
        failed results whose reason mirrors libvirt's error (see `docs/libvirt.md`).
        """
        lv = self._libvirt
        live = lv.VIR_DOMAIN_AFFECT_LIVE
        current: Value | None = None
        try:
            current = await self._run(self._live_value, name, prop)
            if prop == "memory":
                if isinstance(value, int) and value % KIB:
                    return LiveResult.refused(current, Reason.OUT_OF_RANGE,
                                              f"libvirt sizes memory in KiB; {value} bytes is not a whole number of KiB")
                before = await self._run(self._read_back, name, prop)
                await self._run(lambda: self._domain(name).setMemoryFlags(_kib(value), live))
                return await self._settled(name, prop, value, before)
            if prop == "vcpus":
                before = await self._run(self._read_back, name, prop)
                await self._run(lambda: self._domain(name).setVcpusFlags(_count(value), live))
                return await self._settled(name, prop, value, before)
            if not await self._run(lambda: self._domain(name).isActive()):
                return LiveResult.refused(None, Reason.DOMAIN_NOT_RUNNING, "domain is not running")
            if prop == "max_memory":
                # libvirt says why not itself; a driver that can (libxl) just does it.
                await self._run(lambda: self._domain(name).setMemoryFlags(
                    _kib(value), live | lv.VIR_DOMAIN_MEM_MAXIMUM))
            elif prop == "max_vcpus":
                await self._run(lambda: self._domain(name).setVcpusFlags(
                    _count(value), live | lv.VIR_DOMAIN_VCPU_MAXIMUM))
            elif prop == "numa_nodes":
                return LiveResult.refused(current, Reason.REQUIRES_RESTART,
                                          "libvirt cannot change the NUMA topology of a running domain")
            elif prop.startswith(MEDIA_PREFIX):
                device = prop[len(MEDIA_PREFIX):]
                root = ET.fromstring(await self._run(self._xml, name))
                disk = _find_cdrom(root, device)
                if disk is None:
                    return LiveResult.refused(None, Reason.NOT_REMOVABLE,
                                              f"domain {name!r} has no CD-ROM {device}")
                disk_xml = _media_xml(disk, str(value))
                await self._run(lambda: self._domain(name).updateDeviceFlags(disk_xml, live))
            else:
                return LiveResult.refused(current, Reason.READ_ONLY, f"{prop} cannot be set through libvirt")
            after = await self._run(self._live_value, name, prop)
            if after != value:
                return LiveResult.failed(after, Reason.HYPERVISOR_ERROR,
                                         f"libvirt accepted {prop} = {value!r} but the domain reports {after!r}")
            return LiveResult.applied(after)
        except TimeoutError:
            return LiveResult.failed(current, Reason.TIMEOUT,
                                     f"libvirt at {self.uri} did not answer within {self.timeout:g}s")
        except HypervisorError as e:
            return LiveResult.failed(current, Reason.HYPERVISOR_ERROR, str(e))
        except lv.libvirtError as e:
            return self._refusal(current, e, maximum=prop in ("max_memory", "max_vcpus"))

    def _refusal(self, current: Value | None, e: Any, *, maximum: bool) -> LiveResult:
        reason, refused = _classify(self._libvirt, e, maximum=maximum)
        if reason is Reason.DOMAIN_NOT_RUNNING:
            current = None
        message = self._describe(e)
        return (LiveResult.refused if refused else LiveResult.failed)(current, reason, message)

    async def _settled(self, name: str, prop: str, value: Value, before: int) -> LiveResult:
        """Read a live memory or vCPU value back until it equals `value` or `settle` passes.

        A domain that still has `before` when `settle` has passed did not take
        the change at all (a guest without a balloon driver accepts a balloon
        target and never moves): that is `Failed` with the value kept, not a
        part of the change.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settle
        while True:
            actual = await self._run(self._read_back, name, prop)
            if actual == value or loop.time() >= deadline:
                break
            await asyncio.sleep(_SETTLE_STEP)
        if actual == value:
            return LiveResult.applied(actual)
        text = size_text if CATALOGUE[prop].type == "bytes" else str
        asked = f"asked libvirt for {prop} = {text(value)}"
        if actual == before:
            return LiveResult.failed(actual, Reason.GUEST_UNSUPPORTED,
                                     f"{asked}; libvirt accepted it, but after {self.settle:g}s the domain still "
                                     f"has {text(actual)}: the guest did not take it")
        return LiveResult.partial(actual, f"{asked}, the domain has {text(actual)}")

    def _read_back(self, name: str, prop: str) -> int:
        # info() = [state, max KiB, current KiB, vCPUs, cpu time]: what the domain has now.
        info = self._domain(name).info()
        return info[2] * KIB if prop == "memory" else info[3]

    def _live_value(self, name: str, prop: str) -> Value | None:
        dom = self._domain(name)
        if not dom.isActive():
            return None
        return dict(_parse_config(dom.XMLDesc(0))).get(prop)

    async def observe(self, name: str) -> Observation:
        """Report the domain's live config (from its live XML), capabilities, tray locks and persistent config.

        A domain libvirt no longer has is reported undefined (`defined` false).
        Tray locks come from QEMU (see `_locked_trays`); other drivers tell
        none, so the observation says they are not known (`trays_known`).

        Raises:
            HypervisorError: libvirt failed.
        """
        lv = self._libvirt

        def work() -> Observation:
            try:
                dom = self._connect().lookupByName(name)
            except lv.libvirtError as e:
                if e.get_error_code() != lv.VIR_ERR_NO_DOMAIN:
                    raise
                return Observation(defined=False, running=False, live=(), capabilities=())
            running = bool(dom.isActive())
            xml = dom.XMLDesc(0)
            locked = self._locked_trays(dom, xml) if running else frozenset()
            return Observation(
                running=running,
                live=_parse_config(xml) if running else (),
                capabilities=_capabilities(xml),
                locked_trays=locked or frozenset(), trays_known=locked is not None,
                persistent=_parse_config(dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE)),
            )

        return await self._lifecycle(work)

    def _locked_trays(self, dom: Any, xml: str) -> frozenset[str] | None:
        """Return the CD-ROM devices whose tray the guest has locked, as QEMU reports them, or None if not known.

        libvirt's API and XML say whether a tray is open, never whether it is
        locked; QEMU's `query-block` does, and libvirt passes it through
        (`libvirt_qemu.qemuMonitorCommand`, which marks the domain tainted
        `custom-monitor` in its log).  Other drivers, or a monitor that does
        not answer, tell nothing.
        """
        if self._qemu is None:
            return None
        try:
            answer = json.loads(self._qemu.qemuMonitorCommand(dom, '{"execute": "query-block"}', 0))
        except (self._libvirt.libvirtError, ValueError):
            return None
        return _locked_devices(xml, answer.get("return", ()))

    async def aclose(self) -> None:
        """Drop event subscriptions and close the connection (if one was opened)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        callbacks, self._callbacks = set(self._callbacks), set()

        def work() -> None:
            if not conn.isAlive():  # libvirtd went away: nothing is registered any more
                with contextlib.suppress(self._libvirt.libvirtError):
                    conn.close()
                return
            for cid in callbacks:
                conn.domainEventDeregisterAny(cid)
            conn.close()

        # Closing is the process's last word to libvirt: a libvirtd that does not answer (hung, gone) within the
        # timeout is left to the daemon thread (`_threads`), rather than turn a finished command into a failed one.
        with contextlib.suppress(HypervisorError):
            await self._lifecycle(work)

    async def ping(self) -> None:
        """Return once libvirt answers a call on the connection (a readiness probe); reconnect if it died.

        Raises:
            HypervisorError: libvirt cannot be reached or did not answer in time.
        """
        await self._lifecycle(lambda: self._connect().getLibVersion())

    # -- beyond the port: adopting an existing estate -----------------------------

    async def list_domains(self) -> list[str]:
        """Return the names of every domain libvirt knows, running or not, sorted.

        Raises:
            HypervisorError: libvirt failed.
        """
        return await self._lifecycle(lambda: sorted(d.name() for d in self._connect().listAllDomains(0)))

    async def inactive_config(self, name: str) -> tuple:
        """Return the config the domain boots with next, as sorted pairs.

        Raises:
            HypervisorError: the domain is unknown or libvirt failed.
        """
        return await self._lifecycle(lambda: _parse_config(self._xml(name, inactive=True)))

    async def guest_type(self, name: str) -> str:
        """Return `hvm` or `pv` from the domain's `<os><type>`.

        Raises:
            HypervisorError: the domain is unknown, or its guest is neither (e.g. a container).
        """
        return await self._lifecycle(lambda: _guest_type(self._xml(name, inactive=True)))

    async def describe(self, name: str) -> DomainSpec:
        """Return the domain as `DomainDefined` records it: UUID, guest type, inactive config, capabilities.

        Raises:
            HypervisorError: the domain is unknown or not adoptable.
        """

        def work() -> DomainSpec:
            dom = self._domain(name)
            xml = dom.XMLDesc(self._libvirt.VIR_DOMAIN_XML_INACTIVE)
            return DomainSpec(
                name=name, uuid=uuidlib.UUID(dom.UUIDString()).hex, guest_type=_guest_type(xml),
                config=_parse_config(xml), capabilities=_capabilities(xml),
            )

        return await self._lifecycle(work)

    # -- notifications --------------------------------------------------------------

    def notifications(self) -> "Notifications":
        """Return a subscription to libvirt's domain events (lifecycle, balloon, tray).

        Use it as `async with hv.notifications() as events: async for domain, kind,
        detail in events: ...`; the callbacks are registered when the block is
        entered, so nothing that happens inside it is missed.
        """
        return Notifications(self)

    async def _tray_device(self, domain: str, detail: str) -> str:
        """Turn `ALIAS:state` (libvirt names the device by alias) into `DEVICE:state`."""
        alias, _, state = detail.rpartition(":")
        root = ET.fromstring(await self._lifecycle(self._xml, domain))
        for disk in root.iterfind("devices/disk"):
            found, target = disk.find("alias"), disk.find("target")
            if found is not None and target is not None and found.get("name") == alias:
                return f"{target.get('dev')}:{state}"
        return detail


class Notifications:
    """A subscription to libvirt's domain events, as an async context manager and iterator.

    Each item is `(domain, kind, detail)`: `kind` is `lifecycle` (detail: `started`,
    `stopped`, `suspended`, `resumed`, `defined`, `undefined`, `shutdown`,
    `pmsuspended` or `crashed`), `balloon` (detail: the bytes the balloon now
    holds) or `tray` (detail: `DEVICE:open` or `DEVICE:closed`).  Callbacks run
    on libvirt's event thread and hand items to the subscriber's loop.

    When the connection closes (libvirtd stopped or restarted), the next item
    waits until a new connection opens and the callbacks are registered on
    it, trying every `reconnect` seconds (the adapter's), and is then `("", "reconnected",
    "")`: libvirt does not replay the events of the gap, so the subscriber
    should look at every domain again.
    """

    def __init__(self, hypervisor: LibvirtHypervisor) -> None:
        self._hv = hypervisor
        self._ids: list[int] = []
        self._queue: asyncio.Queue[tuple[str, str, Value]] | None = None
        self._conn: Any = None
        self._on_closed: Callable[[Any], None] | None = None

    async def __aenter__(self) -> "Notifications":
        await self.subscribe()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> "Notifications":
        return self

    async def __anext__(self) -> tuple[str, str, Value]:
        queue = self._queue if self._queue is not None else await self.subscribe()
        domain, kind, detail = await queue.get()
        if kind == "closed":
            await self._resubscribe(queue)
            return "", "reconnected", ""
        if kind == "tray":
            try:
                detail = await self._hv._tray_device(domain, str(detail))
            except HypervisorError:
                pass  # the domain went away meanwhile: keep libvirt's device alias
        return domain, kind, detail

    async def subscribe(self) -> "asyncio.Queue[tuple[str, str, Value]]":
        """Register the event callbacks and return the queue they fill (`async with` does it).

        Raises:
            HypervisorError: libvirt would not register them.
        """
        if self._queue is None:
            self._queue = asyncio.Queue()
            await self._register(self._queue)
        return self._queue

    async def _resubscribe(self, queue: "asyncio.Queue[tuple[str, str, Value]]") -> None:
        """Register the callbacks on a new connection, retrying until libvirt answers again."""
        self._forget()
        while True:
            try:
                await self._register(queue)
                return
            except HypervisorError:
                await asyncio.sleep(self._hv.reconnect)

    async def _register(self, queue: "asyncio.Queue[tuple[str, str, Value]]") -> None:
        lv = self._hv._libvirt
        loop = asyncio.get_running_loop()
        conn = await self._hv.connection()

        def deliver(item: tuple[str, str, Value]) -> None:
            # Runs on libvirt's event thread.
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:
                pass  # the subscriber's loop has closed: nobody is left to tell

        def closed(gone: Any) -> None:
            if gone is conn:
                deliver(("", "closed", ""))

        def lifecycle(_c: Any, dom: Any, event: int, _detail: int, _o: Any) -> None:
            word = _LIFECYCLE[event] if 0 <= event < len(_LIFECYCLE) else str(event)
            deliver((dom.name(), "lifecycle", word))

        def balloon(_c: Any, dom: Any, actual_kib: int, _o: Any) -> None:
            deliver((dom.name(), "balloon", actual_kib * KIB))

        def tray(_c: Any, dom: Any, alias: str, reason: int, _o: Any) -> None:
            state = "open" if reason == lv.VIR_DOMAIN_EVENT_TRAY_CHANGE_OPEN else "closed"
            deliver((dom.name(), "tray", f"{alias}:{state}"))

        def register() -> list[int]:
            ids: list[int] = []
            try:
                for event, callback in ((lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle),
                                        (lv.VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE, balloon),
                                        (lv.VIR_DOMAIN_EVENT_ID_TRAY_CHANGE, tray)):
                    ids.append(conn.domainEventRegisterAny(None, event, callback, None))
            except lv.libvirtError:
                for cid in ids:
                    with contextlib.suppress(lv.libvirtError):
                        conn.domainEventDeregisterAny(cid)
                raise
            return ids

        self._hv._on_closed.add(closed)
        try:
            self._ids = await self._hv._lifecycle(register)
        except BaseException:
            self._hv._on_closed.discard(closed)
            raise
        self._hv._callbacks.update(self._ids)
        self._conn, self._on_closed = conn, closed
        if not conn.isAlive():  # it closed before `closed` was listening: go round again
            deliver(("", "closed", ""))

    def _forget(self) -> list[int]:
        """Stop listening on the current connection; return the callbacks still registered there."""
        if self._on_closed is not None:
            self._hv._on_closed.discard(self._on_closed)
            self._on_closed = None
        mine = [cid for cid in self._ids if cid in self._hv._callbacks]
        self._hv._callbacks.difference_update(mine)
        self._ids = []
        return mine

    async def aclose(self) -> None:
        """Deregister the callbacks; the adapter's `aclose` does it too."""
        mine = self._forget()
        conn, self._conn = self._conn, None
        if mine and conn is not None and self._hv._conn is conn and conn.isAlive():
            with contextlib.suppress(HypervisorError):  # a libvirtd that does not answer: as the adapter's `aclose`
                await self._hv._lifecycle(lambda: [conn.domainEventDeregisterAny(cid) for cid in mine])


# -- libvirt errors -------------------------------------------------------------------

_ERROR_NAMES: dict[int, str] = {}
#: VIR_ERR_NONE/WARNING/ERROR are error levels that share numbers with error codes.
_LEVELS = {"VIR_ERR_NONE", "VIR_ERR_WARNING", "VIR_ERR_ERROR"}


def _error_name(libvirt: Any, code: int) -> str:
    if not _ERROR_NAMES:
        for attr in dir(libvirt):
            if attr.startswith("VIR_ERR_") and attr not in _LEVELS:
                _ERROR_NAMES.setdefault(getattr(libvirt, attr), attr)
    return _ERROR_NAMES.get(code, "VIR_ERR_UNKNOWN")


def _classify(libvirt: Any, e: Any, *, maximum: bool) -> tuple[Reason, bool]:
    """Return the reason code of a libvirt error and whether it is a refusal (else a failure)."""
    code = e.get_error_code()
    text = (e.get_error_message() or str(e)).lower()
    # Whole words: "lock" is also in "blockdev-insert-medium", QEMU's command when a guest closed its tray.
    if "tray" in text and re.search(r"\b(locked|timed out|timeout)\b", text):
        return Reason.TRAY_LOCKED, True
    if "unplug not supported" in text or "without the balloon device" in text:
        # QEMU cannot take a vCPU or device out of this guest (e.g. no ACPI), nor balloon a guest that has
        # no balloon device (`<memballoon model='none'/>`, memory slots or not): the guest's limit.
        return Reason.GUEST_UNSUPPORTED, True
    if "cannot resize the maximum memory on an active domain" in text:
        return Reason.REQUIRES_RESTART, True
    if code == libvirt.VIR_ERR_OPERATION_INVALID and "not running" in text:
        return Reason.DOMAIN_NOT_RUNNING, True
    if maximum:
        # Any refusal to change a maximum of a running domain: it takes a restart.
        return Reason.REQUIRES_RESTART, True
    if code in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
                libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED):
        return Reason.GUEST_UNSUPPORTED, True
    if code == libvirt.VIR_ERR_INVALID_ARG and ("max" in text or "exceed" in text):
        return Reason.OUT_OF_RANGE, True
    if code == libvirt.VIR_ERR_OPERATION_TIMEOUT:
        return Reason.TIMEOUT, False
    return Reason.HYPERVISOR_ERROR, False


# -- domain XML -------------------------------------------------------------------------


def _default_domain_type(uri: str) -> str:
    scheme = re.split(r"[+:]", uri, maxsplit=1)[0].lower()
    return {"test": "test", "xen": "xen", "libxl": "xen"}.get(scheme, "kvm")


def _kib(value: Value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % KIB:
        raise HypervisorRefusedError(f"libvirt sizes memory in KiB; {value!r} bytes is not a whole number of KiB",
                                     Reason.OUT_OF_RANGE.value)
    return value // KIB


def _count(value: Value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HypervisorError(f"{value!r} is not a count libvirt accepts")
    return value


def _size(elem: ET.Element | None) -> int | None:
    """Return the bytes an element such as `<memory unit='KiB'>` holds."""
    if elem is None or not (elem.text or "").strip():
        return None
    unit = (elem.get("unit") or "KiB").lower()
    if unit not in _UNITS:
        raise HypervisorError(f"unknown memory unit {unit!r} in libvirt's XML")
    return int(elem.text.strip()) * _UNITS[unit]  # type: ignore[union-attr]


def _source(disk: ET.Element) -> str:
    source = disk.find("source")
    if source is None:
        return ""
    return source.get("file") or source.get("dev") or source.get("name") or ""


def _parse_config(xml: str) -> tuple:
    """Return the catalogued config a domain XML describes, as sorted pairs."""
    root = ET.fromstring(xml)
    config: dict[str, Value] = {}
    max_memory = _size(root.find("memory"))
    memory = _size(root.find("currentMemory"))
    if max_memory is not None:
        config["max_memory"] = max_memory
        config["memory"] = memory if memory is not None else max_memory
    vcpu = root.find("vcpu")
    if vcpu is not None and vcpu.text:
        config["max_vcpus"] = int(vcpu.text)
        config["vcpus"] = int(vcpu.get("current") or vcpu.text)
    config["numa_nodes"] = len(root.findall("cpu/numa/cell")) or 1
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        if disk.get("device") == "cdrom" and target is not None and target.get("dev"):
            config[MEDIA_PREFIX + target.get("dev", "")] = _source(disk)
    return tuple(sorted(config.items()))


def _capabilities(xml: str) -> tuple:
    """Return what the XML says of the guest's capabilities; None where it cannot tell."""
    root = ET.fromstring(xml)
    caps: dict[str, bool | None] = {c.value: None for c in Capability}
    balloon = root.find("devices/memballoon")
    if balloon is not None:
        caps[Capability.BALLOON.value] = balloon.get("model") != "none"
    if root.find("maxMemory") is not None:
        caps[Capability.MEMORY_HOTPLUG.value] = True
    vcpus = root.findall("vcpus/vcpu")
    if vcpus:
        caps[Capability.VCPU_HOTPLUG.value] = any(v.get("hotpluggable") == "yes" for v in vcpus)
    return tuple(sorted(caps.items()))


def _guest_type(xml: str) -> str:
    os_type = (ET.fromstring(xml).findtext("os/type") or "").strip()
    if os_type not in _OS_TYPES:
        raise HypervisorError(f"guest OS type {os_type!r} is neither hvm nor pv (xen, linux)")
    return _OS_TYPES[os_type]


def _find_cdrom(root: ET.Element, device: str) -> ET.Element | None:
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        if disk.get("device") == "cdrom" and target is not None and target.get("dev") == device:
            return disk
    return None


def _cdrom(root: ET.Element, device: str, name: str) -> ET.Element:
    disk = _find_cdrom(root, device)
    if disk is None:
        raise HypervisorError(f"domain {name!r} has no CD-ROM {device}")
    return disk


def _locked_devices(xml: str, blocks: Any) -> frozenset[str]:
    """Return the devices of a live XML whose `query-block` entry (matched by alias) says `locked`."""
    aliases = {}
    for disk in ET.fromstring(xml).iterfind("devices/disk"):
        alias, target = disk.find("alias"), disk.find("target")
        if alias is not None and target is not None and disk.get("device") == "cdrom":
            aliases[alias.get("name")] = target.get("dev")
    # `qdev` is the device's id (the alias) or its QOM path, which ends with it.
    return frozenset(
        aliases[qdev.rsplit("/", 1)[-1]] for block in blocks if isinstance(block, dict) and block.get("locked")
        for qdev in (str(block.get("qdev", "")),) if qdev.rsplit("/", 1)[-1] in aliases
    )


def _replace_media(disk: ET.Element, path: str) -> None:
    """Point a CD-ROM disk element at `path`, or leave it empty for `""` (eject)."""
    for source in disk.findall("source"):
        disk.remove(source)
    if path:
        disk.set("type", "file")
        source = ET.Element("source", file=path)
        disk.insert(1 if disk.find("driver") is not None else 0, source)


def _media_xml(disk: ET.Element, path: str) -> str:
    """Return the `<disk>` XML that `updateDeviceFlags` needs to load `path` (or eject)."""
    copy = ET.fromstring(ET.tostring(disk))
    for child in copy.findall("alias") + copy.findall("backingStore"):
        copy.remove(child)
    _replace_media(copy, path)
    return ET.tostring(copy, encoding="unicode")


def _set_numa(root: ET.Element, nodes: int) -> None:
    """Give the domain `nodes` NUMA cells that split its memory and vCPUs evenly (1: no cells)."""
    cpu = root.find("cpu")
    if cpu is not None:
        for numa in cpu.findall("numa"):
            cpu.remove(numa)
        if nodes == 1 and not len(cpu) and not cpu.attrib:
            root.remove(cpu)
    if nodes == 1:
        return
    max_vcpus = int(root.findtext("vcpu") or 0)
    max_memory = _size(root.find("memory")) or 0
    if nodes > max_vcpus:
        raise HypervisorError(f"{nodes} NUMA nodes need at least {nodes} vCPUs, the domain has {max_vcpus}")
    if cpu is None:
        cpu = ET.Element("cpu")
        anchor = root.find("os")
        root.insert(list(root).index(anchor) + 1 if anchor is not None else len(root), cpu)
    numa = ET.SubElement(cpu, "numa")
    first = 0
    for cell in range(nodes):
        count = max_vcpus // nodes + (1 if cell < max_vcpus % nodes else 0)
        kib = max_memory // KIB // nodes + (max_memory // KIB % nodes if cell == 0 else 0)
        cpus = str(first) if count == 1 else f"{first}-{first + count - 1}"
        ET.SubElement(numa, "cell", id=str(cell), cpus=cpus, memory=str(kib), unit="KiB")
        first += count


def _domain_xml(spec: DomainSpec, domain_type: str) -> str:
    """Return a minimal domain XML for `spec` on a driver whose domains are `domain_type`."""
    config = dict(spec.config)
    caps = dict(spec.capabilities)
    if spec.guest_type == GuestType.PV.value and domain_type not in ("xen", "test"):
        raise HypervisorError(f"libvirt {domain_type} domains run HVM guests only, not {spec.guest_type}")
    root = ET.Element("domain", type=domain_type)
    ET.SubElement(root, "name").text = spec.name
    try:
        ET.SubElement(root, "uuid").text = str(uuidlib.UUID(spec.uuid))
    except ValueError:
        pass  # not a UUID: libvirt makes one up; domains are addressed by name
    ET.SubElement(root, "memory", unit="KiB").text = str(_kib(config["max_memory"]))
    ET.SubElement(root, "currentMemory", unit="KiB").text = str(_kib(config["memory"]))
    ET.SubElement(root, "vcpu", placement="static", current=str(_count(config["vcpus"]))).text = str(
        _count(config["max_vcpus"]))
    os_ = ET.SubElement(root, "os")
    ET.SubElement(os_, "type").text = "hvm" if spec.guest_type == GuestType.HVM.value else "xen"
    _set_numa(root, _count(config.get("numa_nodes", 1)))
    devices = ET.SubElement(root, "devices")
    for prop, path in sorted(config.items()):
        if not prop.startswith(MEDIA_PREFIX):
            continue
        device = prop[len(MEDIA_PREFIX):]
        disk = ET.SubElement(devices, "disk", type="file", device="cdrom")
        if domain_type == "kvm":
            ET.SubElement(disk, "driver", name="qemu", type="raw")
        if path:
            ET.SubElement(disk, "source", file=str(path))
        bus = "ide" if device.startswith("hd") else "xen" if device.startswith("xvd") else "sata"
        ET.SubElement(disk, "target", dev=device, bus=bus)
        ET.SubElement(disk, "readonly")
    balloon = caps.get(Capability.BALLOON.value)
    if balloon is not None:
        ET.SubElement(devices, "memballoon", model="virtio" if balloon else "none")
    return ET.tostring(root, encoding="unicode")
