"""Benchmark vmledger on SQLite with the simulated hypervisor, in one process.

Run from the repository root (the package installed, e.g. `pip install -e .`):

    python scripts/bench.py                        # full default run, about 1.5 minutes on 2 cores
    python scripts/bench.py --events 10000 --repeat 1   # a quick smoke run
    python scripts/bench.py --db /tmp/ledger.db    # write benchmarks on that file (or sqlite:///URL)

It prints one plain table, headed by the machine line (CPU count, Python,
SQLite, platform).  Every figure is the median of `--repeat` runs, timed with
`time.perf_counter`:

1. durable `set` requests/s with one sequential caller: scope `persistent` on a
   stopped domain, and scope `both` on a running PV domain;
2. durable `set` requests/s with `--callers` concurrent callers (one
   `asyncio.gather`), scope `both`, spread over `--domains` running PV
   domains, and the committed events/s that implies (log head before/after);
3. `rebuild` and `verify` events/s over a log of `--events` events, built in
   bulk through `ledger.log.append` (one stream per domain, up to `--batch`
   events per append) rather than through `set`, and the peak RSS.

The write benchmarks use a fresh temporary directory, or `--db` when given
(their domains then get a unique suffix, and are stopped and undefined at the
end).  The rebuild benchmark always uses a temporary directory.  The
simulated hypervisor keeps its state in `<db>.sim.json`, rewritten (and
fsync'd) on every call that changes it, so it weighs on the write figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

import vmledger
from eventstore.catalogue import Outcome, Reason
from eventstore.errors import ConcurrencyError
from eventstore.events import DomainDefined, DomainStarted, Event, change_event
from eventstore.log import Metadata

MiB, GiB = 2**20, 2**30
PRINCIPAL = "bench"
#: Memory sizes the write benchmarks cycle through: small enough that 50+ running
#: PV domains fit the simulator's 64 GiB host pool, so live changes apply in full.
SIZES = tuple(512 * MiB + i * 64 * MiB for i in range(4))


# -- reporting -----------------------------------------------------------------


def machine_line() -> str:
    """Return the line that says what this ran on."""
    return (f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}, {platform.platform()}")


def peak_rss_mib() -> float:
    """Return this process's peak resident set size in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MiB if sys.platform == "darwin" else peak / 1024


class Table:
    """Rows of `benchmark | median | unit | runs/notes`, printed as plain text."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, name: str, runs: list[float], unit: str, note: str = "") -> None:
        shown = " ".join(f"{r:,.0f}" if r >= 100 else f"{r:,.1f}" for r in runs)
        median = statistics.median(runs)
        text = f"{median:,.0f}" if median >= 100 else f"{median:,.1f}"
        self.rows.append((name, text, unit, f"runs: {shown}" + (f"; {note}" if note else "")))

    def note(self, name: str, value: str, unit: str = "", note: str = "") -> None:
        self.rows.append((name, value, unit, note))

    def print(self) -> None:
        head = ("benchmark", "median", "unit", "runs / notes")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(3)]
        line = lambda r: (f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}").rstrip()  # noqa: E731
        print(line(head))
        print("-" * (sum(widths) + 6 + max(len(r[3]) for r in [head, *self.rows])))
        for r in self.rows:
            print(line(r))


def progress(text: str) -> None:
    """Say what runs now, on stderr, so the table on stdout stays clean."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# -- 1 and 2: durable `set` requests ----------------------------------------------


class AppendCounter:
    """Count the appends of a log and the version conflicts among them (wraps `log.append`)."""

    def __init__(self, log: Any) -> None:
        self.appends = self.conflicts = 0
        self._append = log.append
        log.append = self

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.appends += 1
        try:
            return await self._append(*args, **kwargs)
        except ConcurrencyError:
            self.conflicts += 1
            raise


def tally(records: list[dict[str, Any]]) -> str:
    """Return how the requests ended, e.g. `persistent applied 500, live applied 500`."""
    counts = Counter((scope, o["status"]) for r in records for scope, o in r["outcomes"].items())
    return ", ".join(f"{scope} {status} {n}" for (scope, status), n in sorted(counts.items()))


async def stale_records(ledger: vmledger.Ledger, records: list[dict[str, Any]]) -> int:
    """Count the records `set` returned with a scope still in flight that the log has since completed.

    `set` appends every outcome before it reads the record back, so such a
    record was read from a snapshot older than the caller's own write.
    """
    stale = 0
    for r in records:
        if any(o["status"] == "in_flight" for o in r["outcomes"].values()):
            again = await ledger.request(r["request_id"])
            stale += all(o["status"] != "in_flight" for o in again["outcomes"].values())
    return stale


async def timed_sets(ledger: vmledger.Ledger, calls: list[tuple[str, int]], scope: str,
                     callers: int) -> tuple[float, int, list[dict[str, Any]], int]:
    """Run `set(domain, "memory", size)` for every call with `callers` tasks.

    Returns (seconds, events committed, history records, requests that gave up).
    A request that gives up is one whose `set` ran out of retries on version
    conflicts (`ConcurrencyError`); the others go on.
    """
    shares = [calls[k::callers] for k in range(callers)]
    gave_up = 0

    async def caller(share: list[tuple[str, int]]) -> list[dict[str, Any]]:
        nonlocal gave_up
        done = []
        for name, size in share:
            try:
                done.append(await ledger.set(name, "memory", size, scope=scope, principal=PRINCIPAL))
            except vmledger.ConcurrencyError:
                gave_up += 1
        return done

    before = await ledger.log.head()
    start = time.perf_counter()
    if callers == 1:
        done = [await caller(calls)]
    else:
        done = await asyncio.gather(*(caller(s) for s in shares))
    seconds = time.perf_counter() - start
    events = await ledger.log.head() - before
    return seconds, events, [r for part in done for r in part], gave_up


async def bench_writes(url: str, args: argparse.Namespace, table: Table, cleanup: bool) -> None:
    """Benchmarks 1 and 2 on the ledger at `url`."""
    tag = uuid.uuid4().hex[:6]
    stopped, running = f"bench-{tag}-off", f"bench-{tag}-seq"
    pool = [f"bench-{tag}-{i:02d}" for i in range(args.domains)]
    spec = dict(guest_type="pv", memory=SIZES[0], max_memory=GiB, vcpus=1, max_vcpus=4,
                principal=PRINCIPAL)
    n = args.requests
    async with vmledger.open(url, hypervisor_timeout=30.0) as ledger:
        progress(f"defining {len(pool) + 2} PV domains, starting {len(pool) + 1}")
        for name in (stopped, running, *pool):
            await ledger.define(name, **spec)
        for name in (running, *pool):
            await ledger.start(name)

        cases = [
            ("set persistent, 1 caller (stopped domain)", "persistent", 1,
             lambda r: [(stopped, SIZES[(r + i) % 4]) for i in range(n)]),
            ("set both, 1 caller (running PV domain)", "both", 1,
             lambda r: [(running, SIZES[(r + i) % 4]) for i in range(n)]),
            (f"set both, {args.callers} callers, {len(pool)} domains", "both", args.callers,
             # Request i goes to domain i % len(pool), so the pool's domains see
             # several callers at once: version conflicts are part of the load.
             lambda r: [(pool[i % len(pool)], SIZES[(r + i // len(pool)) % 4]) for i in range(n)]),
        ]
        counter = AppendCounter(ledger.log)
        for name, scope, callers, make in cases:
            rates, event_rates, records, latency, failed, stale = [], [], [], [], 0, 0
            counter.appends = counter.conflicts = 0
            for r in range(args.repeat):
                progress(f"{name}: run {r + 1}/{args.repeat}, {n} requests")
                seconds, events, done, gave_up = await timed_sets(ledger, make(r + 1), scope, callers)
                rates.append(len(done) / seconds)
                event_rates.append(events / seconds)
                # Little's law: callers in flight / completion rate.
                latency.append(seconds / max(len(done), 1) * 1000 * callers)
                records += done
                failed += gave_up
                stale += await stale_records(ledger, done)
            table.add(name, rates, "requests/s",
                      f"{n} requests/run, mean latency {statistics.median(latency):.1f} ms")
            table.add("  committed events", event_rates, "events/s",
                      f"{counter.appends / max(len(records), 1):.2f} appends/request, "
                      f"{counter.conflicts} version conflicts retried")
            problems = [f"{failed} requests gave up (ConcurrencyError after the ledger's retries)"] * bool(failed) + [
                f"{stale} returned records were stale (in_flight, complete in the log)"] * bool(stale)
            table.note("  outcomes", "", "", "; ".join([tally(records), *problems]))
        progress("verifying the write benchmarks' log")
        head = await ledger.verify()
        table.note("  verify after the writes", "ok", "", f"{head:,} events: chain intact, projections equal a rebuild")
        if cleanup:
            progress("stopping and undefining the benchmark's domains")
            for name in (running, *pool):
                await ledger.stop(name)
            for name in (stopped, running, *pool):
                await ledger.undefine(name)


# -- 3: rebuild and verify -------------------------------------------------------


def domain_events(index: int, count: int) -> list[Event]:
    """Return `count` events of one valid PV domain stream: defined, started, then requests.

    Each request is `…Requested` (scope both), a persistent outcome and a live
    outcome; memory, vCPU and media changes alternate, with a few partial
    and refused live outcomes so that drift and history rows are not uniform.
    """
    config = {"memory": GiB, "max_memory": 4 * GiB, "vcpus": 2, "max_vcpus": 4, "numa_nodes": 1,
              "media:hdc": ""}
    events: list[Event] = [
        DomainDefined(domain=f"dom{index:05d}", uuid=f"{index:032x}", guest_type="pv", config=config,
                      capabilities={"balloon": True, "memory_hotplug": None, "vcpu_hotplug": None}),
        DomainStarted(config=config),
    ]
    live = dict(config)
    j = 0
    while len(events) < count:
        j += 1
        request_id = f"r{index:05d}-{j:06d}"
        prop, value = (("memory", GiB + (j % 8) * 128 * MiB), ("vcpus", 1 + j % 4),
                       ("media:hdc", f"/iso/disc{j % 5}.iso"))[j % 3]
        events += [
            change_event(prop, Outcome.REQUESTED)(request_id=request_id, property=prop, value=value,
                                                  scope="both", principal=PRINCIPAL),
            change_event(prop, Outcome.APPLIED)(request_id=request_id, property=prop, scope="persistent",
                                                requested=value, value=value),
        ]
        if j % 10 == 3 and prop == "memory":  # the balloon delivers only part
            live[prop] = value - 64 * MiB
            outcome, reason, message = Outcome.PARTIALLY_APPLIED, None, "host short of memory"
        elif j % 10 == 7 and prop == "media:hdc":  # the guest locked the tray
            outcome, reason, message = Outcome.REFUSED, Reason.TRAY_LOCKED.value, "tray locked"
        else:
            live[prop] = value
            outcome, reason, message = Outcome.APPLIED, None, None
        events.append(change_event(prop, outcome)(request_id=request_id, property=prop, scope="live",
                                                  requested=value, value=live[prop], reason=reason,
                                                  message=message))
    return events[:count]


async def build_log(ledger: vmledger.Ledger, total: int, domains: int, batch: int) -> tuple[float, int]:
    """Append `total` events over `domains` streams in batches; return (seconds, appends)."""
    base, appends = datetime(2024, 1, 1, tzinfo=timezone.utc), 0
    meta = Metadata(principal=PRINCIPAL)
    start = time.perf_counter()
    for d in range(domains):
        count = total // domains + (d < total % domains)
        events = domain_events(d, count)
        for version in range(0, len(events), batch):
            appends += 1
            await ledger.log.append(f"{d:032x}", version, events[version:version + batch], meta,
                                    now=base + timedelta(seconds=appends))
    return time.perf_counter() - start, appends


async def timed(fn: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    start = time.perf_counter()
    result = await fn()
    return time.perf_counter() - start, result


async def bench_rebuild(args: argparse.Namespace, table: Table) -> None:
    """Benchmark 3, in a temporary directory."""
    domains = min(args.rebuild_domains, max(1, args.events // 3))
    with tempfile.TemporaryDirectory(prefix="vmledger-bench-") as tmp:
        async with vmledger.open(os.path.join(tmp, "rebuild.db")) as ledger:
            progress(f"building a log of {args.events:,} events over {domains} domains")
            seconds, appends = await build_log(ledger, args.events, domains, args.batch)
            head = await ledger.log.head()
            if head != args.events:
                raise SystemExit(f"bench: built {head} events, wanted {args.events}")
            table.note(f"bulk append via log.append ({domains} streams)", f"{head / seconds:,.0f}", "events/s",
                       f"one run, {appends} appends, {seconds:.1f} s; RSS peak so far {peak_rss_mib():.0f} MiB")
            for label, fn in (("rebuild", ledger.rebuild), ("verify (chain + projections)", ledger.verify)):
                rates = []
                for r in range(args.repeat):
                    progress(f"{label}: run {r + 1}/{args.repeat}")
                    seconds, position = await timed(fn)
                    if position != head:
                        raise SystemExit(f"bench: {label} reached {position}, head is {head}")
                    rates.append(head / seconds)
                table.add(f"{label}, {head:,} events", rates, "events/s",
                          f"{head / statistics.median(rates):.1f} s; peak RSS {peak_rss_mib():.0f} MiB")


# -- main ------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", help="database path or sqlite:/// URL for the write benchmarks "
                                "(default: a fresh file in a temporary directory)")
    p.add_argument("--events", type=int, default=100_000, help="events in the rebuild log (default 100000)")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is shown (default 3)")
    p.add_argument("--requests", type=int, default=500, help="set requests per write run (default 500)")
    p.add_argument("--callers", type=int, default=64, help="concurrent callers (default 64)")
    p.add_argument("--domains", type=int, default=50, help="running domains the callers share (default 50)")
    p.add_argument("--rebuild-domains", type=int, default=1000, help="streams of the rebuild log (default 1000)")
    p.add_argument("--batch", type=int, default=500, help="events per append when building the log (default 500)")
    p.add_argument("--skip", choices=("writes", "rebuild"), action="append", default=[],
                   help="leave out one part (may be repeated)")
    args = p.parse_args(argv)
    for name in ("events", "repeat", "requests", "callers", "domains", "rebuild_domains", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


async def run(args: argparse.Namespace) -> Table:
    table = Table()
    if "writes" not in args.skip:
        if args.db:
            await bench_writes(args.db, args, table, cleanup=True)
        else:
            with tempfile.TemporaryDirectory(prefix="vmledger-bench-") as tmp:
                await bench_writes(os.path.join(tmp, "writes.db"), args, table, cleanup=False)
    if "rebuild" not in args.skip:
        await bench_rebuild(args, table)
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    start = time.perf_counter()
    table = asyncio.run(run(args))
    print(machine_line())
    writes = ("PostgreSQL (advisory-locked appends, fsync on)" if (args.db or "").startswith(("postgresql:", "postgres:"))
              else "SQLite (WAL, synchronous=FULL)")
    print(f"store for writes: {writes} at {args.db or 'a temporary directory'}; "
          f"rebuild on SQLite in a temporary directory; hypervisor: simulated (JSON state file beside the database); "
          f"median of {args.repeat} run(s)")
    print()
    table.print()
    print()
    print(f"total {time.perf_counter() - start:.0f} s, peak RSS {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
