"""A writer process killed with SIGKILL at random moments leaves a ledger that verifies and resolves.

Each round starts `_crash_writer.py` and kills it, either right after it
announces an append (plus a random sub-millisecond delay, so the kill lands
in the commit) or at a random moment; then it reopens the ledger, verifies
it, and has `observe` resolve what the kill left unfinished.  About 15 s a
backend here.  The seed is printed; set `VMLEDGER_CRASH_SEED` to replay a
run (the kill moments still vary with timing).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import vmledger

ROOT = pathlib.Path(__file__).resolve().parents[2]
WRITER = str(pathlib.Path(__file__).with_name("_crash_writer.py"))
ROUNDS = 24
#: The checker's hypervisor timeout: a request older than twice this is abandoned.
TIMEOUT = 0.05
GiB = 2**30


async def _setup(url: str) -> None:
    async with vmledger.open(url) as ledger:
        for name in ("a", "b", "c"):
            await ledger.define(name, guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=1, max_vcpus=4,
                                cdroms={"hdc": ""})
        await ledger.start("a")
        await ledger.start("c")


async def _check(url: str) -> dict[str, Any]:
    """Reopen, verify, resolve what the kill left unfinished, and verify again; return what was seen."""
    async with vmledger.open(url, hypervisor_timeout=TIMEOUT) as ledger:
        head = await ledger.verify()
        positions = [r.position async for r in ledger.events()]
        unfinished = sum(any(o["status"] == "in_flight" for o in r["outcomes"].values())
                         for r in await ledger.history())
        await ledger.observe()
        history = await ledger.history()
        after = await ledger.verify()
        sim = ledger.hypervisor
        views = {d["domain"]: d for d in await ledger.domains()}
        return {
            "gap_free": positions == list(range(1, head + 1)),
            "unfinished": unfinished,
            "in_flight": [(r["request_id"], s) for r in history for s, o in r["outcomes"].items()
                          if o["status"] == "in_flight"],
            "verified": after == await ledger.log.head(),
            # After observe the ledger and the simulator agree on power state, live and persistent values.
            "agree": {n: (v["power_state"] == "running",
                          {p["property"]: p["live"] for p in v["properties"] if p["live"] is not None},
                          {p["property"]: p["persistent"] for p in v["properties"]})
                      for n, v in views.items()}
            == {n: ((o := await sim.observe(n)).running, dict(o.live), dict(o.persistent)) for n in views},
            "requests": len(history),
        }


def _kill_round(url: str, tag: str, rng: random.Random, cwd: str) -> str:
    """Run one writer and kill it; return how it was killed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, WRITER, url, tag, str(rng.randrange(2**32))], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None and proc.stderr is not None
    watchdog = threading.Timer(60, proc.kill)  # a hung writer fails the round instead of the whole run
    watchdog.start()
    try:
        assert proc.stdout.readline() == b"ready\n"
        if rng.random() < 0.6:
            how = "in a commit"
            for _ in range(rng.randint(1, 60)):
                if proc.stdout.readline() != b"append\n":
                    how = "after the writer stopped announcing"  # died or hung: fails the test below
                    break
            time.sleep(rng.uniform(0, 0.001))
        else:
            how = "at random"
            time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        err = proc.stderr.read().decode()
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert (proc.returncode, err) == (-signal.SIGKILL, "")
    return how


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigkill_at_random_moments_leaves_a_sound_ledger(request: pytest.FixtureRequest, tmp_path: Any,
                                                        monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    """After each of 24 SIGKILLs of a busy writer, the ledger verifies gap-free and observe resolves every request."""
    seed = int(os.environ.get("VMLEDGER_CRASH_SEED", random.randrange(2**32)))
    print(f"crash test seed {seed} (VMLEDGER_CRASH_SEED={seed} replays it)")
    rng = random.Random(seed)
    monkeypatch.chdir(tmp_path)  # where the simulator's state lives with PostgreSQL
    url = "sqlite:///" + str(tmp_path / "crash.db") if backend == "sqlite" else request.getfixturevalue("pg_database")
    asyncio.run(_setup(url))
    seen = []
    for n in range(ROUNDS):
        how = _kill_round(url, f"r{n}", rng, str(tmp_path))
        time.sleep(2 * TIMEOUT)  # every request the writer left is now older than twice the timeout
        seen.append((how, asyncio.run(_check(url))))
    summary = [(s["gap_free"], s["in_flight"], s["verified"], s["agree"]) for _, s in seen]
    assert summary == [(True, [], True, True)] * ROUNDS
    # The kills did land mid-request and mid-commit, and the writers got work done.
    assert (sum(s["unfinished"] > 0 for _, s in seen) >= 3, {h for h, _ in seen}, seen[-1][1]["requests"] > 100) == (
        True, {"in a commit", "at random"}, True)
