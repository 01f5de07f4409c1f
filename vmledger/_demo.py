"""`vmledger demo`: play the README's story in a fresh ledger and print a report.

Every step is printed as the `vmledger` command that does the same, so the
story can be pasted into a shell and played again; the ledger stays where
the user asked (`--keep DIR`, or `--db`) to be explored afterwards.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from typing import Any, Awaitable, Callable

import vmledger
from vmledger._compose import redacted
from vmledger.eventstore.errors import InvalidRequestError

__all__ = ["run_demo"]

GiB, MiB = 2**30, 2**20

Step = tuple[str, Callable[[vmledger.Ledger], Awaitable[Any]]]


def _say(command: str) -> None:
    print(f"\n$ vmledger {command}")


def _story() -> list[Step]:
    """Return the story's steps: the command a user would type, and what the demo does for it."""

    def define(name: str, guest: str, memory: int, max_memory: int, vcpus: int, max_vcpus: int,
               cdroms: dict[str, str] | None = None) -> Callable[[vmledger.Ledger], Awaitable[Any]]:
        return lambda ledger: ledger.define(name, guest_type=guest, memory=memory, max_memory=max_memory,
                                            vcpus=vcpus, max_vcpus=max_vcpus, cdroms=cdroms, principal="alice")

    def set_(name: str, prop: str, value: Any, **kw: Any) -> Callable[[vmledger.Ledger], Awaitable[Any]]:
        return lambda ledger: ledger.set(name, prop, value, **kw)

    def sim(method: str, *args: Any) -> Callable[[vmledger.Ledger], Awaitable[Any]]:
        return lambda ledger: getattr(ledger.hypervisor, method)(*args)

    return [
        ("define web --type pv --memory 1GiB --max-memory 4GiB --vcpus 2 --max-vcpus 4 --cdrom hdc "
         "--principal alice", define("web", "pv", GiB, 4 * GiB, 2, 4, {"hdc": ""})),
        ("define db --type hvm --memory 2GiB --max-memory 8GiB --vcpus 4 --max-vcpus 8 --principal alice",
         define("db", "hvm", 2 * GiB, 8 * GiB, 4, 8)),
        ("start web --principal alice", lambda ledger: ledger.start("web", principal="alice")),
        ("start db --principal alice", lambda ledger: ledger.start("db", principal="alice")),
        ("sim host-free 100MiB", sim("set_host_free", 100 * MiB)),
        ("set web memory 1224MiB --principal alice --reason 'more cache'",
         set_("web", "memory", 1224 * MiB, principal="alice", reason="more cache")),
        ("set db memory 3GiB --scope both --principal bob", set_("db", "memory", 3 * GiB, principal="bob")),
        ("sim capability db memory_hotplug on", sim("set_capability", "db", "memory_hotplug", True)),
        ("sim host-free 4GiB", sim("set_host_free", 4 * GiB)),
        ("set db memory 3GiB --scope live --principal bob",
         set_("db", "memory", 3 * GiB, scope="live", principal="bob")),
        ("set web max_memory 8GiB --scope persistent --principal carol",
         set_("web", "max_memory", 8 * GiB, scope="persistent", principal="carol")),
        ("sim lock-tray web hdc", sim("lock_tray", "web", "hdc")),
        ("set web media:hdc /iso/install.iso --principal carol",
         set_("web", "media:hdc", "/iso/install.iso", principal="carol")),
        ("sim unlock-tray web hdc", sim("unlock_tray", "web", "hdc")),
        ("set web media:hdc /iso/install.iso --principal carol",
         set_("web", "media:hdc", "/iso/install.iso", principal="carol")),
        ("set web power_state off --principal mallory", set_("web", "power_state", "off", principal="mallory")),
        ("sim balloon db 2560MiB", sim("balloon", "db", 2560 * MiB)),
        ("observe db", lambda ledger: ledger.observe("db")),
    ]


async def _play(ledger: vmledger.Ledger) -> None:
    from vmledger.cli import _describe, _print_request

    names = {}
    for command, step in _story():
        _say(command)
        result = await step(ledger)
        if isinstance(result, vmledger.RequestRecord):
            _print_request(result)
        elif isinstance(result, vmledger.DomainView):
            names[result.uuid] = result.domain
            print(f"{result.domain}: {result.power_state}")
        elif isinstance(result, list):
            for rec in result:
                print(_describe(names.get(rec.stream, rec.stream), rec))


async def _report(ledger: vmledger.Ledger) -> None:
    from vmledger.cli import _print_drift, _print_request, _print_show

    print("\n================ report ================")
    for view in await ledger.domains():
        print()
        _print_show(view)
    print("\n-- drift (live differs from persistent) --")
    _print_drift(await ledger.drift())
    print("\n-- history --")
    for record in await ledger.history():
        _print_request(record)
    head = await ledger.verify()
    print(f"\nverify: {head} events, hash chain intact, projections equal a rebuild")


async def _demo(url: str) -> None:
    async with vmledger.open(url, hypervisor_timeout=5.0) as ledger:
        if await ledger.log.head():
            raise InvalidRequestError(f"the demo needs an empty ledger, and {redacted(url)} holds one already")
        await _play(ledger)
        await _report(ledger)


async def run_demo(db: str | None, keep: str | None = None) -> int:
    """Play the story and print the report; return 0.

    The ledger is `db` if given, else `demo.db` in the directory `keep`
    (made if missing), else a temporary file deleted at the end.

    Raises:
        InvalidRequestError: both `db` and `keep` are given, `keep` cannot be a directory, or the ledger is not empty.
    """
    if db is not None and keep is not None:
        raise InvalidRequestError("give --keep DIR or --db, not both")
    if db is not None or keep is not None:
        if keep is not None:
            try:
                os.makedirs(keep, exist_ok=True)
            except OSError as e:  # a file of that name, say
                raise InvalidRequestError(f"cannot keep the demo in {keep}: {e.strerror or e}") from e
        url = db if db is not None else f"sqlite:///{os.path.abspath(os.path.join(keep or '', 'demo.db'))}"
        print(f"vmledger demo: ledger {redacted(url)}, simulated hypervisor; each step is shown as the command that "
              "does it")
        await _demo(url)
        print(f"\nThe ledger stays in {redacted(url)}; explore it, for example:")
        print(f"  export VMLEDGER_DB={shlex.quote(redacted(url))}")
        for command in ("history web", "show db", "drift --as-of 12", "events --from 20"):
            print(f"  vmledger {command}")
        return 0
    with tempfile.TemporaryDirectory(prefix="vmledger-demo-") as tmp:
        url = os.path.join(tmp, "demo.db")
        print("vmledger demo: a temporary ledger, simulated hypervisor; each step is shown as the command that does it")
        await _demo(url)
    print("\nThe temporary ledger is deleted; run 'vmledger demo --keep DIR' to keep it in DIR and explore it.")
    return 0
