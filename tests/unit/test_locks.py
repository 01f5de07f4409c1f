"""Locks by stream on SQLite (`eventstore.backends.locks.FileLocks`): they exclude other opens and other processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any, Iterator

from vmledger.eventstore.backends.locks import FileLocks, key_of
from vmledger.eventstore.errors import LockTimeoutError

_HOLDER = """
import fcntl, sys, time
from vmledger.eventstore.backends.locks import FileLocks, key_of
locks = FileLocks(sys.argv[1])
locks._set(fcntl.F_WRLCK, key_of("web"))
print("held", flush=True)
time.sleep(600)
"""


def test_two_opens_of_the_lock_file_exclude_each_other_by_stream(tmp_path: Any) -> None:
    first, second = FileLocks(str(tmp_path / "l-locks")), FileLocks(str(tmp_path / "l-locks"))

    async def go() -> list:
        seen = []
        async with first.hold("web", 30):
            seen += [await second._try(key_of("web")), await second._try(key_of("db"))]
            await second._free(key_of("db"))
            held = second.hold("web", 30)
            waiting = asyncio.ensure_future(held.__aenter__())
            await asyncio.sleep(0.05)
            seen.append(waiting.done())
        await asyncio.wait_for(waiting, 5)
        seen.append(await first._try(key_of("web")))
        await held.__aexit__(None, None, None)
        seen.append(await first._try(key_of("web")))
        return seen

    try:
        assert asyncio.run(go()) == [False, True, False, False, True]
    finally:
        first.close()
        second.close()


def test_a_lock_held_by_another_past_the_wait_is_a_clear_error_and_can_be_taken_once_free(tmp_path: Any) -> None:
    """Waiting on another open's holder ends with LockTimeoutError after the wait, not sooner, and the lock is taken once freed."""
    first, second = FileLocks(str(tmp_path / "l-locks")), FileLocks(str(tmp_path / "l-locks"))

    async def go() -> list:
        seen = []
        async with first.hold("web", 30):
            started = time.monotonic()
            try:
                async with second.hold("web", 0.2):
                    seen.append("held")
            except LockTimeoutError as e:
                seen += [str(e), e.seconds, 0.2 <= time.monotonic() - started < 5]
        async with second.hold("web", 0.2):
            seen.append(await first._try(key_of("web")))
        return seen

    try:
        assert asyncio.run(go()) == ["another writer held the lock of web for 0.2s", 0.2, True, False]
    finally:
        first.close()
        second.close()


_BUSY = """
import asyncio, sys
from vmledger.eventstore.backends import locks as module
from vmledger.eventstore.backends.locks import FileLocks

module._STREAK = 0.3  # shorter streaks than a ledger's, so that the test waits for several in a few seconds

async def main():
    locks, loop = FileLocks(sys.argv[1]), asyncio.get_running_loop()
    stop = loop.time() + float(sys.argv[2])

    async def task():
        while loop.time() < stop:
            async with locks.hold("web", 30):
                await asyncio.sleep(0.002)

    tasks = [asyncio.ensure_future(task()) for _ in range(4)]
    await asyncio.sleep(0.2)
    print("busy", flush=True)
    await asyncio.gather(*tasks)

asyncio.run(main())
"""


def test_a_process_handing_a_lock_between_its_tasks_lets_another_process_in(tmp_path: Any) -> None:
    """Four tasks of another process taking a lock in turn without a break still let this process's waiter in, eight times running, each long before its wait ends."""
    path = str(tmp_path / "l-locks")

    async def go(locks: FileLocks) -> float:
        started = time.monotonic()
        for _ in range(8):
            async with locks.hold("web", 3):
                pass
        return time.monotonic() - started

    with _child(_BUSY, path, "20") as (busy, first), contextlib.closing(FileLocks(path)) as locks:
        waited = asyncio.run(go(locks))
        still = busy.poll() is None
    assert (first, waited < 10, still) == ("busy\n", True, True)


def test_a_lock_of_a_killed_process_is_free(tmp_path: Any) -> None:
    path = str(tmp_path / "l-locks")
    with _child(_HOLDER, path) as (holder, first), contextlib.closing(FileLocks(path)) as locks:
        before = asyncio.run(locks._try(key_of("web")))
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        after = asyncio.run(locks._try(key_of("web")))
    assert (first, before, after) == ("held\n", False, True)


@contextlib.contextmanager
def _child(script: str, *args: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run `script` in a child process (SIGINT as by default); yield it and its first line; always kill it."""
    child = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert child.stdout is not None
        yield child, child.stdout.readline()
    finally:
        child.kill()
        child.wait(timeout=30)
        assert child.stdout is not None
        child.stdout.close()
