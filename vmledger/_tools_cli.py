"""The `audit`, `diff` and `revert` commands of the CLI: their arguments and their printers."""

from __future__ import annotations

import argparse
import csv
import sys
from typing import Any, Callable

from vmledger import _units
from vmledger._audit import STATUSES
from vmledger.eventstore.catalogue import Scope
from vmledger.eventstore.errors import InvalidRequestError
from vmledger.eventstore.log import timestamp
from vmledger.results import AuditReport, ConfigDiff, RevertReport

__all__ = ["COMMANDS", "add_commands", "run_command"]

COMMANDS = frozenset({"audit", "diff", "revert"})


def add_commands(command: Callable[[str, str], argparse.ArgumentParser], principal: str) -> None:
    """Add `audit`, `diff` and `revert` through the CLI's `command(name, help)`; `principal` is the default one."""
    p = command("audit", "report a period: requests per principal, property and outcome per scope, the top "
                "refusal and failure reasons, drift episodes and each domain's time in drift")
    p.add_argument("--since", metavar="TIME", help="ISO time: the period's start (default: the log's)")
    p.add_argument("--until", metavar="TIME", help="ISO time: the period's end (default: now)")
    p.add_argument("--domain", metavar="NAME", help="only the domains that bore this name")
    p.add_argument("--principal", metavar="WHO", help="only this principal's requests, and the episodes they caused")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="default table")
    p.add_argument("--json", action="store_true", help="print JSON, as --format json")

    p = command("diff", "list how a domain's persistent and live configs changed between two points, "
                "each change with the event and request that made it")
    p.add_argument("name")
    p.add_argument("--from", dest="from_point", required=True, metavar="POINT", help="a log position or an ISO time")
    p.add_argument("--to", dest="to_point", metavar="POINT", help="a log position or an ISO time (default: the head)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("revert", "bring a domain's config back to what it was at a point, with ordinary requests "
                "(reason 'revert to #POSITION', one correlation id); list the values that cannot go back; "
                "exit 3 when a request was not applied exactly or a value could not go back")
    p.add_argument("name")
    p.add_argument("--to", dest="to_point", required=True, metavar="POINT", help="a log position or an ISO time")
    p.add_argument("--scope", choices=[Scope.PERSISTENT.value, Scope.BOTH.value], default=Scope.BOTH.value,
                   help="default both: the live config too, if the domain runs")
    p.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    p.add_argument("--principal", default=principal, help="who asks (default: your user name)")
    p.add_argument("--json", action="store_true", help="print JSON")


async def run_command(ledger: Any, args: argparse.Namespace) -> int:
    """Run `audit`, `diff` or `revert`; return the exit code."""
    from vmledger import cli  # the shared printers; cli imports this module

    if args.command == "audit":
        if args.json and args.format not in ("table", "json"):
            raise InvalidRequestError("give --json or --format, not both")
        report = await ledger.audit(
            since=_units.parse_time(args.since) if args.since else None,
            until=_units.parse_time(args.until) if args.until else None,
            domain=args.domain, principal=args.principal)
        form = "json" if args.json else args.format
        {"json": cli._print_json, "csv": _print_audit_csv, "table": _print_audit}[form](report)
        return cli.EXIT_OK
    if args.command == "diff":
        found = await ledger.diff(args.name, from_position=_units.parse_as_of(args.from_point),
                                  to_position=None if args.to_point is None else _units.parse_as_of(args.to_point))
        cli._print_json(found) if args.json else _print_diff(found)
        return cli.EXIT_OK
    report = await ledger.revert(args.name, to=_units.parse_as_of(args.to_point), scope=args.scope,
                                 dry_run=args.dry_run, principal=args.principal)
    cli._print_json(report) if args.json else _print_revert(report)
    # A dry run says as much of its plan: 3 if a value could not go back.
    complete = not report.unrevertible if report.dry_run else report.applied
    return cli.EXIT_OK if complete else cli.EXIT_NOT_APPLIED


def _seconds(seconds: float) -> str:
    """Return a duration as people read it: `2h03m4.5s`, `4m0.25s`, `0.013s`."""
    hours, rest = divmod(seconds, 3600)
    minutes, rest = divmod(rest, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes):02d}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


def _table(rows: list[tuple[str, ...]], right: set[int]) -> None:
    """Print rows as an indented table, its first row the header; columns `right` are right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())


def _print_audit(report: AuditReport) -> None:
    since = "the start" if report.since is None else timestamp(report.since)
    only = [f"{k} {v}" for k, v in (("domain", report.domain), ("principal", report.principal)) if v is not None]
    print(f"audit from {since} to {timestamp(report.until)}" + (f" ({', '.join(only)})" if only else ""))
    print("requests")
    if report.requests:
        _table([("principal", "property", "scope", "requests", *STATUSES)]
               + [(r.principal, r.property, r.scope, str(r.requests), *(str(r[s]) for s in STATUSES))
                  for r in report.requests], set(range(3, 4 + len(STATUSES))))
    else:
        print("  none")
    print("refusal and failure reasons")
    if report.reasons:
        _table([("status", "reason", "count")] + [(r.status, r.reason or "-", str(r.count)) for r in report.reasons],
               {2})
    else:
        print("  none")
    print("drift episodes")
    for e in report.episodes:
        ended = "open" if e.ended is None else f"#{e.ended_position} {timestamp(e.ended)}"
        print(f"  {e.domain} {e.property}: cause {e.cause}  request {e.request_id or '-'}  "
              f"from #{e.since_position} {timestamp(e.started)} to {ended}  {_seconds(e.duration)}")
    if not report.episodes:
        print("  none")
    print("time in drift")
    for d in report.drift:
        print(f"  {d.domain}: {_seconds(d.seconds)} in {d.episodes} episode{'s' if d.episodes != 1 else ''}")
    if not report.drift:
        print("  none")


def _print_audit_csv(report: AuditReport) -> None:
    """Print the report as CSV: each section's rows after a header row, every row naming its section first."""
    out = csv.writer(sys.stdout, lineterminator="\n")
    for section, items in (("requests", report.requests), ("reasons", report.reasons),
                           ("episodes", report.episodes), ("drift", report.drift)):
        header = list(_fields(section))
        out.writerow(["section", *header])
        for item in items:
            d = item.to_dict()
            out.writerow([section, *("" if d[k] is None else d[k] for k in header)])


def _fields(section: str) -> tuple[str, ...]:
    from vmledger import results

    kind = {"requests": results.OutcomeCount, "reasons": results.ReasonCount, "episodes": results.DriftEpisode,
            "drift": results.DomainDrift}[section]
    return tuple(a.name for a in kind.__attrs_attrs__)  # type: ignore[attr-defined]


def _print_diff(found: ConfigDiff) -> None:
    from vmledger import cli

    print(f"{found.domain}: from #{found.from_position} to #{found.to_position}")
    for c in found.changes:
        print(f"  #{c.position} {timestamp(c.at)}  {c.scope:<10} {c.property} {cli._fmt(c.property, c.before)} -> "
              f"{cli._fmt(c.property, c.after)}  {c.event}" + (f"  request {c.request_id}" if c.request_id else ""))
    if not found.changes:
        print("  no changes")


def _print_revert(report: RevertReport) -> None:
    from vmledger import cli

    head = "would request" if report.dry_run else "requested"
    print(f"revert {report.domain} to #{report.to_position}: {len(report.steps)} request"
          f"{'s' if len(report.steps) != 1 else ''}, correlation id {report.correlation_id}"
          + ("  (dry run: nothing written)" if report.dry_run else ""))
    if report.dry_run:
        for s in report.steps:
            print(f"  {head} {s.property} = {cli._fmt(s.property, s.value)}  scope {s.scope}  "
                  f"(now {cli._fmt(s.property, s.current)})")
    for record in report.records:
        cli._print_request(record)
    for u in report.unrevertible:
        print(f"  cannot go back: {u.property} {u.scope} {cli._fmt(u.property, u.value)} "
              f"(now {cli._fmt(u.property, u.current)}): {u.why}")
