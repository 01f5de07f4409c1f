"""Hypervisor calls in daemon threads (`adapters._threads`): answers and errors come back, threads are reused."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from vmledger.adapters import _threads
from vmledger.adapters._threads import in_thread


def _running() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "vmledger-hypervisor"}


def test_calls_answer_raise_and_run_in_daemon_threads_no_more_than_ever_ran_at_once() -> None:
    async def go() -> tuple[list, set[threading.Thread]]:
        def call(i: int) -> tuple[int, bool]:
            time.sleep(0.01)
            if i % 5 == 0:
                raise ValueError(i)
            return i, threading.current_thread().daemon

        answers: list = []
        for _ in range(3):  # three waves of eight calls at once: the second and third reuse the first's threads
            answers += await asyncio.gather(*(in_thread(call, i) for i in range(8)), return_exceptions=True)
        return answers, _running()

    before = _running()
    answers, threads = asyncio.run(go())
    assert [str(a) if isinstance(a, ValueError) else a for a in answers] == 3 * [
        "0", (1, True), (2, True), (3, True), (4, True), "5", (6, True), (7, True)]
    assert len(threads - before) <= 8


def test_a_cancelled_caller_stops_waiting_while_its_call_runs_on() -> None:
    release = threading.Event()

    async def go() -> bool:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await in_thread(release.wait, 30)
        return await in_thread(lambda: 42) == 42  # another thread answers meanwhile

    try:
        assert asyncio.run(go())
    finally:
        release.set()


def test_a_thread_idle_past_its_time_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_threads, "_IDLE_SECONDS", 0.05)
    pool, ran = _threads._Threads(), []
    pool.submit(lambda: ran.append(threading.current_thread()) or (lambda: None))
    deadline = time.monotonic() + 5
    while not ran and time.monotonic() < deadline:
        time.sleep(0.01)
    ran[0].join(5)
    assert (ran[0].is_alive(), pool._idle) == (False, 0)


def test_a_forked_child_calls_in_threads_of_its_own() -> None:
    """A fork copies the calling thread alone: a child must not count its parent's idle threads as its own."""
    import multiprocessing

    asyncio.run(in_thread(lambda: None))  # the parent has an idle thread now
    fork = multiprocessing.get_context("fork")
    answers = fork.Queue()
    child = fork.Process(target=lambda: answers.put(asyncio.run(in_thread(lambda: 42))))
    child.start()
    try:
        assert answers.get(timeout=30) == 42
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
