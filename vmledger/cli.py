"""The `vmledger` command line: one run of an event loop per command (`_loop.run`: uvloop where installed).

Exit codes: 0 success and every scope applied exactly; 3 a request was
recorded but some scope was partial, refused or failed; 2 a usage error or
an invalid request (nothing written); 4 `verify` found damage; 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import traceback
from typing import Any, Callable, Iterable, Iterator, Sequence

import vmledger
from vmledger.eventstore.catalogue import (
    CATALOGUE, MEDIA_PREFIX, Capability, Outcome, Scope, check_seconds, lookup, nearest, shown,
)
from vmledger.eventstore.codec import event_data, loads_exact
from vmledger.eventstore.errors import (
    ChainBrokenError,
    InvalidRequestError,
    LedgerNotFoundError,
    UnknownDomainError,
    VmledgerError,
)
from vmledger.eventstore.events import (
    ChangeOutcome,
    DeviceAttached,
    DeviceDetached,
    GuestCapabilitiesObserved,
    LiveValueObserved,
    MediaTrayLocked,
    MediaTrayUnlocked,
    PersistentValueObserved,
)
from vmledger.eventstore.log import RecordedEvent, timestamp
from vmledger import _loop, _units
from vmledger._checkpoint import read_checkpoint, write_checkpoint
from vmledger._compose import DEFAULT_DB, redacted
from vmledger.ledger import check_definition, default_principal
from vmledger.results import DomainView, DriftRow, RequestRecord
from vmledger.service import commands as service_commands
from vmledger import _tool_commands as tool_commands
from vmledger import _tools_cli

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_APPLIED, EXIT_DAMAGED = 0, 1, 2, 3, 4


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        m = re.match(r"argument (\S+): invalid choice: '(.*)' \(choose from (.*)\)$", message, re.S)
        if m is not None:
            what = "unknown command" if m.group(1) in ("COMMAND", "ACTION") else f"argument {m.group(1)}: invalid choice"
            choices = re.findall(r"'([^']*)'", m.group(3))
            near = nearest(m.group(2), choices)
            message = (f"{what} {shown(m.group(2))}"
                       + (f": did you mean {near!r}?" if near else f" (choose from {', '.join(choices)})"))
        # argparse quotes some of what it shows (a choice), not all (an argument it does not know): the
        # characters that would break the line, or the terminal, are shown escaped.
        message = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message)
        self.exit(EXIT_USAGE, f"vmledger: error: {message} (see '{self.prog} --help')\n")


def _interval(text: str) -> float:
    """Return the seconds `watch --interval` names: a finite number above 0."""
    try:
        return check_seconds("the watch interval", float(text))
    except (ValueError, InvalidRequestError) as e:
        raise argparse.ArgumentTypeError(
            str(e) if isinstance(e, InvalidRequestError) else f"invalid number of seconds {shown(text)}") from e


def _property_help() -> str:
    lines = []
    for p in CATALOGUE.values():
        name = "media:DEV" if p.name == "media" else p.name
        lines.append(f"  {name:<14} {p.kind.value:<7} {p.description}")
    return "properties (kind rw: any time, ro_ins: persistent only, ro_run: never):\n" + "\n".join(lines)


def _virsh_scopes(p: argparse.ArgumentParser, both: str | None) -> None:
    """Add virsh's scope flags to `p`: `--config` (persistent), `--live` and `--current`."""
    group = p.add_argument_group("virsh's scope flags, instead of --scope")
    group.add_argument("--config", action="store_true", help="the persistent config, as --scope persistent"
                       + (f" ({both})" if both else ""))
    group.add_argument("--live", action="store_true", help="the running domain, as --scope live")
    group.add_argument("--current", action="store_true", help="live if running, else persistent, as --scope current")


def _scope(args: argparse.Namespace, default: str) -> str:
    """Return the scope `--scope` or virsh's flags name, or `default`."""
    flags = [f for f in ("config", "live", "current") if getattr(args, f)]
    if not flags:
        return args.scope or default
    if args.scope is not None:
        raise InvalidRequestError("give --scope or --config/--live/--current, not both")
    if "current" in flags and len(flags) > 1:
        raise InvalidRequestError("--current cannot be combined with --config or --live")
    if flags == ["config", "live"]:
        if args.command == "get":
            raise InvalidRequestError("get reads one config: give --config or --live, not both")
        return Scope.BOTH.value
    return {"config": Scope.PERSISTENT.value, "live": Scope.LIVE.value, "current": Scope.CURRENT.value}[flags[0]]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `vmledger` command."""
    parser = _Parser(
        prog="vmledger",
        description="Record every VM configuration request and what came of it; "
        "show persistent vs live config, drift and history.",
        epilog=_units.SIZE_RULE[0].upper() + _units.SIZE_RULE[1:] + ".\n"
        "Tables and messages show sizes in binary units, exactly; JSON always gives bytes.\n"
        "Commands run on uvloop where it is installed; env VMLEDGER_LOOP=asyncio keeps Python's own event loop.\n"
        + _property_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", default=os.environ.get("VMLEDGER_DB", DEFAULT_DB),
                        help="database URL or path (env VMLEDGER_DB; default %(default)s)")
    parser.add_argument("--hypervisor", default=os.environ.get("VMLEDGER_HYPERVISOR", "sim"),
                        help="hypervisor: sim (simulated, state beside the database), sim:PATH (state in PATH) "
                        "or libvirt+URI, "
                        "e.g. libvirt+qemu:///system (env VMLEDGER_HYPERVISOR; default sim)")
    # A string default goes through `type` too, so a bad VMLEDGER_TIMEOUT is a usage error, not a crash.
    parser.add_argument("--timeout", type=float, default=os.environ.get("VMLEDGER_TIMEOUT", "10"),
                        help="seconds to wait for the hypervisor before recording a timeout (env VMLEDGER_TIMEOUT; default %(default)s)")
    parser.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"vmledger {vmledger.__version__}")
    parser.add_argument("--url", default=os.environ.get("VMLEDGER_URL"),
                        help="run the command against the vmledger server at URL instead of --db, with the token "
                        "in env VMLEDGER_TOKEN and a CA file in env VMLEDGER_CA (env VMLEDGER_URL)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help)

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print JSON")

    p = command("completion", "print a shell completion script: source <(vmledger completion bash)")
    p.add_argument("shell", choices=["bash", "zsh"])

    p = command("init", "create an empty ledger at --db, or say that one exists there already")
    json_flag(p)

    p = command("define", "define a domain on the hypervisor and record it")
    p.add_argument("name")
    p.add_argument("--type", dest="guest_type", required=True, choices=["pv", "hvm"], help="guest type")
    p.add_argument("--memory", required=True, help="memory size")
    p.add_argument("--max-memory", required=True, help="maximum memory size")
    p.add_argument("--vcpus", required=True, help="vCPUs")
    p.add_argument("--max-vcpus", required=True, help="maximum vCPUs")
    p.add_argument("--numa-nodes", default="1", help="NUMA nodes (default 1)")
    p.add_argument("--cdrom", action="append", default=[], metavar="DEV[=PATH]", help="a CD-ROM device, optionally with media")
    p.add_argument("--principal", default=default_principal(), help="who asks (default: your user name)")
    json_flag(p)
    for name, text in (("start", "boot a domain"), ("stop", "shut a domain off"),
                       ("undefine", "remove a stopped domain (its history stays)")):
        p = command(name, text)
        p.add_argument("name")
        p.add_argument("--principal", default=default_principal(), help="who asks")
        json_flag(p)

    p = command("set", "request a property change and record its outcome per scope")
    p.add_argument("name")
    p.add_argument("property", help="a catalogue property, or media:DEV")
    p.add_argument("value", help="the new value (empty ejects media)")
    p.add_argument("--scope", choices=[s.value for s in Scope], help="default both")
    _virsh_scopes(p, "--config --live is both")
    p.add_argument("--request-id", help="idempotency key (default: generated)")
    p.add_argument("--principal", default=default_principal(), help="who asks (default: your user name)")
    p.add_argument("--reason", help="why, free text")
    json_flag(p)

    p = command("get", "print one property's value")
    p.add_argument("name")
    p.add_argument("property")
    p.add_argument("--scope", choices=["live", "persistent", "current"],
                   help="default current: live if running, else persistent")
    _virsh_scopes(p, None)
    json_flag(p)

    p = command("show", "print both configs side by side, capabilities, tray locks and drift")
    p.add_argument("name")
    json_flag(p)

    p = command("list", "list the defined domains")
    json_flag(p)

    p = command("drift", "list where live differs from persistent, with cause")
    p.add_argument("name", nargs="?")
    p.add_argument("--as-of", help="a log position or an ISO time")
    json_flag(p)

    p = command("history", "list requests with their outcomes, oldest first")
    p.add_argument("name", nargs="?", help="a domain's name; an undefined domain's history stays, "
                   "and every domain that bore the name is listed")
    p.add_argument("property", nargs="?")
    p.add_argument("--principal")
    p.add_argument("--since", help="ISO time")
    p.add_argument("--until", help="ISO time")
    json_flag(p)

    p = command("events", "print the log, one JSON object per line")
    p.add_argument("--from", dest="from_position", default="0", help="start after this position")
    p.add_argument("--follow", action="store_true", help="keep printing new events")
    p.add_argument("--domain", metavar="NAME", help="only the events of the domains that bore this name")
    p.add_argument("--type", dest="types", action="append", metavar="TYPE",
                   help="only events of this type, e.g. MemoryChangeRequested (may be repeated)")
    p.add_argument("--since", help="only events recorded at or after this ISO time")
    p.add_argument("--until", help="only events recorded at or before this ISO time (not with --follow)")
    json_flag(p)

    p = command("observe", "record out-of-band changes the hypervisor reports; resolve abandoned requests")
    p.add_argument("name", nargs="?")
    p.add_argument("--principal", default=default_principal(), help="who asks (default: your user name)")
    json_flag(p)

    p = command("adopt", "record domains the hypervisor already has: inactive config, and live values if running")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--all", action="store_true",
                   help="every domain the hypervisor lists that the ledger does not record yet")
    p.add_argument("--principal", default=default_principal(), help="who asks (default: your user name)")
    json_flag(p)
    p = command("watch", "record out-of-band changes until interrupted: at start, as the hypervisor "
                "announces them, and in a sweep of every domain every --interval seconds")
    p.add_argument("--principal", default=default_principal(), help="who asks (default: your user name)")
    p.add_argument("--interval", type=_interval, default="60", metavar="SECONDS",
                   help="seconds between sweeps that observe every domain (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print each recorded event as a JSON line")

    p = command("export", "print the log as JSON lines with every stored field and hash link")
    p.add_argument("--from", dest="from_position", default="0", help="start after this position")
    p = command("import", "load an exported log into an empty ledger, all or nothing, checking its chain")
    p.add_argument("file", help="an export file, or - for standard input")
    json_flag(p)

    json_flag(command("rebuild", "rebuild every projection from the log"))
    p = command("verify", "check the hash chain and that projections equal a rebuild")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from", dest="from_position", default="0", help="trust the chain up to this position")
    start.add_argument("--checkpoint", metavar="FILE",
                       help="check only what changed since the checkpoint saved in FILE (all of it if FILE "
                            "does not exist yet), then save a new checkpoint there")
    json_flag(p)

    p = command("demo", "play the story of the README in a fresh ledger, printing each step as the command "
                "that does it, and print a report")
    p.add_argument("--keep", metavar="DIR", help="keep the ledger in DIR/demo.db to explore it afterwards "
                   "(default: a temporary ledger, deleted at the end; or the one --db names)")

    sim = command("sim", "perturb the simulated hypervisor behind the ledger's back")
    simsub = sim.add_subparsers(dest="sim_command", required=True, metavar="ACTION", parser_class=_Parser)
    s = simsub.add_parser("balloon", help="set a running domain's live memory")
    s.add_argument("name"), s.add_argument("size")
    s = simsub.add_parser("config", help="change a value of the config a domain boots with next")
    s.add_argument("name"), s.add_argument("property"), s.add_argument("value")
    s = simsub.add_parser("host-free", help="set the host's free memory pool")
    s.add_argument("size")
    for action in ("lock-tray", "unlock-tray"):
        s = simsub.add_parser(action, help=f"{action.split('-')[0]} a CD-ROM tray, as the guest would")
        s.add_argument("name"), s.add_argument("device")
    s = simsub.add_parser("capability", help="turn a guest capability on or off")
    s.add_argument("name"), s.add_argument("capability", choices=[c.value for c in Capability])
    s.add_argument("state", choices=["on", "off"])
    s = simsub.add_parser("fail", help="make the next live change of a property fail")
    s.add_argument("name"), s.add_argument("property"), s.add_argument("kind", choices=["error", "timeout"])
    for s in simsub.choices.values():
        json_flag(s)
    tool_commands.add_commands(sub)
    service_commands.add_commands(sub, _Parser)
    _tools_cli.add_commands(command, default_principal())
    return parser


# Output.


def _plain(obj: Any) -> Any:
    """Return `obj` with every typed result turned into its JSON shape."""
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (list, tuple)):
        return [_plain(o) for o in obj]
    return obj


def _print_json(obj: Any) -> None:
    print(json.dumps(_plain(obj), indent=2, ensure_ascii=False))


def _fmt(prop: str, value: Any) -> str:
    try:
        entry = lookup(prop)
    except InvalidRequestError:
        entry = None
    return _units.format_value(entry, value)


def _set_exit(record: RequestRecord) -> int:
    return EXIT_OK if record.applied else EXIT_NOT_APPLIED


def _print_request(r: RequestRecord) -> None:
    prop = r.property
    print(f"{timestamp(r.requested_at)}  {r.request_id}  {r.domain} {prop} = {_fmt(prop, r.requested)}"
          f"  scope {r.scope}  by {r.principal}" + (f"  ({r.reason})" if r.reason else ""))
    for scope in ("persistent", "live"):
        o = r.outcomes.get(scope)
        if o is None:
            continue
        why = f"  {o.reason}: {o.message}" if o.reason else (f"  {o.message}" if o.message else "")
        value = _fmt(prop, o.value)
        if o.status != "applied":
            # The value in force and the value asked, each named, so that neither is taken for the other.
            asked = f"asked {_fmt(prop, r.requested)}"
            value = asked if o.value is None else f"{'got' if o.status == 'partial' else 'kept'} {value}, {asked}"
        print(f"    {scope:<10} {o.status:<9} {value}{why}")


def _print_show(view: DomainView) -> None:
    print(f"{view.domain}  ({view.guest_type}, {view.power_state}, uuid {view.uuid})")
    rows = [(r.property, _fmt(r.property, r.persistent), _fmt(r.property, r.live), r.drift or "")
            for r in view.properties]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(("property", "persistent", "live"))]
    for prop, persistent, live, drift in [("property", "persistent", "live", "drift"), *rows]:
        print(f"  {prop:<{widths[0]}}  {persistent:>{widths[1]}}  {live:>{widths[2]}}  {drift}".rstrip())
    caps = ", ".join(f"{k}={'unknown' if v is None else ('yes' if v else 'no')}"
                     for k, v in view.capabilities.items())
    print(f"  capabilities: {caps}")
    print(f"  locked trays: {', '.join(view.locked_trays) or 'none'}")
    if view.pending:
        print(f"  in flight: {', '.join(view.pending)}")


def _print_drift(rows: list[DriftRow]) -> None:
    if not rows:
        print("no drift")
        return
    for d in rows:
        prop = d.property
        print(f"{d.domain} {prop}: persistent {_fmt(prop, d.persistent)}, live {_fmt(prop, d.live)}"
              f"  cause {d.cause}  request {d.request_id or '-'}  since #{d.since_position} {timestamp(d.since)}")


def _describe(domain: str, rec: RecordedEvent) -> str:
    """Return one line that says what a recorded event records, for people."""
    e = rec.event
    prop = getattr(e, "property", None)
    if isinstance(e, (LiveValueObserved, PersistentValueObserved)):
        config = "live" if isinstance(e, LiveValueObserved) else "persistent"
        what = f"{prop} {config} {_fmt(prop, e.value)} (the ledger had {_fmt(prop, e.previous)})"
    elif isinstance(e, ChangeOutcome):
        what = f"{prop} {e.scope} {e.outcome.status} {_fmt(prop, e.value)}, request {e.request_id}" + (
            f"  {e.reason}: {e.message}" if e.reason else "")
    elif isinstance(e, GuestCapabilitiesObserved):
        what = "capabilities " + ", ".join(
            f"{k}={'unknown' if v is None else ('yes' if v else 'no')}" for k, v in e.capabilities)
    elif isinstance(e, (MediaTrayLocked, MediaTrayUnlocked)):
        what = f"tray of {e.device} {'locked' if isinstance(e, MediaTrayLocked) else 'unlocked'}"
    elif isinstance(e, DeviceAttached):
        what = f"CD-ROM {e.device} attached {e.scope}, media {_fmt(MEDIA_PREFIX + e.device, e.media)}"
    elif isinstance(e, DeviceDetached):
        what = f"CD-ROM {e.device} detached {e.scope}"
    else:
        what = ""
    return f"#{rec.position} {rec.type}  {domain}" + (f" {what}" if what else "")


# `_event_line`'s encoders: the data's keys sorted, as its stored text has them; the rest in their order.
_DATA = json.JSONEncoder(sort_keys=True, ensure_ascii=False).encode
_TEXT = json.JSONEncoder(ensure_ascii=False).encode


def _event_line(rec: RecordedEvent) -> str:
    """Return `json.dumps(_event_json(rec), ensure_ascii=False)`, quicker: not through the event's stored text."""
    return (f'{{"position": {rec.position}, "stream": {_TEXT(rec.stream)}, "version": {rec.version}, '
            f'"type": {_TEXT(rec.type)}, "data": {_DATA(event_data(rec.event))}, '
            f'"metadata": {_TEXT(rec.metadata.to_dict())}, "recorded_at": {_TEXT(rec.recorded_at.isoformat())}}}')


def _event_json(rec: RecordedEvent) -> dict[str, Any]:
    from vmledger.eventstore.codec import encode

    _, _, data = encode(rec.event)
    return {"position": rec.position, "stream": rec.stream, "version": rec.version,
            "type": rec.type, "data": loads_exact(data)[0], "metadata": rec.metadata.to_dict(),
            "recorded_at": rec.recorded_at.isoformat()}


# Commands.


#: Commands that may create the ledger they name; every other command needs one that exists.
CREATING = frozenset({"init", "define", "adopt", "import", "demo"})
#: Commands that only read: they need read permission alone, and never create anything.
READING = frozenset({"list", "show", "get", "drift", "history", "events", "export", "verify", "plot", "audit",
                     "diff"})


async def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from vmledger._demo import run_demo

        return await run_demo(args.db if args.db != DEFAULT_DB or "VMLEDGER_DB" in os.environ else None,
                              args.keep)
    if args.command == "init":
        return await _init(args)
    if args.command == "completion":
        from vmledger._completion import script

        print(script(build_parser(), args.shell), end="")
        return EXIT_OK
    if args.command == "schema":
        return tool_commands.print_schema(args)
    if args.command in service_commands.COMMANDS:
        return await service_commands.run_command(args)
    if args.command == "import":  # a misspelt file name creates no ledger
        args.lines = _export_file(args.file)
    if args.command == "define":  # nor does a definition the ledger would refuse
        args.definition = _definition(args)
    if args.url:
        opened = vmledger.connect(args.url, token=os.environ.get("VMLEDGER_TOKEN"), ca=os.environ.get("VMLEDGER_CA"))
    else:
        opened = vmledger.open(args.db, hypervisor=args.hypervisor, hypervisor_timeout=args.timeout,
                               create=args.command in CREATING, read_only=args.command in READING)
    async with opened as ledger:
        try:
            return await _dispatch(ledger, args)
        except UnknownDomainError as e:
            name = getattr(args, "name", None) or getattr(args, "domain", None)
            near = nearest(name, [v.domain for v in await ledger.domains()]) if (
                isinstance(name, str) and str(e) == f"unknown domain {name!r}") else None
            if not near:
                raise
            raise UnknownDomainError(f"{e}: did you mean {near!r}?") from e


async def _init(args: argparse.Namespace) -> int:
    """Create the ledger `--db` names, or say that it exists already."""
    try:
        async with vmledger.open(args.db, hypervisor=args.hypervisor, read_only=True) as ledger:
            head = await ledger.log.head()
        created = False
    except LedgerNotFoundError:
        async with vmledger.open(args.db, hypervisor=args.hypervisor) as ledger:
            head = await ledger.log.head()
        created = True
    if args.json:
        _print_json({"db": redacted(args.db), "created": created, "events": head})
    elif created:
        print(f"created an empty ledger at {redacted(args.db)}")
    else:
        print(f"a ledger exists already at {redacted(args.db)} ({head} events); nothing changed")
    return EXIT_OK


async def _dispatch(ledger: vmledger.Ledger, args: argparse.Namespace) -> int:
    cmd = args.command
    as_json = getattr(args, "json", False)
    if cmd in _tools_cli.COMMANDS:
        return await _tools_cli.run_command(ledger, args)
    if cmd == "define":
        view = await ledger.define(args.name, **args.definition, principal=args.principal)
        _print_json(view) if as_json else _print_show(view)
    elif cmd in ("start", "stop"):
        view = await getattr(ledger, cmd)(args.name, principal=args.principal)
        _print_json(view) if as_json else _print_show(view)
    elif cmd == "undefine":
        await ledger.undefine(args.name, principal=args.principal)
        _print_json({"domain": args.name, "undefined": True}) if as_json else print(f"undefined {args.name}")
    elif cmd == "set":
        value = _units.parse_value(lookup(args.property), args.value)
        record = await ledger.set(args.name, args.property, value, scope=_scope(args, Scope.BOTH.value),
                                  request_id=args.request_id, principal=args.principal, reason=args.reason)
        if record.replayed:
            pending = any(o.status == Outcome.REQUESTED.status for o in record.outcomes.values())
            print(f"vmledger: request id {record.request_id} was recorded before: "
                  f"{'its record so far, still in flight' if pending else 'its first outcome again'}, "
                  "nothing appended", file=sys.stderr)
        if as_json:
            _print_json(record)
        else:
            _print_request(record)
        return _set_exit(record)
    elif cmd == "get":
        got = await ledger.get(args.name, args.property, scope=_scope(args, Scope.CURRENT.value))
        _print_json(got) if as_json else print(_fmt(args.property, got.value))
    elif cmd == "show":
        view = await ledger.show(args.name)
        _print_json(view) if as_json else _print_show(view)
    elif cmd == "list":
        views = await ledger.domains()
        if as_json:
            _print_json([{"domain": v.domain, "uuid": v.uuid, "guest_type": v.guest_type,
                          "power_state": v.power_state} for v in views])
        for v in [] if as_json else views:
            print(f"{v.domain:<20} {v.guest_type:<4} {v.power_state}")
        if not views and not as_json:
            print("no domains")
    elif cmd == "drift":
        as_of = None if args.as_of is None else _units.parse_as_of(args.as_of)
        rows = await ledger.drift(args.name, as_of=as_of)
        _print_json(rows) if as_json else _print_drift(rows)
    elif cmd == "history":
        records = await ledger.history(
            args.name, args.property, principal=args.principal,
            since=_units.parse_time(args.since) if args.since else None,
            until=_units.parse_time(args.until) if args.until else None,
        )
        if as_json:
            _print_json(records)
        else:
            for r in records:
                _print_request(r)
            if not records:
                print("no requests")
    elif cmd == "events":
        start = _units.parse_position(args.from_position)
        since, until = (_units.parse_time(t) if t else None for t in (args.since, args.until))
        if args.follow and until is not None:
            raise InvalidRequestError("--until ends the feed and --follow never does: give one of them")
        stream = (ledger.subscribe(from_position=start, domain=args.domain, types=args.types, since=since)
                  if args.follow else
                  ledger.events(from_position=start, domain=args.domain, types=args.types, since=since, until=until))
        async for rec in stream:  # a feed shows each event as it comes; a listing may buffer its lines
            print(_event_line(rec), flush=args.follow)
    elif cmd == "observe":
        recorded = await ledger.observe(args.name, principal=args.principal)
        if as_json:
            _print_json([_event_json(r) for r in recorded])
        else:
            names = {v.uuid: v.domain for v in await ledger.domains()}
            for r in recorded:
                print(_describe(names.get(r.stream, r.stream), r))
            if not recorded:
                print("nothing new")
    elif cmd == "adopt":
        if bool(args.names) == args.all:
            raise InvalidRequestError("name the domains to adopt, or give --all")
        views = (await ledger.adopt_all(principal=args.principal) if args.all
                 else [await ledger.adopt(n, principal=args.principal) for n in args.names])
        if as_json:
            _print_json(views)
        for v in [] if as_json else views:
            _print_show(v)
        if not views and not as_json:
            print("nothing to adopt")
    elif cmd == "watch":
        # The watch logs a domain it cannot observe and goes on: one line on stderr each time (see main).
        start = (f"watching every domain of {args.hypervisor} in {redacted(args.db)}: now, as announced, "
                 f"and every {args.interval:g}s; interrupt to stop")
        print(f"vmledger: {start}", file=sys.stderr, flush=True) if as_json else print(start, flush=True)

        def recorded(domain: str, rec: RecordedEvent) -> None:
            line = _event_line(rec) if as_json else _describe(domain, rec)
            print(line, flush=True)

        await ledger.watch(principal=args.principal, interval=args.interval, on_recorded=recorded)
    elif cmd == "export":
        async for line in ledger.export(from_position=_units.parse_position(args.from_position)):
            print(line)
    elif cmd == "import":
        head = await ledger.import_lines(args.lines)
        _print_json({"events": head, "chain": "verified"}) if as_json else print(
            f"imported {head} events; chain verified")
    elif cmd == "rebuild":
        # Opening a ledger whose rows another version's fold rules made rebuilt them a moment ago: not twice.
        rebuilt = getattr(getattr(ledger, "log", None), "rebuilt_on_open", False)
        position = await ledger.log.head() if rebuilt else await ledger.rebuild()
        _print_json({"position": position}) if as_json else print(f"rebuilt projections up to position {position}")
    elif cmd == "verify":
        await _verify(ledger, args)
    elif cmd == "sim":
        await _sim(ledger, args)
    elif cmd == "plot":
        await tool_commands.plot(ledger, args)
    return EXIT_OK


async def _verify(ledger: vmledger.Ledger, args: argparse.Namespace) -> None:
    """Verify the whole ledger, from a position, or since a saved checkpoint (saving the new one)."""
    if args.checkpoint is None:
        start = _units.parse_position(args.from_position)
        head = await ledger.verify(from_position=start)
        if args.json:
            _print_json({"ok": True, "events": head, "from": start})
        else:
            print(f"ok: {head} events, chain intact, projections equal a rebuild")
        return
    since = read_checkpoint(args.checkpoint)
    checkpoint = await ledger.checkpoint(since)
    write_checkpoint(args.checkpoint, checkpoint)
    if since is None:
        checked, start = "in full", 0
    elif since.rules != checkpoint.rules:  # see Ledger.checkpoint
        checked, start = "in full, as the checkpoint's digests are of rows another version's fold rules made", 0
    else:
        checked, start = f"since the checkpoint at position {since.position}", since.position
    if args.json:
        _print_json({"ok": True, "events": checkpoint.position, "from": start, "checkpoint": args.checkpoint})
        return
    print(f"ok: {checkpoint.position} events, chain intact, projections equal a rebuild "
          f"(checked {checked}); checkpoint saved to {args.checkpoint}")


def _export_file(name: str) -> Callable[[], Iterable[str]]:
    """Return a function that reads an export's lines, once (standard input as it comes)."""
    # Any file that reads: a regular one, a pipe (`<(zcat export.gz)`), a device.
    if name != "-" and not os.path.exists(name):
        raise InvalidRequestError(f"no such export file: {name}")
    if os.path.isdir(name):
        raise InvalidRequestError(f"{name} is a directory, not an export file")

    def lines() -> Iterator[str]:
        with contextlib.nullcontext(sys.stdin.buffer) if name == "-" else open(name, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InvalidRequestError(f"line {number} of {'standard input' if name == '-' else name} "
                                              f"is not UTF-8 text ({e.reason})") from e
                yield line

    return lines


async def _sim(ledger: vmledger.Ledger, args: argparse.Namespace) -> None:
    from vmledger.adapters.simulated import SimulatedHypervisor

    sim = ledger.hypervisor
    if not isinstance(sim, SimulatedHypervisor) and not getattr(sim, "simulated", False):
        raise InvalidRequestError("'vmledger sim' needs the simulated hypervisor (--hypervisor sim)")
    action = args.sim_command
    if action == "balloon":
        await sim.balloon(args.name, _units.parse_size(args.size))
    elif action == "config":
        await sim.configure(args.name, args.property, _units.parse_value(lookup(args.property), args.value))
    elif action == "host-free":
        await sim.set_host_free(_units.parse_size(args.size))
    elif action == "lock-tray":
        await sim.lock_tray(args.name, args.device)
    elif action == "unlock-tray":
        await sim.unlock_tray(args.name, args.device)
    elif action == "capability":
        await sim.set_capability(args.name, args.capability, args.state == "on")
    elif action == "fail":
        await sim.inject_fault(args.name, args.property, args.kind)
    _print_json({"sim": action, "done": True}) if args.json else print(f"sim {action}: done")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `vmledger` command; return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed in one line
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    # Warnings of the library (a simulator restored, a domain a watch cannot observe): one line on stderr.
    # Other libraries' (asyncpg's pool reconnecting, say) too, without their traceback but under --debug.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogLine(debug=args.debug))
    root = logging.getLogger()
    root.addHandler(handler)
    if not args.debug:  # its pool's line a second while the server is down: the follower says it once
        logging.getLogger("asyncpg").setLevel(logging.ERROR)
    try:
        return _main(args)
    finally:
        root.removeHandler(handler)


class _LogLine(logging.Formatter):
    """`vmledger: message`; the traceback of vmledger's own records only (an internal error), or of all with `debug`."""

    def __init__(self, *, debug: bool) -> None:
        super().__init__("vmledger: %(message)s")
        self._debug = debug

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and not (self._debug or record.name.startswith("vmledger")):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return super().format(record)


def _definition(args: argparse.Namespace) -> dict[str, Any]:
    """Return `define`'s arguments as `Ledger.define` takes them, checked (`check_definition`) before any ledger opens."""
    cdroms: dict[str, str] = {}
    for spec in args.cdrom:
        dev, _, path = spec.partition("=")
        if dev in cdroms:
            raise InvalidRequestError(f"CD-ROM device {dev!r} is given twice")
        cdroms[dev] = path
    definition = dict(
        guest_type=args.guest_type, memory=_units.parse_size(args.memory),
        max_memory=_units.parse_size(args.max_memory), vcpus=_units.parse_count(args.vcpus, "vcpus"),
        max_vcpus=_units.parse_count(args.max_vcpus, "max_vcpus"),
        numa_nodes=_units.parse_count(args.numa_nodes, "numa_nodes"), cdroms=cdroms)
    check_definition(args.name, **definition)
    return definition


def _main(args: argparse.Namespace) -> int:
    try:
        # `serve` stops on SIGTERM its own way (it lets the requests under way finish, then exits 0).
        return _loop.run(_run(args), terminable=args.command != "serve")
    except _loop.Terminated:
        # Ended as an interruption ends; then the process dies of the signal, as it would have at once.
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return 128 + signal.SIGTERM  # should the signal be blocked
    except ChainBrokenError as e:
        if isinstance(e, InvalidRequestError):  # the file imported is damaged, not the ledger
            print(f"vmledger: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        print(f"vmledger: {e}", file=sys.stderr)
        return EXIT_DAMAGED
    except InvalidRequestError as e:
        if args.debug:
            traceback.print_exc()
        hint = ""
        if isinstance(e, LedgerNotFoundError):
            hint = f" (create it with 'vmledger --db {redacted(args.db)} init', or check --db and VMLEDGER_DB)"
        print(f"vmledger: error: {e}{hint}", file=sys.stderr)
        return EXIT_USAGE
    except VmledgerError as e:
        if args.debug:
            traceback.print_exc()
        print(f"vmledger: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # a bug: still one line, the traceback under --debug
        if args.debug:
            traceback.print_exc()
        print(f"vmledger: internal error: {type(e).__name__}: {e} (rerun with --debug)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # python -m vmledger.cli
    sys.exit(main())
