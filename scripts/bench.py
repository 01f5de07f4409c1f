"""Benchmark vmledger on SQLite with the simulated hypervisor, in one process.

Run from the repository root (the package installed, e.g. `pip install -e .`):

    pip install -e '.[bench]'                      # the peer (eventsourcing) and orjson
    python scripts/bench.py                        # full default run, about 10 minutes on 2 cores
    python scripts/bench.py --events 20000 --repeat 1 --requests 100   # a quick smoke run
    python scripts/bench.py --db /tmp/ledger.db    # write benchmarks on that file (or sqlite:///URL)
    python scripts/bench.py --db postgresql://... --skip rebuild --skip reads   # PostgreSQL beside SQLite
    python scripts/bench.py --pg-cluster --skip rebuild --skip reads   # the same, on a throwaway cluster

It prints plain tables, headed by the machine line (CPU count, Python,
SQLite, platform).  Every figure is the median of `--repeat` runs, timed with
`time.perf_counter`:

1. durable `set` requests/s with one sequential caller: scope `persistent` on a
   stopped domain, and scope `both` on a running PV domain;
2. durable `set` requests/s with `--callers` concurrent callers (one
   `asyncio.gather`, `--callers-requests` a run), scope `both`, spread over
   `--domains` running PV domains, and the committed events/s that implies (log head before/after);
   each write figure notes the process's CPU time per request, all threads
   together, which a busy shared machine disturbs less than the rates; on
   SQLite, each case's first run is then replayed through the writer's
   transactions alone, in one thread without `fsync` (`replay_writer`):
   CPU µs per append, the steadiest figure of the write path within a run;
   and once more with `fsync` (`synchronous=FULL`), nothing else running:
   the committed events/s of the writer's own work, the most the case could
   reach were all the rest (the event loop, the hypervisor, the thread hops)
   free;
3. `rebuild` events/s over a log of `--events` events and `--rebuild-domains`
   domains, built in bulk through `ledger.log.append` (up to `--batch` events
   per append) rather than through `set`, timed in a child process; the
   rebuild folds in worker processes, one per CPU (up to 3), so the memory
   figure is the child's peak RSS plus that many times its largest worker's,
   and the CPU seconds are the child's and its workers', each its own;
   then the same streams taken a request of each domain at a time, with
   request ids as `set` makes them, time-ordered UUIDs
   (`build_interleaved_log`: the order of a real fleet's ledger), rebuilt
   the same way;
   then `verify` over the first log, and a checkpoint since the one it made,
   timed in another child with its peak RSS and its fold's workers', as the
   rebuild's; then `audit` of the month the log spans (it was built
   in bulk at one append a second from 2024-01-01), from the indexed
   `outcome_days`, `history` and `episodes` tables, the median of at least
   3 calls;
   then `vmledger export` of that log to a file and `vmledger import` of the
   file into a new ledger, a process each, one run each; with `--pg-cluster`,
   that file imported into a database of the cluster, then its rebuild and
   `verify` there, as on SQLite;
4. `open`, `drift`, `show NAME` and `get NAME memory` on one fleet of
   `--read-domains` domains whose log holds `--small-events` events, and on a
   copy of it grown to `--events`, the two measured call for call in turn:
   their cost must not grow with the log; and `vmledger show NAME` on the big
   log as the command line runs it, a process each, beside a durable
   `vmledger set`, `vmledger --version` and `python -c pass`: what every
   command pays to start, and a write command to finish;
5. with `--http` (or `--url URL`, the token in VMLEDGER_TOKEN): durable `set`
   requests/s and per-request p50/p99 latency with `--callers` concurrent
   clients over HTTP against `vmledger serve` (started on a temporary SQLite
   file, unless `--url` names a running server), beside the same load on an
   in-process `Ledger` in the same run; both through the same methods, since
   `vmledger.connect()` answers as `vmledger.open()` does;
6. the peer, in the same run: the eventsourcing library on SQLite, one event
   per `save` over 1,000 aggregates, and its replay of `--events` events
   through its mapper; and raw sqlite3 as the limit: one event per durable
   transaction, 100 per transaction, and a scan of the rebuild log decoding
   every event with orjson; the peer's saves are also measured in turn with
   the runs of the two write cases the targets compare with them, and the
   targets take those figures;
7. the console's fleet page, a domain page and two pages of the history
   (`/`, `/domains/NAME`, `/history` and `/history?page=1000` of `vmledger
   serve`), answered in process with a reader's token, on the big log of
   benchmark 4 (skip with `--skip console`, or with `--skip reads`).

A second table gives each target of the speed issue as a ratio from this run.
The write benchmarks use a fresh temporary directory, or `--db` when given
(their domains then get a unique suffix, and are stopped and undefined at the
end); a `postgresql://` `--db` is measured beside SQLite in a temporary
directory, in the same run, the two stores taking turns run by run, and the
header names each store as it answers for itself.  The others always use temporary directories.  The simulated hypervisor
keeps its state in `<db>.sim.json`, where each call that changes it appends a
line (the domain it changed), so it weighs on the write figures, if not with the
number of domains.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import glob
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

import attrs

import vmledger
from vmledger import _loop
from vmledger._compose import uuid7
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.eventstore.backends.common import INSERT, PendingAppend, WriterMemory, batch_steps, chained_rows
from vmledger.eventstore.backends.sqlite import SQLiteEventLog, SyncTx
from vmledger.eventstore.catalogue import Outcome, Reason
from vmledger.eventstore.errors import ConcurrencyError
from vmledger.eventstore.events import DomainDefined, DomainStarted, Event, change_event
from vmledger.eventstore.log import Metadata, run_steps_sync
from vmledger.projections.store import TableProjector

MiB, GiB = 2**20, 2**30
PRINCIPAL = "bench"
#: Memory sizes the write benchmarks cycle through: small enough that 50+ running
#: PV domains fit the simulator's 64 GiB host pool, so live changes apply in full.
SIZES = tuple(512 * MiB + i * 64 * MiB for i in range(4))


# -- reporting -----------------------------------------------------------------


def machine_line() -> str:
    """Return the line that says what this ran on."""
    return (f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}, {platform.platform()}; "
            f"event loop: {_loop.loop_name(_loop.loop_factory())}, as the command line picks it (VMLEDGER_LOOP)")


def thread_cpu() -> Counter[str]:
    """Return the CPU seconds this process's threads have used, by group: the event loop's, the writer's, the others'.

    The event loop runs in the main thread; the SQLite writer in its own
    (PostgreSQL's writing runs in the event loop).  A process bound by the
    interpreter's lock runs one of them at a time, so their sum per request
    is what a rate on one CPU is made of.  Read from Linux's per-thread
    counters (/proc/self/task/*/stat, in clock ticks); empty elsewhere.
    """
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    cpu: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                name = names.get(int(tid), "")
                group = ("event loop" if name == "MainThread" else
                         "writer thread" if name.startswith("vmledger-sqlite-writer") else "other threads")
                cpu[group] += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return cpu


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Return this process's peak resident set size in MiB, or its largest waited-for child's (RUSAGE_CHILDREN).

    A process's own peak is Linux's VmHWM, the high-water mark of the
    program it runs.  Its ru_maxrss also keeps that of the process it was
    forked from, up to the exec: a child of this benchmark, which has grown
    to 100 MiB and more by then, would report that as its own (on a log
    of 1M events, the rebuilding child's 53 MiB read as 71 to 97).  A
    child's figure is its ru_maxrss, and may likewise hold its parent's size
    when it started it: the rebuild's workers start at the rebuilding
    process's 50 MiB or so and grow past it.  ru_maxrss is KiB on Linux,
    bytes on macOS.
    """
    if who == resource.RUSAGE_SELF:
        with contextlib.suppress(OSError):
            with open("/proc/self/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
    peak = resource.getrusage(who).ru_maxrss
    return peak / MiB if sys.platform == "darwin" else peak / 1024


class TreeRss:
    """Samples, while in use, the resident memory of this process and of every process it started, together.

    `peak` is the largest sum seen, in MiB, every `interval` seconds: the
    memory a rebuild or a verify takes with its worker processes, which
    each reach their own peak at their own time.  `workers` is the most
    processes it started that it saw running at once.  A sample costs
    about 0.3 ms of CPU, in the process measured: every 50 ms, under 1%.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak, self.workers = interval, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "TreeRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            pids = _tree(os.getpid())
            self.workers = max(self.workers, len(pids) - 1)
            self.peak = max(self.peak, sum(map(_rss_mib, pids)))


def _tree(pid: int) -> list[int]:
    """Return `pid` and the pids of its descendants, as /proc has them (a thread's children are the process's)."""
    found = [pid]
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                for child in f.read().split():
                    found += _tree(int(child))
    return found


def _rss_mib(pid: int) -> float:
    """Return a process's resident set size in MiB (0 once it has ended)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


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
    """Count the appends of a log and the version conflicts among them (wraps `log.append`).

    While `kept` is a list, each append's arguments go into it too, in the
    order the appends were queued, for `replay_writer`.
    """

    def __init__(self, log: Any) -> None:
        self.appends = self.conflicts = 0
        self.kept: list[tuple[Any, ...]] | None = None
        self._log = log
        self._append = log.append
        log.append = self

    @property
    def commits(self) -> int:
        """Return the write transactions the log has committed so far."""
        return self._log.commits

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.appends += 1
        if self.kept is not None:
            self.kept.append((*args, kwargs["now"]))
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
                     callers: int) -> tuple[float, float, Counter[str], int, list[dict[str, Any]], int]:
    """Run `set(domain, "memory", size)` for every call with `callers` tasks.

    Returns (seconds, CPU seconds of the process, those of its threads by
    group (`thread_cpu`), events committed, history records, requests that
    gave up).  CPU time, all threads together, is the steadier figure where
    the machine is shared.
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
    start, cpu, threads = time.perf_counter(), time.process_time(), thread_cpu()
    if callers == 1:
        done = [await caller(calls)]
    else:
        done = await asyncio.gather(*(caller(s) for s in shares))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    threads = thread_cpu() - threads
    events = await ledger.log.head() - before
    return seconds, cpu, threads, events, [r for part in done for r in part], gave_up


async def describe_store(ledger: vmledger.Ledger) -> str:
    """Return what store the ledger writes to and how it commits, as the store itself answers."""
    if isinstance(ledger.log, SQLiteEventLog):
        (version,), = await ledger.log.fetch_all("SELECT sqlite_version()")
        (mode,), = await ledger.log.fetch_all("PRAGMA journal_mode")
        (sync,), = await ledger.log.fetch_all("PRAGMA synchronous")
        sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync)
        return f"SQLite {version} (journal_mode={mode}, synchronous={sync}), group commit in a writer thread"
    (version, fsync, commit), = await ledger.log.fetch_all(
        "SELECT version(), current_setting('fsync'), current_setting('synchronous_commit')")
    return (f"{' '.join(version.split()[:2])} (fsync={fsync}, synchronous_commit={commit}), "
            f"group commit under an advisory lock")


@attrs.define
class WriteStore:
    """One store the write benchmarks run on, and what they gathered there."""

    url: str
    cleanup: bool  # stop and undefine the benchmark's domains at the end (a `--db` the user keeps)
    key: str = ""  # prefixes the names of the figures kept in `results`
    ledger: Any = None
    scratch: str = ""  # a temporary directory for the copies `replay_writer` starts from
    description: str = ""
    label: str = ""
    rows: list[Callable[[Table], None]] = attrs.field(factory=list)


async def bench_writes(stores: list[WriteStore], args: argparse.Namespace, table: Table,
                       results: dict[str, float], *, labelled: bool = False, peer: bool = False) -> list[str]:
    """Benchmarks 1 and 2 on each store, their runs in turn; return what each store is (see `describe_store`).

    Run r of a case runs on every store before run r + 1 runs on any, so that
    stores compared in one run (PostgreSQL against SQLite) meet the same
    minutes of a shared machine; with `peer`, so does a run of the peer's
    saves, after each run of the two cases a target compares with them.
    `labelled` names the store in the rows.
    """
    tag = uuid.uuid4().hex[:6]
    stopped, running = f"bench-{tag}-off", f"bench-{tag}-seq"
    pool = [f"bench-{tag}-{i:02d}" for i in range(args.domains)]
    spec = dict(guest_type="pv", memory=SIZES[0], max_memory=GiB, vcpus=1, max_vcpus=4,
                principal=PRINCIPAL)
    n = args.requests
    async with contextlib.AsyncExitStack() as stack:
        for store in stores:
            store.scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="vmledger-bench-"))
            # On PostgreSQL the simulator's state would sit in the working directory, where a run
            # stopped halfway leaves its domains: a fresh one, in a temporary directory.
            sim = (SimulatedHypervisor(os.path.join(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="vmledger-bench-")), "bench.sim.json")) if on_postgres(store.url) else "sim")
            store.ledger = ledger = await stack.enter_async_context(
                vmledger.open(store.url, hypervisor=sim, hypervisor_timeout=30.0))
            store.description = await describe_store(ledger)
            store.label = f" [{store.description.split(' (')[0]}]" if labelled else ""
            progress(f"{store.description}: defining {len(pool) + 2} PV domains, starting {len(pool) + 1}")
            for name in (stopped, running, *pool):
                await ledger.define(name, **spec)
            for name in (running, *pool):
                await ledger.start(name)

        many = args.callers_requests
        cases = [
            ("set persistent, 1 caller (stopped domain)", "persistent", 1, n,
             lambda r: [(stopped, SIZES[(r + i) % 4]) for i in range(n)]),
            ("set both, 1 caller (running PV domain)", "both", 1, n,
             lambda r: [(running, SIZES[(r + i) % 4]) for i in range(n)]),
            (f"set both, {args.callers} callers, {len(pool)} domains", "both", args.callers, many,
             # Request i goes to domain i % len(pool), so the pool's domains see
             # several callers at once: version conflicts are part of the load.
             lambda r: [(pool[i % len(pool)], SIZES[(r + i // len(pool)) % 4]) for i in range(many)]),
        ]
        counters = [AppendCounter(store.ledger.log) for store in stores]
        for name, scope, callers, count, make in cases:
            runs = [dict(rates=[], event_rates=[], records=[], latency=[], cpu=[], threads=[], failed=0, stale=0)
                    for _ in stores]
            for counter in counters:
                counter.appends = counter.conflicts = 0
            replays: list[tuple[WriteStore, str, list[tuple[Any, ...]], int, int]] = []
            # The targets set the events/s of these two cases against the peer's saves: measured in
            # turn with their runs, so that both meet the same minutes of the machine.
            against = "callers" if callers > 1 else "persistent" if (scope, callers) == ("persistent", 1) else None
            peer_rates: list[float] = []
            for r in range(args.repeat):
                for store, got, counter in zip(stores, runs, counters):
                    progress(f"{name}{store.label}: run {r + 1}/{args.repeat}, {count} requests")
                    if r == 0 and not on_postgres(store.url):
                        # The first run's appends, and the database they were made on, for `replay_writer`.
                        base = os.path.join(store.scratch, f"replay-{len(store.rows)}.db")
                        copy_database(store.ledger.log.path, base)
                        counter.kept, commits, conflicts = [], counter.commits, counter.conflicts
                    seconds, cpu_seconds, threads, events, done, gave_up = await timed_sets(
                        store.ledger, make(r + 1), scope, callers)
                    if counter.kept is not None:
                        replays.append((store, base, counter.kept, counter.commits - commits,
                                        counter.conflicts - conflicts))
                        counter.kept = None
                    got["rates"].append(len(done) / seconds)
                    got["event_rates"].append(events / seconds)
                    # Little's law: callers in flight / completion rate.
                    got["latency"].append(seconds / max(len(done), 1) * 1000 * callers)
                    got["cpu"].append(cpu_seconds / max(len(done), 1) * 1000)
                    got["threads"].append({k: v / max(len(done), 1) * 1000 for k, v in threads.items()})
                    got["records"] += done
                    got["failed"] += gave_up
                    got["stale"] += await stale_records(store.ledger, done)
                if peer and against:
                    progress(f"{name}: the peer's saves, run {r + 1}/{args.repeat}")
                    peer_rates.append(await peer_saves_run(args))
            for store, got, counter in zip(stores, runs, counters):
                if against:
                    results[f"{store.key}{against}_events"] = statistics.median(got["event_rates"])
                store.rows.append(functools.partial(_write_rows, name + store.label, got, count, counter.appends,
                                                    counter.conflicts))
            for store, base, kept, commits, conflicts in replays:
                progress(f"{name}{store.label}: the writer's transactions, replayed")
                per_commit = max(1, round(len(kept) / max(commits, 1)))
                costs = [replay_writer(base, kept, per_commit, conflicts) for _ in range(args.repeat + 2)]
                store.rows.append(lambda table, costs=costs, per_commit=per_commit, count=len(kept): table.add(
                    "  the writer's transactions, replayed", costs, "µs/append",
                    f"CPU of the writer's Python and SQL alone (one thread, synchronous=OFF): the first run's "
                    f"{count:,} appends, {per_commit} per transaction (its mean group commit), on a copy of the "
                    f"database it started from"))
                ceiling = [replay_writer(base, kept, per_commit, conflicts, durable=True) for _ in range(args.repeat)]
                if against:
                    results[f"{store.key}{against}_ceiling"] = statistics.median(ceiling)
                store.rows.append(lambda table, ceiling=ceiling: table.add(
                    "  the same, durably", ceiling, "events/s",
                    "committed events/s of those transactions with synchronous=FULL, one thread, nothing else "
                    "running: the most the writer's own work allows this case"))
            if peer_rates:
                results[f"peer_saves_{against}"] = statistics.median(peer_rates)
                stores[-1].rows.append(lambda table, rates=peer_rates: table.add(
                    "  peer: eventsourcing, 1 event per save, in turn with these runs", rates, "events/s",
                    f"{args.peer_events:,} saves over 1,000 aggregates a run; the reference of this case's target"))
        for store in stores:
            progress(f"verifying the write benchmarks' log{store.label}")
            head = await store.ledger.verify()
            for add in store.rows:
                add(table)
            table.note("  verify after the writes", "ok", "",
                       f"{head:,} events: chain intact, projections equal a rebuild")
            if store.cleanup:
                progress(f"stopping and undefining the benchmark's domains{store.label}")
                for name in (running, *pool):
                    await store.ledger.stop(name)
                for name in (stopped, running, *pool):
                    await store.ledger.undefine(name)
    return [store.description for store in stores]


def copy_database(source_path: str, path: str) -> None:
    """Copy the SQLite database at `source_path` to `path`, as one snapshot of its committed state."""
    source = sqlite3.connect(source_path)
    target = sqlite3.connect(path)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def replay_writer(base: str, appends: list[tuple[Any, ...]], per_commit: int, conflicts: int, *,
                  durable: bool = False) -> float:
    """Return the CPU µs per append of the writer's transactions, replayed on a copy of `base` (see `durable`).

    The appends (`stream, expected version, events, metadata, time`, in the
    order they were queued) are committed `per_commit` at a time, each
    transaction as the SQLite writer runs it (`BEGIN IMMEDIATE`, the batch's
    statements, `COMMIT`), but in this thread and with `synchronous=OFF`:
    the Python and SQL of a group commit, without the `fsync`, the thread
    hop and the other threads a run shares the interpreter with.  Its runs
    agree within about 10% where the rates do not; on a shared machine the
    CPU time of the same work still moves between hours (twofold on the
    machine of the speed issue), so compare two versions of the write path
    by their figures of the same hour.
    The appends the run refused for a version conflict (`conflicts` of them)
    are refused here too, and cost what a refusal costs.

    With `durable`, the transactions are committed as the writer commits
    them (`synchronous=FULL`), seeded from its memory of the rows as the
    writer's are (`WriterMemory`), and the figure is the committed events
    per second of wall time: what the writer's own work allows, the rest free.
    """
    path = base + ".replay"
    shutil.copyfile(base, path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'OFF'}")
        projector, refused, committed, cpu = TableProjector(), 0, 0, 0.0
        memory = WriterMemory() if durable else None
        wall = time.perf_counter()
        for i in range(0, len(appends), per_commit):
            batch = [PendingAppend(stream=stream, expected=expected, events=tuple(events), metadata=metadata, now=now,
                                   future=None)  # type: ignore[arg-type]
                     for stream, expected, events, metadata, now in appends[i:i + per_commit]]
            start = time.process_time()
            conn.execute("BEGIN IMMEDIATE")
            outcomes = run_steps_sync(SyncTx(conn), batch_steps(projector.batch(), batch, memory))
            conn.execute("COMMIT")
            cpu += time.process_time() - start
            refused += sum(isinstance(o, Exception) for o in outcomes)
            committed += sum(len(o) for o in outcomes if not isinstance(o, Exception))
        wall = time.perf_counter() - wall
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path + suffix)
    if refused != conflicts:
        raise SystemExit(f"bench: the replay refused {refused} appends where the run refused {conflicts}")
    if durable:
        return committed / wall
    return cpu / max(len(appends), 1) * 1e6


def _by_thread(runs: list[dict[str, float]]) -> str:
    """Return the median CPU ms/request of each group of threads over runs (see `thread_cpu`), as a parenthesis."""
    groups = [g for g in ("event loop", "writer thread", "other threads") if any(g in r for r in runs)]
    parts = [f"{g} {statistics.median(r.get(g, 0.0) for r in runs):.2f}" for g in groups]
    return f" ({', '.join(parts)})" if parts else ""


def _write_rows(name: str, got: dict[str, Any], n: int, appends: int, conflicts: int, table: Table) -> None:
    """Add the rows of one write case on one store (see `bench_writes`) to `table`."""
    records = got["records"]
    table.add(name, got["rates"], "requests/s",
              f"{n} requests/run, mean latency {statistics.median(got['latency']):.1f} ms, "
              f"CPU {statistics.median(got['cpu']):.2f} ms/request{_by_thread(got['threads'])}")
    table.add("  committed events", got["event_rates"], "events/s",
              f"{appends / max(len(records), 1):.2f} appends/request, {conflicts} version conflicts retried")
    problems = [f"{got['failed']} requests gave up (ConcurrencyError after the ledger's retries)"] * bool(
        got["failed"]) + [f"{got['stale']} returned records were stale (in_flight, complete in the log)"] * bool(
        got["stale"])
    table.note("  outcomes", "", "", "; ".join([tally(records), *problems]))


# -- 5: durable `set` over HTTP -----------------------------------------------------


async def latency_sets(ledgers: list[Any], calls: list[tuple[str, int]], callers: int) -> tuple[float, list[float]]:
    """Run `set(domain, "memory", size, scope="both")` for every call with `callers` tasks.

    Caller k uses `ledgers[k % len(ledgers)]`: one `Ledger` shared in
    process, or one `vmledger.connect()` per client over HTTP.
    Returns (seconds, each request's latency in seconds).
    """
    latencies: list[float] = []

    async def caller(ledger: Any, share: list[tuple[str, int]]) -> None:
        for name, size in share:
            start = time.perf_counter()
            await ledger.set(name, "memory", size, scope="both", principal=PRINCIPAL)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(caller(ledgers[k % len(ledgers)], calls[k::callers]) for k in range(callers)))
    return time.perf_counter() - start, latencies


def percentile(values: list[float], q: float) -> float:
    """Return the `q` quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def load_sets(ledgers: list[Any], args: argparse.Namespace, table: Table, name: str) -> float:
    """Define `--domains` running PV domains on `ledgers[0]`, time `--repeat` runs of concurrent sets by the others.

    With one ledger, it both defines and sets.  Returns the median rate.
    """
    ledger, ledgers = ledgers[0], ledgers[1:] or ledgers
    tag = uuid.uuid4().hex[:6]
    pool = [f"bench-{tag}-{i:02d}" for i in range(args.domains)]
    for domain in pool:
        await ledger.define(domain, guest_type="pv", memory=SIZES[0], max_memory=GiB, vcpus=1, max_vcpus=4,
                            principal=PRINCIPAL)
        await ledger.start(domain)
    rates, p50, p99 = [], [], []
    for r in range(args.repeat):
        progress(f"{name}: run {r + 1}/{args.repeat}, {args.requests} requests, {args.callers} clients")
        calls = [(pool[i % len(pool)], SIZES[(r + 1 + i // len(pool)) % 4]) for i in range(args.requests)]
        seconds, latencies = await latency_sets(ledgers, calls, args.callers)
        rates.append(len(latencies) / seconds)
        p50.append(percentile(latencies, 0.5) * 1000)
        p99.append(percentile(latencies, 0.99) * 1000)
    table.add(name, rates, "requests/s", f"p50 {statistics.median(p50):.1f} ms, p99 {statistics.median(p99):.1f} ms")
    return statistics.median(rates)


class RawClient:
    """A minimal HTTP/1.1 keep-alive client with the one method the load needs: `set`.

    It stands for a controller written in any language, so that the figure
    is the server's: httpx spends about 8 ms of CPU per request here, more
    than the server does, on the same two cores.
    """

    def __init__(self, url: str, token: str | None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http":
            raise SystemExit("bench: the raw client speaks plain http:// only")
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def set(self, name: str, prop: str, value: Any, *, scope: str, principal: str) -> dict[str, Any]:
        """POST one set request and return the answer's JSON; raise on any status but 201."""
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        body = json.dumps({"property": prop, "value": value, "scope": scope}).encode()
        writer.write((f"POST /v1/domains/{name}/requests HTTP/1.1\r\nHost: {self.host}\r\n{self.auth}"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name_, _, value_ = line.decode("latin-1").partition(":")
            if name_.lower() == "content-length":
                length = int(value_)
        answer = json.loads(await reader.readexactly(length))
        if status != 201:
            raise SystemExit(f"bench: set answered {status}: {answer}")
        return answer

    async def aclose(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            await self.streams[1].wait_closed()


@contextlib.asynccontextmanager
async def bench_server(db: str) -> Any:
    """Run `vmledger serve` on `db` with an admin token; yield (URL, token)."""
    import subprocess

    from vmledger.service.tokens import TokenStore

    async def no_reads(sql: str, params: Any) -> list:
        raise AssertionError(sql)

    async with vmledger.open(db):  # a ledger first: serve refuses a database that holds only tokens
        pass
    token = await TokenStore(db, no_reads).add("bench", "admin")
    log = tempfile.NamedTemporaryFile(prefix="vmledger-bench-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "vmledger.cli", "--db", db, "--timeout", "30", "serve", "--port", "0"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=os.path.dirname(db))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with open(log.name, encoding="utf-8", errors="replace") as f:
                found = [line.split()[-1] for line in f if line.startswith("vmledger: serving on ")]
            if found:
                yield found[0], token
                return
            await asyncio.sleep(0.1)
        with open(log.name, encoding="utf-8", errors="replace") as f:
            said = f.read().strip()
        raise SystemExit(f"bench: vmledger serve did not start: {said or 'it said nothing'}")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        os.unlink(log.name)


async def bench_http(args: argparse.Namespace, table: Table, results: dict[str, float]) -> None:
    """Benchmark 5: concurrent durable sets in process, then over HTTP, in the same run."""
    with tempfile.TemporaryDirectory(prefix="vmledger-bench-http-") as tmp:
        async with vmledger.open(os.path.join(tmp, "inproc.db"), hypervisor_timeout=30.0) as ledger:
            results["inproc_requests"] = await load_sets(
                [ledger], args, table, f"set both, {args.callers} callers, in process")
        if args.url:
            server = contextlib.nullcontext((args.url, os.environ.get("VMLEDGER_TOKEN")))
        else:
            server = bench_server(os.path.join(tmp, "http.db"))
        async with server as (url, token), contextlib.AsyncExitStack() as clients:
            # The domains are defined through vmledger.connect(); the load comes from one
            # light client each (a connection apiece, as separate controllers have).
            remote = await clients.enter_async_context(vmledger.connect(url, token=token))
            raw = [RawClient(url, token) for _ in range(args.callers)]
            for client in raw:
                clients.push_async_callback(client.aclose)
            results["http_requests"] = await load_sets(
                [remote, *raw], args, table, f"set both, {args.callers} clients, over HTTP")
            # The same load through vmledger.connect(), one client object each, for comparison.
            remotes = [await clients.enter_async_context(vmledger.connect(url, token=token))
                       for _ in range(args.callers)]
            await load_sets(remotes, args, table, f"  the same through {args.callers} vmledger.connect()")


def bulk_open(path: str) -> Any:
    """Open a log built in bulk (`build_log`), whose domains the simulator never saw, on a simulator of its own.

    `vmledger.open(path)` would start the simulator afresh from the domains
    the ledger recorded, which is not what these benchmarks measure.  A
    PostgreSQL ledger's sits in the temporary directory.
    """
    sim = (os.path.join(tempfile.gettempdir(), f"vmledger-bench-{os.getpid()}.bulk-sim.json") if on_postgres(path)
           else path + ".bulk-sim.json")
    return vmledger.open(path, hypervisor=SimulatedHypervisor(sim))


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


async def build_log(ledger: vmledger.Ledger, total: int, domains: int, batch: int,
                    have: list[int] | None = None) -> tuple[float, int]:
    """Grow a log to `total` events over `domains` streams in batches; return (seconds, appends).

    `have` holds the events each stream has already (from an earlier call),
    and is updated, so a log can be measured small and then grown.
    """
    have = have if have is not None else [0] * domains
    base, appends = datetime(2024, 1, 1, tzinfo=timezone.utc), sum(1 for h in have if h)
    meta = Metadata(principal=PRINCIPAL)
    start = time.perf_counter()
    for d in range(domains):
        count = total // domains + (d < total % domains)
        events = domain_events(d, count)
        for version in range(have[d], len(events), batch):
            appends += 1
            await ledger.log.append(f"{d:032x}", version, events[version:version + batch], meta,
                                    now=base + timedelta(seconds=appends))
        have[d] = max(have[d], len(events))
    return time.perf_counter() - start, appends


def build_interleaved_log(path: str, total: int, domains: int) -> None:
    """Fill the events table of a new ledger at `path` with `total` events over `domains` streams as a fleet's requests come.

    The streams are `domain_events`', but taken a request at a time from each
    domain in turn, with request ids as `set` makes them (UUIDs version 7 of
    the time each request is recorded at): the order a rebuild meets in a
    real ledger, where `build_log`'s batches of one domain at a time,
    numbered in order, are the easiest for it.  The rows are
    chained here and inserted as they are, projections left empty: the
    rebuild timed next makes them.  Run in a child process
    (`--child-interleaved`), whose memory holds every stream.
    """
    async def schema() -> None:
        async with bulk_open(path):
            pass

    asyncio.run(schema())
    ids = random.Random(1)
    streams = [domain_events(d, total // domains + (d < total % domains)) for d in range(domains)]
    meta, base = Metadata(principal=PRINCIPAL), datetime(2024, 1, 1, tzinfo=timezone.utc)
    have, position, last_hash, rows = [0] * domains, 0, None, []
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        while position < total:
            for d, events in enumerate(streams):
                # The definition and the start first, then one request (its three events) at a time.
                step = events[have[d]:have[d] + (2 if have[d] == 0 else 3)]
                if not step:
                    continue
                at = base + timedelta(seconds=position + 1)
                if hasattr(step[0], "request_id"):  # one request's events: a new id for the three
                    request_id = uuid7(int(at.timestamp() * 1000), ids.getrandbits(80))
                    step = [attrs.evolve(e, request_id=request_id) for e in step]
                made, _ = chained_rows(f"{d:032x}", have[d], step, meta, at, position, last_hash)
                position, last_hash, have[d] = made[-1][0], made[-1][-1], have[d] + len(step)
                rows += made
                if len(rows) >= 10_000:
                    conn.executemany(INSERT, rows)
                    rows = []
        conn.executemany(INSERT, rows)


async def timed(fn: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    start = time.perf_counter()
    result = await fn()
    return time.perf_counter() - start, result


async def bench_rebuild(args: argparse.Namespace, table: Table, results: dict[str, float]) -> None:
    """Benchmarks 3 and 4, in a temporary directory; the rebuild runs in a child process for its own peak RSS."""
    domains = min(args.rebuild_domains, max(1, args.events // 3))
    with tempfile.TemporaryDirectory(prefix="vmledger-bench-") as tmp:
        big = os.path.join(tmp, "rebuild.db")
        async with bulk_open(big) as ledger:
            progress(f"building a log of {args.events:,} events over {domains:,} domains")
            seconds, appends = await build_log(ledger, args.events, domains, args.batch)
        table.note(f"bulk append via log.append ({domains:,} streams)", f"{args.events / seconds:,.0f}", "events/s",
                   f"one run, {appends:,} appends of up to {args.batch} events, {seconds:.1f} s")
        rate, rss = await rebuild_in_child(big, f"rebuild, {args.events:,} events, {domains:,} domains", args, table)
        results.update(rebuild=rate, rebuild_rss=rss, rss_limit=256)
        mixed = os.path.join(tmp, "interleaved.db")
        progress(f"building a log of {args.events:,} events over {domains:,} domains, a request at a time")
        child = await asyncio.create_subprocess_exec(
            sys.executable, os.path.abspath(__file__), "--child-interleaved", mixed, "--events", str(args.events),
            "--rebuild-domains", str(domains))
        if await child.wait():
            raise SystemExit(f"bench: building the interleaved log failed with exit {child.returncode}")
        await rebuild_in_child(
            mixed, "  the same events, a request of each domain in turn, ids as set makes them: rebuild", args, table)
        for leftover in glob.glob(mixed + "*"):
            os.remove(leftover)
        rss = await verify_in_child(big, f"verify, {args.events:,} events, {domains:,} domains", args, table)
        results.update(verify_rss=rss)
        await bench_audit(big, args, table, results)
        if args.pg_rebuild:
            await bench_pg_rebuild(big, args.pg_rebuild, args, table, tmp)
        progress("vmledger export of that log to a file, then vmledger import of the file: a process each")
        exported, imported = await asyncio.to_thread(transfer_costs, big, tmp)
        table.add(f"vmledger export, {args.events:,} events", [args.events / exported], "events/s",
                  f"{exported:.1f} s, to a file, start to exit")
        table.add("  vmledger import of that file", [args.events / imported], "events/s",
                  f"{imported:.1f} s, into a new SQLite ledger, start to exit: "
                  "each chunk checked, stored and folded, in one transaction")
        rates = []
        for r in range(args.repeat):
            progress(f"raw scan + orjson decode: run {r + 1}/{args.repeat}")
            rates.append(await asyncio.to_thread(raw_scan_decode, big))
        table.add(f"raw scan + orjson decode, {args.events:,} events", rates, "events/s")
        results["raw_scan"] = statistics.median(rates)


async def verify_in_child(path: str, label: str, args: argparse.Namespace, table: Table) -> float:
    """Time `verify`, then a checkpoint since it, of the ledger at `path` in a child process; add them to `table`.

    Returns the peak RSS of the child and its workers.
    """
    progress(f"{label}, then a checkpoint since it: one run each in a child process")
    child = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "--child-verify", path, *parts_option(args),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await child.communicate()
    if child.returncode:
        raise SystemExit(f"bench: the verify child failed with exit {child.returncode}")
    verified = json.loads(out)
    rss, workers = with_workers(verified)
    table.add(label, [args.events / verified["verify"]], "events/s",
              f"{verified['verify']:.1f} s; peak RSS of the child {verified['rss']:.0f} MiB "
              f"(verify and the checkpoint below together){workers}")
    table.note("  verify --checkpoint since that verify", f"{verified['checkpoint']:.1f}", "s",
               "no new events: the chain from the checkpoint on, every domain's rows against its digest")
    return rss


async def bench_pg_rebuild(path: str, url: str, args: argparse.Namespace, table: Table, tmp: str) -> None:
    """Import the rebuild log at `path` into the empty PostgreSQL database `url`, then time its rebuild and verify there."""
    import subprocess

    progress("vmledger export of the rebuild log, then vmledger import of it into PostgreSQL")
    lines, cli = os.path.join(tmp, "to-postgres.jsonl"), [sys.executable, "-m", "vmledger.cli"]
    with open(lines, "w") as out:
        await asyncio.to_thread(subprocess.run, [*cli, "--db", path, "export"], stdin=subprocess.DEVNULL,
                                stdout=out, check=True)
    start = time.perf_counter()
    await asyncio.to_thread(subprocess.run, [*cli, "--db", url, "--hypervisor", f"sim:{lines}.sim.json", "import",
                                             lines], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
    imported = time.perf_counter() - start
    for leftover in glob.glob(lines + "*"):
        os.remove(leftover)
    table.add("vmledger import into PostgreSQL, the same events", [args.events / imported], "events/s",
              f"{imported:.1f} s, start to exit: each chunk checked, stored and folded, in one transaction")
    await rebuild_in_child(url, "  rebuild on PostgreSQL", args, table)
    await verify_in_child(url, "  verify on PostgreSQL", args, table)


def transfer_costs(path: str, tmp: str) -> tuple[float, float]:
    """Return the seconds of `vmledger export` of the ledger at `path` to a file in `tmp`, and of `vmledger import` of it."""
    import subprocess

    lines, moved = os.path.join(tmp, "export.jsonl"), os.path.join(tmp, "imported.db")
    cli = [sys.executable, "-m", "vmledger.cli"]
    start = time.perf_counter()
    with open(lines, "w") as out:
        subprocess.run([*cli, "--db", path, "export"], stdin=subprocess.DEVNULL, stdout=out, check=True)
    exported = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([*cli, "--db", moved, "--hypervisor", f"sim:{moved}.sim.json", "import", lines],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
    imported = time.perf_counter() - start
    for leftover in [lines, *glob.glob(moved + "*")]:
        os.remove(leftover)
    return exported, imported


def parts_option(args: argparse.Namespace) -> list[str]:
    """Return the `--parts` option a child takes, if one was given."""
    return ["--parts", str(args.parts)] if args.parts else []


def force_parts(parts: int) -> None:
    """Make this process's rebuild and verify fold in `parts` worker processes, whatever its CPUs."""
    from vmledger.projections import store

    store._cpus = lambda: parts


def with_workers(measured: dict[str, Any]) -> tuple[float, str]:
    """Return the peak RSS of a child and its worker processes together (`TreeRss`), and the words for it.

    The workers of a rebuild's or a verify's fold, and verify's chain
    check, run beside the child: the memory it takes is theirs and its own
    together.  Without workers, it is the child's own peak (`rss`).
    """
    if not measured["workers"]:
        return measured["rss"], ""
    rss = max(measured["rss"], measured["tree_rss"])
    return rss, (f"; with its {measured['workers']} worker processes at most {rss:.0f} MiB together "
                 f"(sampled every 50 ms), the largest worker {measured['worker_rss']:.0f} MiB")


async def rebuild_in_child(path: str, label: str, args: argparse.Namespace, table: Table) -> tuple[float, float]:
    """Time `--repeat` rebuilds of the log at `path` in a child process, add them to `table`; return the median rate and the peak RSS."""
    progress(f"{label.strip()}: {args.repeat} run(s) in a child process")
    child = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "--child-rebuild", path, "--repeat", str(args.repeat),
        *parts_option(args), stdout=asyncio.subprocess.PIPE)
    out, _ = await child.communicate()
    if child.returncode:
        raise SystemExit(f"bench: the rebuild child failed with exit {child.returncode}")
    measured = json.loads(out)
    rss, workers = with_workers(measured)
    rate = statistics.median(measured["rates"])
    # CPU time varies less than the rate where the machine is shared: that of the run of median CPU, by process.
    own, theirs = sorted(measured["cpu"], key=sum)[len(measured["cpu"]) // 2]
    table.add(label, measured["rates"], "events/s",
              f"{args.events / rate:.1f} s, of which {statistics.median(measured['after_fold']):.1f} s after the "
              f"fold reached the head (the rows a rebuild makes at its end, the indexes it dropped, and the "
              f"commit); "
              f"CPU {own:.1f} s in the child + {theirs:.1f} s in its workers; "
              f"peak RSS of the child {measured['rss']:.0f} MiB{workers}")
    return rate, rss


async def bench_audit(path: str, args: argparse.Namespace, table: Table, results: dict[str, float]) -> None:
    """Time `audit` over January 2024, the month the bulk-built log at `path` spans, and over one domain of it."""
    month = {"since": datetime(2024, 1, 1, tzinfo=timezone.utc), "until": datetime(2024, 2, 1, tzinfo=timezone.utc)}
    async with bulk_open(path) as ledger:
        for label, kwargs in (("audit of a month", {}), ("  the same, one domain", {"domain": "dom00000"})):
            runs = []
            for r in range(max(args.repeat, 3)):
                progress(f"{label.strip()}: run {r + 1}")
                start = time.perf_counter()
                report = await ledger.audit(**month, **kwargs)
                runs.append(time.perf_counter() - start)
            requests = sum(c.requests for c in report.requests if c.scope == "persistent")
            table.add(f"{label}, {args.events:,} events", [1 / t for t in runs], "reports/s",
                      f"{statistics.median(runs) * 1000:.0f} ms; requests: {requests:,}, drift episodes: "
                      f"{len(report.episodes):,}")
            if not kwargs:
                results.update(audit=statistics.median(runs), audit_limit=1.0)


async def bench_reads(args: argparse.Namespace, table: Table, results: dict[str, float]) -> None:
    """Benchmark 4: one fleet of `--read-domains` domains, its log at `--small-events` and a copy grown to `--events`.

    The two logs are measured side by side, call for call, so that a slow
    spell of a shared machine weighs on both alike.
    """
    domains = min(args.read_domains, max(1, args.small_events // 10))
    have = [0] * domains
    with tempfile.TemporaryDirectory(prefix="vmledger-bench-") as tmp:
        small, big = os.path.join(tmp, "small.db"), os.path.join(tmp, "big.db")
        for path, total in ((small, args.small_events), (big, args.events)):
            if path == big:
                shutil.copyfile(small, big)
            async with bulk_open(path) as ledger:
                progress(f"growing a read log to {total:,} events over {domains:,} domains")
                await build_log(ledger, total, domains, args.batch, have)
        progress(f"open, drift, show, get at {args.small_events:,} and {args.events:,} events, in turn")
        for label, costs in zip(("small", "big"), await read_costs([small, big], args.read_calls)):
            for key, value in costs.items():
                results[f"{label}_{key}"] = value
        progress(f"events --domain at {args.small_events:,} and {args.events:,} events, in turn")
        for label, (seconds, count) in zip(("small", "big"), await domain_feed_costs([small, big], args.read_calls)):
            results[f"{label}_events_domain"], results[f"{label}_events_domain_count"] = seconds, count
        if "console" not in args.skip:
            progress(f"console pages at {args.events:,} events over {domains:,} domains")
            costs = await console_costs(big, args.read_calls)
            for key in CONSOLE_PAGES:
                results[f"console_{key}"] = costs[key]
                table.note(f"console {key} page: {domains:,} domains, {args.events:,} events",
                           f"{costs[key] * 1000:.2f}", "ms",
                           f"server time (in-process ASGI, bearer token), CPU {costs[key + '_cpu'] * 1000:.2f} ms; "
                           f"median of {args.read_calls} calls")
        progress(f"vmledger show, set and --version, a process each, at {args.events:,} events")
        (results["cli_show"], results["cli_set"], results["cli_version"],
         results["cli_python"]) = cli_costs(big, max(args.read_calls // 10, 3))
    for key in ("open", "drift", "show", "get"):
        table.note(f"{key}: {domains:,} domains, {args.events:,} events", f"{results['big_' + key] * 1000:.2f}",
                   "ms", f"at {args.small_events:,} events {results['small_' + key] * 1000:.2f} ms; "
                   f"median of {args.read_calls} calls, the two logs in turn")
    table.note(f"command line: vmledger show, {args.events:,} events", f"{results['cli_show'] * 1000:.1f}", "ms",
               f"a process each, start to exit; vmledger --version {results['cli_version'] * 1000:.1f} ms, "
               f"python -c pass {results['cli_python'] * 1000:.1f} ms; median of {max(args.read_calls // 10, 3)} calls")
    table.note("  vmledger set, a durable request", f"{results['cli_set'] * 1000:.1f}", "ms",
               "a process each, start to exit: persistent scope, in a ledger of one domain beside; "
               f"median of {max(args.read_calls // 10, 3)} calls")
    table.note(f"events --domain: {domains:,} domains, {args.events:,} events",
               f"{results['big_events_domain'] * 1000:.2f}", "ms",
               f"{results['big_events_domain_count']:,} events of one domain through Ledger.events(domain=...); "
               f"at {args.small_events:,} events {results['small_events_domain'] * 1000:.2f} ms for "
               f"{results['small_events_domain_count']:,}; median of {max(args.read_calls // 10, 3)} calls")


async def child_rebuild(path: str, repeat: int) -> None:
    """Time `rebuild` on an existing log `repeat` times; print the rates, CPU seconds, seconds after the fold and peak RSS as JSON."""
    rates, cpu, after_fold = [], [], []
    with TreeRss() as tree:
        async with bulk_open(path) as ledger:
            head = await ledger.log.head()
            for _ in range(repeat):
                folded: list[float] = []

                def progress(position: int, total: int) -> None:  # called from the writer thread
                    if position == total and not folded:
                        folded.append(time.perf_counter())

                before = cpu_seconds()
                seconds, position = await timed(functools.partial(ledger.rebuild, progress=progress))
                end = time.perf_counter()
                if position != head:
                    raise SystemExit(f"bench: rebuild reached {position}, head is {head}")
                rates.append(head / seconds)
                cpu.append([after - then for after, then in zip(cpu_seconds(), before)])
                after_fold.append(end - folded[0])
    print(json.dumps({"rates": rates, "cpu": cpu, "after_fold": after_fold, "rss": peak_rss_mib(),
                      "workers": tree.workers, "tree_rss": tree.peak,
                      "worker_rss": peak_rss_mib(resource.RUSAGE_CHILDREN)}))


def cpu_seconds() -> tuple[float, float]:
    """Return the CPU seconds, user and system, of this process and of its children that have ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


async def child_verify(path: str) -> None:
    """Time `verify`, then `checkpoint` since the checkpoint it makes; print the seconds and the peak RSS as JSON."""
    with TreeRss() as tree:
        async with bulk_open(path) as ledger:
            started = time.perf_counter()
            checkpoint = await ledger.checkpoint()
            verify = time.perf_counter() - started
            started = time.perf_counter()
            await ledger.checkpoint(checkpoint)
            since = time.perf_counter() - started
    print(json.dumps({"verify": verify, "checkpoint": since, "rss": peak_rss_mib(), "workers": tree.workers,
                      "tree_rss": tree.peak, "worker_rss": peak_rss_mib(resource.RUSAGE_CHILDREN)}))


# -- the peer and the limits: the eventsourcing library and raw sqlite3 -------------

#: About 150 bytes, the payload size of the reference figures.
PAYLOAD = "v" * 150


def raw_connect(path: str) -> sqlite3.Connection:
    """Return a plain sqlite3 connection set up as vmledger's writer is (WAL, synchronous=FULL)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS events (position INTEGER PRIMARY KEY, stream TEXT NOT NULL, "
                 "version INTEGER NOT NULL, data TEXT NOT NULL, UNIQUE (stream, version))")
    return conn


def raw_writes(path: str, n: int, streams: int, per_tx: int) -> float:
    """Insert `n` events over `streams` streams, `per_tx` per durable transaction; return events/s."""
    conn = raw_connect(path)
    rows = [(f"s{i % streams}", i // streams + 1, PAYLOAD) for i in range(n)]
    start = time.perf_counter()
    for k in range(0, n, per_tx):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO events (stream, version, data) VALUES (?, ?, ?)", rows[k:k + per_tx])
        conn.execute("COMMIT")
    seconds = time.perf_counter() - start
    conn.close()
    return n / seconds


def raw_scan_decode(path: str) -> float:
    """Read every stored event of a vmledger file and decode its data and metadata; return events/s."""
    import orjson

    conn = sqlite3.connect(path)
    start, count = time.perf_counter(), 0
    for data, meta in conn.execute("SELECT data, metadata FROM events ORDER BY position"):
        orjson.loads(data), orjson.loads(meta)
        count += 1
    seconds = time.perf_counter() - start
    conn.close()
    return count / seconds


def peer_app(path: str) -> Any:
    """Return an eventsourcing application on a SQLite file (its defaults: WAL, synchronous=FULL)."""
    from eventsourcing.application import Application

    return Application(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path})


def peer_aggregates(app: Any, streams: int) -> list[Any]:
    """Create and save `streams` aggregates of the peer in one save; return them."""
    from eventsourcing.domain import Aggregate

    made = [Aggregate() for _ in range(streams)]
    app.save(*made)
    return made


try:  # the peer is a benchmark-only dependency: pip install -e '.[bench]'
    from eventsourcing.domain import Aggregate as _PeerAggregate

    class PeerTicked(_PeerAggregate.Event):
        """The peer's event: one ~150-byte payload."""

        payload: str
except ImportError:
    _PeerAggregate = None


def _tick(agg: Any) -> None:
    agg.trigger_event(PeerTicked, payload=PAYLOAD)


def peer_saves(path: str, n: int, streams: int) -> float:
    """Save `n` events of the peer, one event per `save`, over `streams` aggregates; return events/s."""
    app = peer_app(path)
    aggs = peer_aggregates(app, streams)
    start = time.perf_counter()
    for i in range(n):
        agg = aggs[i % streams]
        _tick(agg)
        app.save(agg)
    seconds = time.perf_counter() - start
    app.close()
    return n / seconds


def peer_replay(path: str, total: int, streams: int) -> float:
    """Store `total` events with the peer (in bulk), then map every stored event back; return events/s."""
    app = peer_app(path)
    aggs = peer_aggregates(app, streams)
    for _ in range(total // streams - 1):
        for agg in aggs:
            _tick(agg)
        app.save(*aggs)
    start, count, after = time.perf_counter(), 0, 0
    while True:
        page = app.recorder.select_notifications(after, 1000, inclusive_of_start=False)
        for stored in page:
            app.mapper.to_domain_event(stored)
        count += len(page)
        if len(page) < 1000:
            break
        after = page[-1].id
    seconds = time.perf_counter() - start
    app.close()
    return count / seconds


async def peer_saves_run(args: argparse.Namespace) -> float:
    """Return the events/s of one run of the peer's saves (`peer_saves`) in a fresh file."""
    with tempfile.TemporaryDirectory(prefix="vmledger-bench-") as tmp:
        return await asyncio.to_thread(peer_saves, os.path.join(tmp, "peer.db"), args.peer_events, 1000)


async def bench_peer(args: argparse.Namespace, table: Table, results: dict[str, float]) -> None:
    """The peer's figures and raw sqlite3's, each the median of `--repeat` runs in fresh files."""
    n, streams = args.peer_events, 1000
    cases = [
        ("peer: eventsourcing, 1 event per save", "peer_saves", lambda d: peer_saves(d, n, streams)),
        ("raw sqlite3, 1 event per transaction", "raw_1", lambda d: raw_writes(d, n, streams, 1)),
        ("raw sqlite3, 100 events per transaction", "raw_100", lambda d: raw_writes(d, n * 10, streams, 100)),
        (f"peer: replay through its mapper, {args.events:,} events", "peer_replay",
         lambda d: peer_replay(d, args.events, streams)),
    ]
    for name, key, fn in cases:
        rates = []
        for r in range(args.repeat):
            progress(f"{name}: run {r + 1}/{args.repeat}")
            with tempfile.TemporaryDirectory(prefix="vmledger-bench-") as tmp:
                rates.append(await asyncio.to_thread(fn, os.path.join(tmp, "peer.db")))
        table.add(name, rates, "events/s")
        results[key] = statistics.median(rates)


# -- 4: reads whose cost must not grow with the log -----------------------------------


async def read_costs(paths: list[str], calls: int) -> list[dict[str, float]]:
    """Return, for each ledger in `paths`, the median seconds of open, drift, show and get, each call made on all in turn."""
    times: list[dict[str, list[float]]] = [{"open": [], "drift": [], "show": [], "get": []} for _ in paths]
    async with contextlib.AsyncExitStack() as stack:
        ledgers = [await stack.enter_async_context(bulk_open(path)) for path in paths]
        names = [(await ledger.domains())[0]["domain"] for ledger in ledgers]
        for _ in range(calls):
            for ledger, name, own in zip(ledgers, names, times):
                for key, call in (("drift", ledger.drift), ("show", lambda: ledger.show(name)),
                                  ("get", lambda: ledger.get(name, "memory"))):
                    start = time.perf_counter()
                    await call()
                    own[key].append(time.perf_counter() - start)
    for _ in range(max(calls // 10, 3)):
        for path, own in zip(paths, times):
            start = time.perf_counter()
            async with bulk_open(path) as ledger:
                await ledger.log.head()
            own["open"].append(time.perf_counter() - start)
    return [{k: statistics.median(v) for k, v in own.items()} for own in times]


def cli_costs(path: str, calls: int) -> tuple[float, float, float, float]:
    """Return the median seconds of a `vmledger show` process on the ledger at `path`, of a `vmledger set`, of `vmledger --version`, and of `python -c pass`, run in turn.

    The command line pays its imports on every call: `--version` opens no
    ledger, and Python's own start-up is the floor under them all.  The
    `set`s ask for 1 and 2 vCPUs in turn, in the persistent config of the one
    domain of a ledger beside `path`, each a durable request: its two commits,
    the simulator's call, and the closing of the ledger.  The calls may write
    bytecode caches, as an installed package has them, and a first call of
    each, not counted, writes them.
    """
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    vmledger_cli = [sys.executable, "-m", "vmledger.cli"]
    small = [*vmledger_cli, "--db", f"{path}.cli.db"]
    subprocess.run([*small, "define", "vm", "--type", "pv", "--memory", "1GiB", "--max-memory", "2GiB", "--vcpus", "1",
                    "--max-vcpus", "2"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, check=True)
    times: list[list[float]] = [[] for _ in range(4)]
    for call in range(calls + 1):
        commands = [[*vmledger_cli, "--db", path, "--hypervisor", f"sim:{path}.bulk-sim.json", "show", "dom00000"],
                    [*small, "set", "vm", "vcpus", str(2 - call % 2), "--scope", "persistent"],  # a change each time
                    [*vmledger_cli, "--version"], [sys.executable, "-c", "pass"]]
        for command, own in zip(commands, times):
            start = time.perf_counter()
            subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, check=True)
            if call:
                own.append(time.perf_counter() - start)
    return tuple(statistics.median(own) for own in times)  # type: ignore[return-value]


async def domain_feed_costs(paths: list[str], calls: int) -> list[tuple[float, int]]:
    """Return, for each ledger in `paths`, the median seconds to read one domain's events (the last domain's), and their count."""
    times: list[list[float]] = [[] for _ in paths]
    counts = [0] * len(paths)
    async with contextlib.AsyncExitStack() as stack:
        ledgers = [await stack.enter_async_context(bulk_open(path)) for path in paths]
        names = [(await ledger.domains())[-1].domain for ledger in ledgers]
        for _ in range(max(calls // 10, 3)):
            for n, (ledger, name) in enumerate(zip(ledgers, names)):
                start = time.perf_counter()
                counts[n] = len([r async for r in ledger.events(domain=name)])
                times[n].append(time.perf_counter() - start)
    return [(statistics.median(t), c) for t, c in zip(times, counts)]


#: The console's pages the bench times: the fleet, a domain, the history's newest page, and its 1,000th.
CONSOLE_PAGES = ("fleet", "domain", "history", "old history")


async def console_costs(path: str, calls: int) -> dict[str, float]:
    """Return the median seconds the server takes to answer each of `CONSOLE_PAGES`, and the CPU seconds.

    The service's own application answers in process (no socket), with a
    reader's bearer token, so the figure is the server's: auth, queries,
    rendering.
    """
    import httpx

    from vmledger.service.app import Service, create_app
    from vmledger.service.tokens import TokenStore

    times: dict[str, list[float]] = {k: [] for key in CONSOLE_PAGES for k in (key, f"{key}_cpu")}
    async with bulk_open(path) as ledger:
        tokens = TokenStore(path, ledger.log.fetch_all)
        secret = await tokens.add("bench-reader", "reader")
        app = create_app(Service(ledger, tokens))
        name = (await ledger.domains())[0]["domain"]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench",
                                     headers={"Authorization": f"Bearer {secret}"}) as client:
            for _ in range(calls):
                for key, url in zip(CONSOLE_PAGES, ("/", f"/domains/{name}", "/history", "/history?page=1000")):
                    start, cpu = time.perf_counter(), time.process_time()
                    response = await client.get(url)
                    times[key].append(time.perf_counter() - start)
                    times[key + "_cpu"].append(time.process_time() - cpu)
                    if response.status_code != 200 or 'name="token"' in response.text:
                        raise SystemExit(f"bench: the console answered {url} with {response.status_code}")
    return {k: statistics.median(v) for k, v in times.items()}


# -- the targets ------------------------------------------------------------------------


def print_targets(results: dict[str, float], callers: int) -> None:
    """Print each target as ours / reference = ratio against what is wanted.

    The numbered ones are the targets of the speed issue (issue 19), by its numbers; the others
    are limits that earlier issues set and later work must keep.  The issue's targets are for 64
    callers; a run with other `--callers` says how many it ran.
    """
    rows = []

    def target(label: str, ours: str, ref: str, wanted: float, *, at_most: bool = False) -> None:
        if ours in results and ref in results:
            ratio = results[ours] / results[ref]
            met = ratio <= wanted if at_most else ratio >= wanted
            rows.append((label, f"{results[ours]:,.4g}", f"{results[ref]:,.4g}", f"{ratio:.2f}",
                         f"{'<=' if at_most else '>='} {wanted:g}", "met" if met else "NOT met"))

    # The peer's saves measured in turn with the case's runs where the bench did (`bench_writes`).
    peer = {case: f"peer_saves_{case}" if f"peer_saves_{case}" in results else "peer_saves"
            for case in ("callers", "persistent")}
    target(f"1. {callers} callers, both: events/s vs peer saves/s", "callers_events", peer["callers"], 5)
    # What the writer's transactions alone commit, durably (`replay_writer`): where this falls short,
    # no change outside the writer's transaction (the event loop, the hypervisor, the threads) meets the target.
    target(f"1. the writer alone, durably, its {callers}-caller batches", "callers_ceiling", peer["callers"], 5)
    target(f"3. PostgreSQL {callers} callers, both: events/s vs SQLite's", "pg_callers_events", "callers_events", 1)
    target(f"{callers} callers, both: events/s vs raw 100/tx", "callers_events", "raw_100", 0.4)
    # A request is two durable commits (its intent, then its outcome): the issue asks each to cost
    # no more than one of the peer's saves, so committed events/s, not requests/s, meet the peer's.
    target("2. 1 caller, persistent: events/s vs peer saves/s", "persistent_events", peer["persistent"], 1.0)
    target("2. the writer alone, durably, its 1-caller commits", "persistent_ceiling", peer["persistent"], 1.0)
    target("4. rebuild events/s vs peer replay", "rebuild", "peer_replay", 2)
    target(f"{callers} clients over HTTP vs in process: requests/s", "http_requests", "inproc_requests", 0.5)
    target("4. rebuild events/s vs raw scan + orjson decode", "rebuild", "raw_scan", 0.33)
    target("4. rebuild peak RSS MiB vs 256 MiB", "rebuild_rss", "rss_limit", 1.0, at_most=True)
    target("verify peak RSS MiB vs 256 MiB", "verify_rss", "rss_limit", 1.0, at_most=True)
    target("audit of a month, seconds vs 1 s", "audit", "audit_limit", 1.0, at_most=True)
    for key in ("open", "drift", "show", "get"):
        target(f"5. {key} at the big log vs at the small log (s)", f"big_{key}", f"small_{key}", 1.2, at_most=True)
    results["console_limit"] = 0.1
    for key in CONSOLE_PAGES:
        target(f"console {key} page server time vs 100 ms (s)", f"console_{key}", "console_limit", 1.0,
               at_most=True)
    head = ("target", "ours", "reference", "ratio", "wanted", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(6)]
    for r in [head, *rows]:
        print("  ".join(f"{c:<{w}}" if i in (0, 5) else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths))).rstrip())


# -- main ------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", help="database path or sqlite:/// URL for the write benchmarks "
                                "(default: a fresh file in a temporary directory)")
    p.add_argument("--pg-cluster", action="store_true",
                   help="start a throwaway PostgreSQL 15 cluster as the tests do (tests/pg.py), run the write "
                        "benchmarks on it beside SQLite, and remove it at the end (instead of --db)")
    p.add_argument("--events", type=int, default=1_000_000,
                   help="events in the rebuild log, and in the peer's replay (default 1000000)")
    p.add_argument("--small-events", type=int, default=10_000,
                   help="events in the small log the read costs are compared with (default 10000)")
    p.add_argument("--read-calls", type=int, default=200, help="calls per read-cost figure (default 200)")
    p.add_argument("--read-domains", type=int, default=1000,
                   help="domains of the log the read costs are measured on (default 1000)")
    p.add_argument("--peer-events", type=int, default=2000,
                   help="events per run of the peer's saves and raw sqlite3 one-per-transaction (default 2000)")
    p.add_argument("--child-rebuild", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--child-interleaved", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--child-verify", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is shown (default 3)")
    p.add_argument("--requests", type=int, default=500,
                   help="set requests per write run of one caller, and of the HTTP case (default 500)")
    p.add_argument("--callers-requests", type=int, default=2000,
                   help="set requests per write run of the --callers case (default 2000): at 500, a run of 64 "
                        "callers lasted about 0.4 s, too short to compare two stores in")
    p.add_argument("--callers", type=int, default=64, help="concurrent callers (default 64)")
    p.add_argument("--domains", type=int, default=50, help="running domains the callers share (default 50)")
    p.add_argument("--rebuild-domains", type=int, default=10_000, help="streams of the rebuild log (default 10000)")
    p.add_argument("--batch", type=int, default=500, help="events per append when building the log (default 500)")
    p.add_argument("--skip", choices=("writes", "rebuild", "reads", "peer", "console"), action="append", default=[],
                   help="leave out one part (may be repeated)")
    p.add_argument("--parts", type=int,
                   help="fold the rebuild and verify in this many worker processes, whatever the CPUs (default: "
                        "as they choose, one per CPU up to 3), to measure the memory a bigger machine's takes")
    p.add_argument("--http", action="store_true",
                   help="also measure durable sets over HTTP against vmledger serve, beside in process")
    p.add_argument("--url", help="measure over HTTP against this running server (token in VMLEDGER_TOKEN); "
                                 "implies --http")
    args = p.parse_args(argv)
    args.pg_rebuild = None  # the database of the rebuild on PostgreSQL, in the cluster of --pg-cluster
    if args.pg_cluster and args.db:
        p.error("--pg-cluster starts its own database: leave out --db")
    if args.parts is not None and args.parts < 2:
        p.error("--parts must be at least 2: with fewer, the fold runs in the rebuilding process")
    for name in ("events", "small_events", "read_calls", "read_domains", "peer_events", "repeat", "requests", "callers",
                 "callers_requests", "domains", "rebuild_domains", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def on_postgres(db: str | None) -> bool:
    """Return whether `--db` names a PostgreSQL database."""
    return (db or "").startswith(("postgresql://", "postgres://"))


async def run(args: argparse.Namespace) -> tuple[Table, dict[str, float], list[str]]:
    table, results, stores = Table(), {}, []
    if "writes" not in args.skip:
        with tempfile.TemporaryDirectory(prefix="vmledger-bench-") as tmp:
            writes = [WriteStore(args.db, cleanup=True, key="pg_" * on_postgres(args.db))] * bool(args.db)
            if not args.db or on_postgres(args.db):
                # On PostgreSQL, SQLite's figures of the same run, run for run, are what it is measured against.
                writes.append(WriteStore(os.path.join(tmp, "writes.db"), cleanup=False))
            stores = await bench_writes(writes, args, table, results, labelled=on_postgres(args.db),
                                        peer="peer" not in args.skip and _PeerAggregate is not None)
    if "rebuild" not in args.skip:
        await bench_rebuild(args, table, results)
    if "reads" not in args.skip:
        await bench_reads(args, table, results)
    if args.http or args.url:
        await bench_http(args, table, results)
    if "peer" not in args.skip:
        if _PeerAggregate is None:
            raise SystemExit("bench: the peer is not installed: pip install -e '.[bench]' (or --skip peer)")
        await bench_peer(args, table, results)
    return table, results, stores


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.parts:
        force_parts(args.parts)
    try:
        _loop.loop_factory()
    except vmledger.InvalidRequestError as e:
        raise SystemExit(f"bench: {e}") from None
    if args.child_verify:
        _loop.run(child_verify(args.child_verify))
        return 0
    if args.child_rebuild:
        _loop.run(child_rebuild(args.child_rebuild, args.repeat))
        return 0
    if args.child_interleaved:
        build_interleaved_log(args.child_interleaved, args.events, args.rebuild_domains)
        return 0
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.pg_cluster:
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            from tests.pg import cluster, create_database
            args.db = stack.enter_context(cluster())
            if "rebuild" not in args.skip:
                args.pg_rebuild = create_database(args.db, "bench_rebuild")
        table, results, stores = _loop.run(run(args))
    print(machine_line())
    places = [args.db] * bool(args.db) + ["a temporary directory"] * (not args.db or on_postgres(args.db))
    for store, place in zip(stores, places):
        print(f"store for writes: {store}, at {place}")
    print(f"rebuild on SQLite in a temporary directory{', then on PostgreSQL' * bool(args.pg_rebuild)}; "
          f"hypervisor: simulated (JSON state file beside the database"
          f"{', in a temporary directory for PostgreSQL' * on_postgres(args.db)}); "
          f"peer: eventsourcing on SQLite (WAL, synchronous=FULL); median of {args.repeat} run(s)")
    print()
    table.print()
    print()
    print_targets(results, args.callers)
    print()
    print(f"total {time.perf_counter() - start:.0f} s, peak RSS of this process {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
