"""The ledger in front of a real libvirtd with QEMU guests (no mocks, no test driver).

The test command starts libvirtd and virtlogd (`scripts/libvirtd.sh start`).
Each test defines its own tiny guests, with no operating system: 256 MiB max,
128 MiB current, 1 of 2 vCPUs, an IDE CD-ROM `hdc`, a virtio balloon and no
disk.  A guest either boots to "no bootable device" and sits there, or boots
the tray-locking ISO below, whose boot sector locks its own tray.  Every test
destroys and undefines its guests, and the end of the session checks that no
test domain, qemu process or stray daemon is left.  Without a reachable
`qemu:///system` these tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Any, AsyncIterator, Iterator

import pytest

from tests.e2e.libvirt_support import require_libvirt, until, watching

libvirt = require_libvirt("the QEMU tests")

import vmledger
from vmledger import Ledger
from vmledger.adapters.libvirt import LibvirtHypervisor
from vmledger.eventstore.events import (
    DeviceAttached,
    DeviceDetached,
    DomainStopped,
    DomainUndefined,
    LiveValueObserved,
    MediaTrayLocked,
    PersistentValueObserved,
)

URI = "qemu:///system"
#: Every domain these tests define is named with it; the session-end check looks for it.
PREFIX = "vmledger-test-"
ROOT = pathlib.Path(__file__).resolve().parents[2]
LIBVIRTD_PID = pathlib.Path("/run/libvirtd.pid")
KiB, MiB = 2**10, 2**20
LIVE, CONFIG = libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG

#: The boot sector of the tray-locking ISO: 16-bit code that sends the ATAPI packet
#: PREVENT ALLOW MEDIUM REMOVAL (opcode 0x1E, prevent = 1) to the secondary IDE master
#: (ports 0x170-0x177) and halts.  Assembled with `as --32` and `ld -Ttext 0x7c00
#: --oformat binary` from:
#:   cli; mov $0x176,%dx; mov $0xa0,%al; out %al,%dx   # select the master
#:   call wait; mov $0x171,%dx; xor %al,%al; out %al,%dx  # features: PIO
#:   mov $0x174,%dx; out %al,%dx; inc %dx; out %al,%dx   # byte count 0
#:   mov $0x177,%dx; mov $0xa0,%al; out %al,%dx          # PACKET
#:   1: in %dx,%al; test $0x80,%al; jnz 1b; test $0x08,%al; jz 1b   # wait for DRQ
#:   mov $0x170,%dx; mov $0x1e,%ax; out %ax,%dx; xor %ax,%ax; out %ax,%dx
#:   mov $1,%ax; out %ax,%dx; xor %ax,%ax; out %ax,%dx; out %ax,%dx; out %ax,%dx
#:   call wait; 2: hlt; jmp 2b
#:   wait: mov $0x177,%dx; 3: in %dx,%al; test $0x80,%al; jnz 3b; ret
LOCK_BOOT_SECTOR = bytes.fromhex(
    "faba7601b0a0eee83400ba710130c0eeba7401ee42eeba7701b0a0eeeca8"
    "8075fba80874f7ba7001b81e00ef31c0efb80100ef31c0efefefe80300f4"
    "ebfdba7701eca88075fbc3")

GUEST_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='KiB'>262144</memory>
  <currentMemory unit='KiB'>131072</currentMemory>
  <vcpu placement='static' current='1'>2</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='{boot}'/></os>
  <devices>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{iso}'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <memballoon model='virtio'/>
  </devices>
</domain>"""

#: The guest without a balloon device, with memory slots (`<maxMemory>`, which QEMU takes with a NUMA cell):
#: its memory can grow only by plugging DIMMs.
NO_BALLOON_XML = GUEST_XML.replace("<memballoon model='virtio'/>", "<memballoon model='none'/>").replace(
    "<currentMemory unit='KiB'>131072</currentMemory>",
    "<currentMemory unit='KiB'>262144</currentMemory>\n  <maxMemory slots='2' unit='KiB'>1048576</maxMemory>").replace(
    "<os>", "<cpu><numa><cell id='0' cpus='0-1' memory='262144' unit='KiB'/></numa></cpu>\n  <os>")


def _missing(what: str) -> None:
    """Fail under CI=true, else skip: `what` these tests need is not here."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI=true: the QEMU tests must run)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[None]:
    """Check that libvirtd answers; at the end of the session, that no test domain, qemu process of a test guest or stray libvirtd is left."""
    try:
        libvirt.open(URI).close()
    except libvirt.libvirtError as e:
        _missing(f"libvirtd does not answer at {URI} (start it with scripts/libvirtd.sh start): {e}")
    yield
    assert leftovers() == ([], [], daemons())


@pytest.fixture
def conn(libvirtd: None) -> Iterator[Any]:
    """Yield a connection of the test's own to the test command's libvirtd (a test may restart it)."""
    opened = libvirt.open(URI)
    yield opened
    with contextlib.suppress(libvirt.libvirtError):
        opened.close()


def leftovers() -> tuple[list[str], list[int], list[int]]:
    """Return the test domains libvirt still has, the qemu processes of test guests, and the libvirtd processes."""
    with contextlib.closing(libvirt.open(URI)) as check:
        domains = sorted(d.name() for d in check.listAllDomains() if d.name().startswith(PREFIX))
    guests, libvirtds = [], []
    for proc in pathlib.Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # not a process, or it ended meanwhile
        if argv[0].endswith(b"qemu-system-x86_64") and any(PREFIX.encode() in arg for arg in argv):
            guests.append(int(proc.name))
        if os.path.basename(argv[0]) == b"libvirtd":
            libvirtds.append(int(proc.name))
    return domains, guests, sorted(libvirtds)


def daemons() -> list[int]:
    """Return the one libvirtd the test command started (its pid file's), as `leftovers` should find it."""
    return [int(LIBVIRTD_PID.read_text())]


@pytest.fixture(scope="session")
def isos() -> Iterator[dict[str, str]]:
    """Yield the paths of three ISOs: `lock` (boots and locks its tray), `plain` and `other` (data only)."""
    if shutil.which("genisoimage") is None:
        _missing("genisoimage is not installed: apt-get install genisoimage")
    # QEMU runs as libvirt-qemu: the folder must be open to it (pytest's tmp_path is not).
    folder = pathlib.Path(tempfile.mkdtemp(prefix="vmledger-qemu-"))
    try:
        folder.chmod(0o755)
        paths = {}
        for name in ("lock", "plain", "other"):
            content = folder / name
            content.mkdir()
            (content / "README").write_text(f"the {name} ISO of vmledger's tests\n")
            args = ["genisoimage", "-quiet", "-o", str(folder / f"{name}.iso")]
            if name == "lock":
                (content / "boot.bin").write_bytes(LOCK_BOOT_SECTOR.ljust(2048, b"\0"))
                args += ["-b", "boot.bin", "-no-emul-boot", "-boot-load-size", "4"]
            subprocess.run([*args, str(content)], check=True)
            (folder / f"{name}.iso").chmod(0o644)
            paths[name] = str(folder / f"{name}.iso")
        yield paths
    finally:
        shutil.rmtree(folder)


@contextlib.contextmanager
def guest(conn: Any, name: str, iso: str, *, boot: str = "hd", xml: str = GUEST_XML) -> Iterator[Any]:
    """Define and start a tiny guest named PREFIX + `name` with `iso` in hdc; always destroy and undefine it.

    The cleanup opens a connection of its own: the test may have restarted libvirtd.
    """
    dom = conn.defineXML(xml.format(name=PREFIX + name, iso=iso, boot=boot))
    try:
        dom.create()
        idle(dom)
        yield dom
    finally:
        with contextlib.closing(libvirt.open(URI)) as again:
            # Either may already be done by the test: the session-end check catches a guest left behind.
            for step in ("destroy", "undefine"):
                with contextlib.suppress(libvirt.libvirtError):
                    getattr(again.lookupByName(PREFIX + name), step)()


def idle(dom: Any, seconds: float = 20.0) -> None:
    """Wait until the guest's firmware is done (its vCPU time grows by under 5 ms in 100 ms).

    SeaBIOS probes the CD-ROM as it boots and closes a tray that libvirt opened
    meanwhile; once it has given up booting, or booted the lock ISO, it halts.
    """
    deadline = time.monotonic() + seconds
    before = dom.info()[4]
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = dom.info()[4]
        if now - before < 5_000_000:
            return
        before = now
    raise AssertionError(f"{dom.name()} still busy after {seconds:g}s")


@contextlib.asynccontextmanager
async def ledger_for(tmp_path: pathlib.Path, *names: str, reconnect: float = 0.5) -> AsyncIterator[Ledger]:
    """Yield a fresh ledger in front of `qemu:///system` that has adopted the named guests."""
    hv = LibvirtHypervisor(URI, timeout=15.0, settle=1.0, reconnect=reconnect)
    async with vmledger.open(f"sqlite:///{tmp_path}/ledger.db", hypervisor=hv) as ledger:
        for name in names:
            await ledger.adopt(PREFIX + name)
        yield ledger


async def events_after(ledger: Ledger, position: int) -> list[Any]:
    """Return the events the ledger recorded after `position`."""
    return [r.event async for r in ledger.events(from_position=position)]


async def watch_began(ledger: Ledger, dom: Any) -> int:
    """Change the guest's persistent vCPUs behind the ledger's back, wait until watch's start pass records it; return the head.

    libvirt announces no config change, so only the start pass can record it:
    once it has, the watch is subscribed.
    """
    head = await _head(ledger)
    await asyncio.to_thread(dom.setVcpusFlags, 2, CONFIG)
    await until(lambda: events_after(ledger, head), [PersistentValueObserved(property="vcpus", value=2, previous=1)])
    return head + 1


async def _head(ledger: Ledger) -> int:
    return max([r.position async for r in ledger.events()])


async def _persistent(ledger: Ledger, name: str, prop: str) -> Any:
    return {p["property"]: p["persistent"] for p in (await ledger.show(name))["properties"]}.get(prop)


def outcomes(record: Any) -> dict[str, tuple]:
    """Return scope -> (status, value, reason, message) of a request record."""
    return {scope: (o["status"], o["value"], o["reason"], o["message"]) for scope, o in record["outcomes"].items()}


def live_source(dom: Any, device: str) -> str:
    """Return the file the running guest's CD-ROM `device` holds, from its live XML ("" when empty)."""
    for disk in ET.fromstring(dom.XMLDesc(0)).iterfind("devices/disk"):
        if disk.find("target").get("dev") == device:  # type: ignore[union-attr]
            source = disk.find("source")
            return "" if source is None else source.get("file", "")
    raise AssertionError(f"no {device} in the live XML")


def test_live_memory_the_guest_does_not_take_is_failed_with_the_value_kept(
        conn: Any, isos: dict[str, str], tmp_path: pathlib.Path) -> None:
    """Without a balloon driver the guest keeps all 256 MiB: a live change to 192 MiB is Failed with 256 MiB kept, the persistent one applies."""
    with guest(conn, "memory", isos["plain"]) as dom:
        async def scenario() -> None:
            async with ledger_for(tmp_path, "memory") as ledger:
                record = await ledger.set(dom.name(), "memory", 192 * MiB)
                assert outcomes(record) == {
                    "persistent": ("applied", 192 * MiB, None, None),
                    "live": ("failed", 256 * MiB, "guest_unsupported",
                             "asked libvirt for memory = 192MiB; libvirt accepted it, but after 1s the domain "
                             "still has 256MiB: the guest did not take it"),
                }
                assert [(d["property"], d["persistent"], d["live"], d["cause"]) for d in await ledger.drift()] == [
                    ("memory", 192 * MiB, 256 * MiB, "failed")]

        asyncio.run(scenario())
        assert (dom.info()[2], dom.maxMemory()) == (256 * MiB // KiB, 256 * MiB // KiB)


def test_live_memory_of_a_guest_without_a_balloon_device_is_refused_with_qemus_reason(
        conn: Any, isos: dict[str, str], tmp_path: pathlib.Path) -> None:
    """A guest with memory slots but no balloon device cannot change its memory live: refused guest_unsupported with libvirt's message, 256 MiB kept, the persistent change applies."""
    with guest(conn, "noballoon", isos["plain"], xml=NO_BALLOON_XML) as dom:
        async def scenario() -> None:
            async with ledger_for(tmp_path, "noballoon") as ledger:
                record = await ledger.set(dom.name(), "memory", 192 * MiB)
                assert outcomes(record) == {
                    "persistent": ("applied", 192 * MiB, None, None),
                    "live": ("refused", 256 * MiB, "guest_unsupported",
                             "Requested operation is not valid: Unable to change memory of active domain without "
                             "the balloon device and guest OS balloon driver (VIR_ERR_OPERATION_INVALID, code 55)"),
                }
                assert [(d["property"], d["persistent"], d["live"], d["cause"]) for d in await ledger.drift()] == [
                    ("memory", 192 * MiB, 256 * MiB, "refused")]

        asyncio.run(scenario())
        assert dom.info()[2] == 256 * MiB // KiB


def test_live_vcpu_plug_applies_and_unplug_is_recorded_with_qemus_reason(
        conn: Any, isos: dict[str, str], tmp_path: pathlib.Path) -> None:
    """vCPUs 1 -> 2 live is applied and the guest has 2; 2 -> 1 is refused guest_unsupported with QEMU's message, 2 kept."""
    with guest(conn, "vcpus", isos["plain"]) as dom:
        async def scenario() -> None:
            async with ledger_for(tmp_path, "vcpus") as ledger:
                plugged = await ledger.set(dom.name(), "vcpus", 2, scope="live")
                assert outcomes(plugged) == {"live": ("applied", 2, None, None)}
                assert dom.info()[3] == 2
                unplugged = await ledger.set(dom.name(), "vcpus", 1, scope="live")
                assert outcomes(unplugged) == {"live": (
                    "refused", 2, "guest_unsupported",
                    "internal error: unable to execute QEMU command 'device_del': CPU hot unplug not supported "
                    "without ACPI (VIR_ERR_INTERNAL_ERROR, code 1)")}

        asyncio.run(scenario())
        assert dom.info()[3] == 2


def test_media_change_on_a_guest_locked_tray_is_refused_and_the_persistent_change_applies(
        conn: Any, isos: dict[str, str], tmp_path: pathlib.Path) -> None:
    """A guest that locked its tray keeps its ISO: the live change is refused tray_locked with libvirt's message, the persistent one applies, and the refusal records the lock, which observe then keeps."""
    with guest(conn, "locked", isos["lock"], boot="cdrom") as dom:
        async def scenario() -> None:
            hv = LibvirtHypervisor(URI)
            async with hv:
                await until(lambda: _locked(hv, dom.name()), frozenset({"hdc"}), seconds=30)
            async with ledger_for(tmp_path, "locked") as ledger:
                before = await _head(ledger)
                record = await ledger.set(dom.name(), "media:hdc", isos["other"])
                assert outcomes(record) == {
                    "persistent": ("applied", isos["other"], None, None),
                    "live": ("refused", isos["lock"], "tray_locked",
                             "operation failed: timed out waiting to open tray of 'hdc' "
                             "(VIR_ERR_OPERATION_FAILED, code 9)"),
                }
                assert [e for e in await events_after(ledger, before) if not hasattr(e, "request_id")] == [
                    MediaTrayLocked(device="hdc")]
                head, name = await _head(ledger), dom.name()
                assert (await ledger.show(name))["locked_trays"] == ["hdc"]
                assert await _run(*cli(tmp_path, "observe", name)) == "nothing new\n"
                assert await events_after(ledger, head) == []
                assert "  locked trays: hdc" in (await _run(*cli(tmp_path, "show", name))).splitlines()

        asyncio.run(scenario())
        assert live_source(dom, "hdc") == isos["lock"]


async def _locked(hv: LibvirtHypervisor, name: str) -> frozenset[str]:
    return (await hv.observe(name)).locked_trays


def test_media_change_with_the_tray_free_applies_and_its_tray_event_reaches_watch(
        conn: Any, isos: dict[str, str], tmp_path: pathlib.Path) -> None:
    """With the tray free a media change applies in both scopes, and an eject made behind the ledger's back is recorded by watch from libvirt's tray event."""
    with guest(conn, "tray", isos["plain"]) as dom:
        async def scenario() -> None:
            async with ledger_for(tmp_path, "tray") as ledger:
                record = await ledger.set(dom.name(), "media:hdc", isos["other"])
                assert outcomes(record) == {"persistent": ("applied", isos["other"], None, None),
                                            "live": ("applied", isos["other"], None, None)}
                assert live_source(dom, "hdc") == isos["other"]
                async with watching(ledger, interval=3600):
                    head = await watch_began(ledger, dom)
                    eject = "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>"
                    await asyncio.to_thread(dom.updateDeviceFlags, eject, LIVE)
                    await until(lambda: events_after(ledger, head), [
                        LiveValueObserved(property="media:hdc", value="", previous=isos["other"])])

        asyncio.run(scenario())


def test_watch_reconnects_after_libvirtd_restarts_and_records_the_gap_once(
        conn: Any, isos: dict[str, str], tmp_path: pathlib.Path) -> None:
    """libvirtd killed and restarted under a watch: a virsh change made meanwhile is recorded once, and the watch goes on to record the guest destroyed and undefined."""
    with guest(conn, "restart", isos["plain"]) as dom:
        name = dom.name()

        async def scenario() -> None:
            # The watch tries again 6 s after its first try fails: libvirtd is back and changed by then.
            async with ledger_for(tmp_path, "restart", reconnect=6.0) as ledger, watching(ledger, interval=3600):
                head = await watch_began(ledger, dom)
                pid = int(LIBVIRTD_PID.read_text())
                os.kill(pid, signal.SIGTERM)
                try:
                    await until(lambda: _gone(pid), True)
                finally:  # libvirtd comes back whatever happens: the other tests need it
                    await _run("bash", str(ROOT / "scripts" / "libvirtd.sh"), "start")
                # libvirt announces no vCPU change: only the watch's catching up can record it.
                await _run("virsh", "-q", "-c", URI, "setvcpus", name, "2", "--live")
                assert await events_after(ledger, head) == []
                await until(lambda: _vcpus_observed(ledger, head), [LiveValueObserved(property="vcpus", value=2, previous=1)],
                            seconds=30)
                await _run("virsh", "-q", "-c", URI, "destroy", name)
                await until(lambda: _power_state(ledger, name), "shut off")
                await _run("virsh", "-q", "-c", URI, "undefine", name)
                await until(lambda: _names(ledger), [])
                events = await events_after(ledger, head)
                # Besides: what libvirtd reports anew after its restart (the balloon target as live memory).
                assert (await _vcpus_observed(ledger, head), events[-2:]) == (
                    [LiveValueObserved(property="vcpus", value=2, previous=1)], [DomainStopped(), DomainUndefined()])

        asyncio.run(scenario())


async def _gone(pid: int) -> bool:
    return not pathlib.Path(f"/proc/{pid}").exists()


async def _vcpus_observed(ledger: Ledger, position: int) -> list[Any]:
    return [e for e in await events_after(ledger, position)
            if isinstance(e, LiveValueObserved) and e.property == "vcpus"]


async def _power_state(ledger: Ledger, name: str) -> str:
    return (await ledger.show(name))["power_state"]


async def _names(ledger: Ledger) -> list[str]:
    return [v["domain"] for v in await ledger.domains()]


def cli(tmp_path: pathlib.Path, *args: str) -> tuple[str, ...]:
    """Return the command line of `vmledger ARGS` on the test's ledger, in front of `qemu:///system`."""
    return (sys.executable, "-m", "vmledger.cli", "--db", f"sqlite:///{tmp_path}/ledger.db",
            "--hypervisor", f"libvirt+{URI}", *args)


async def _run(*argv: str) -> str:
    """Run a command to its end and return its output; fail with the output if it fails."""
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    assert (argv, process.returncode) == (argv, 0), output.decode()
    return output.decode()


def test_cdrom_attached_and_detached_outside_is_recorded_on_the_next_observation(
        conn: Any, isos: dict[str, str], tmp_path: pathlib.Path) -> None:
    """A CD-ROM attached to the config with virsh is recorded DeviceAttached by the next `vmledger observe`, and DeviceDetached once detached."""
    with guest(conn, "devices", isos["plain"]) as dom:
        name = dom.name()
        observe = cli(tmp_path, "observe", name)

        async def scenario() -> None:
            async with ledger_for(tmp_path, "devices") as ledger:
                head = await _head(ledger)
                await _run("virsh", "-q", "-c", URI, "attach-disk", name, isos["other"], "hdd",
                           "--type", "cdrom", "--config")
                assert await _run(*observe) == f"#{head + 1} DeviceAttached  {name} CD-ROM hdd attached persistent, " \
                                               f"media {isos['other']}\n"
                assert await events_after(ledger, head) == [
                    DeviceAttached(device="hdd", scope="persistent", media=isos["other"])]
                assert await _persistent(ledger, name, "media:hdd") == isos["other"]
                await _run("virsh", "-q", "-c", URI, "detach-disk", name, "hdd", "--config")
                assert await _run(*observe) == f"#{head + 2} DeviceDetached  {name} CD-ROM hdd detached persistent\n"
                assert await events_after(ledger, head) == [
                    DeviceAttached(device="hdd", scope="persistent", media=isos["other"]),
                    DeviceDetached(device="hdd", scope="persistent")]
                assert await _persistent(ledger, name, "media:hdd") is None

        asyncio.run(scenario())
