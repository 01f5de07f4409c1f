"""`scripts/bench.py` end to end at a toy size: every part runs, its writes all apply and verify, on both backends.

Not a timed test: no figure is checked, only that the benchmark runs what it says and reports it.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

from tests.contract.conftest import pg_dsn  # noqa: F401 - the session's PostgreSQL cluster
from tests.pg import create_database

ROOT = pathlib.Path(__file__).resolve().parents[2]
REQUESTS, CALLERS = 20, 4
TOY = ["--events", "2000", "--small-events", "500", "--read-calls", "3", "--read-domains", "10", "--repeat", "1",
       "--requests", str(REQUESTS), "--callers-requests", str(REQUESTS), "--callers", str(CALLERS), "--domains", "4",
       "--rebuild-domains", "20", "--batch", "50", "--skip", "peer"]


def bench(*args: str) -> list[str]:
    """Run the benchmark; return the lines it printed on stdout once it exited 0."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), *TOY, *args], capture_output=True,
                          text=True, timeout=600, check=False, cwd=ROOT, stdin=subprocess.DEVNULL)
    said = [line for line in proc.stderr.splitlines() if not line.startswith("[bench] ")]  # beside the progress
    assert (proc.returncode, said) == (0, [])
    return proc.stdout.splitlines()


def notes(lines: list[str], name: str) -> list[str]:
    """Return the notes column of every table row whose name is `name` (after its indent)."""
    rows = (re.split(r"\s{2,}", line.strip()) for line in lines)
    return [cells[-1] for cells in rows if cells[0] == name]


def test_the_toy_bench_runs_every_part_and_its_writes_all_apply() -> None:
    """On SQLite, with --http: each write case applies every request, verifies, and every target row is printed."""
    lines = bench("--http")
    both, persistent = f"live applied {REQUESTS}, persistent applied {REQUESTS}", f"persistent applied {REQUESTS}"
    assert notes(lines, "outcomes") == [persistent, both, both]
    # Each case's transactions replayed, then replayed durably: the most the writer's own work allows it.
    assert [len(notes(lines, name)) for name in ("the writer's transactions, replayed", "the same, durably")] == [3, 3]
    assert [n.split(":")[1] for n in notes(lines, "verify after the writes")] == [
        " chain intact, projections equal a rebuild"]
    assert [notes(lines, name)[0].split(",")[0] for name in (
        "command line: vmledger show, 2,000 events", "vmledger set, a durable request")] == ["a process each"] * 2
    assert [n.split(" s, ")[1] for n in notes(lines, "vmledger export, 2,000 events")
            + notes(lines, "vmledger import of that file")] == [
        "to a file, start to exit", "into a new SQLite ledger, start to exit: each chunk checked, stored and folded, in one transaction"]
    first = next(i for i, line in enumerate(lines) if line.startswith("target ")) + 1
    assert [re.split(r"\s{2,}", line)[0] for line in lines[first:] if line and not line.startswith("total ")] == [
        f"{CALLERS} clients over HTTP vs in process: requests/s",
        "4. rebuild events/s vs raw scan + orjson decode",
        "4. rebuild peak RSS MiB vs 256 MiB",
        "verify peak RSS MiB vs 256 MiB",
        "audit of a month, seconds vs 1 s",
        *(f"5. {key} at the big log vs at the small log (s)" for key in ("open", "drift", "show", "get")),
        *(f"console {key} page server time vs 100 ms (s)" for key in ("fleet", "domain", "history", "old history")),
    ]


def test_the_toy_bench_on_postgresql_runs_sqlite_beside_it(pg_dsn: str) -> None:  # noqa: F811
    """With --db postgresql://…, the write cases run on both backends, each applies every request and verifies."""
    lines = bench("--db", create_database(pg_dsn, "bench"), "--skip", "rebuild", "--skip", "reads",
                  "--skip", "console")
    both, persistent = f"live applied {REQUESTS}, persistent applied {REQUESTS}", f"persistent applied {REQUESTS}"
    assert notes(lines, "outcomes") == [persistent, both, both] * 2
    assert len(notes(lines, "verify after the writes")) == 2
    assert [line.split()[3] for line in lines if line.startswith("store for writes: ")] == ["PostgreSQL", "SQLite"]
    assert [line.split("  ")[0] for line in lines if line.startswith("3. ")] == [
        f"3. PostgreSQL {CALLERS} callers, both: events/s vs SQLite's"]


def test_the_toy_bench_on_a_throwaway_cluster_rebuilds_and_verifies_on_postgresql_too(pg_dsn: str) -> None:  # noqa: F811
    """With --pg-cluster, the rebuild log is imported into the cluster, then rebuilt and verified there.

    The bench starts a cluster of its own; `pg_dsn` skips or fails the test where PostgreSQL is missing, as the others.
    """
    lines = bench("--pg-cluster", "--skip", "writes", "--skip", "reads", "--skip", "console")
    header = next(line for line in lines if line.startswith("rebuild on SQLite"))
    names = [re.split(r"\s{2,}", line.strip())[0] for line in lines if line != header]
    assert [n for n in names if "PostgreSQL" in n] == [
        "vmledger import into PostgreSQL, the same events", "rebuild on PostgreSQL", "verify on PostgreSQL"]
    assert "then on PostgreSQL" in header
