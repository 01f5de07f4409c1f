"""Blocking hypervisor calls, each in a daemon thread: a call that never returns cannot keep the process alive.

asyncio's default executor (`asyncio.to_thread`) joins its threads when the
event loop closes, and again as the interpreter exits: one libvirt call
blocked on a dead connection kept `vmledger serve` from ever exiting on
SIGTERM.  The threads here are daemons, kept a while for the next calls.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from typing import Any, Callable, TypeVar

__all__ = ["in_thread"]

T = TypeVar("T")

#: How long a thread waits for another call before it ends.
_IDLE_SECONDS = 30.0


class _Threads:
    """Daemon threads that run jobs from one queue, started as the jobs outnumber the idle threads.

    A job returns what tells its caller: a thread counts itself idle
    before that, so that the caller's next job finds it.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], Callable[[], None]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, job: Callable[[], Callable[[], None]]) -> None:
        with self._lock:
            start = not self._idle
            if not start:
                self._idle -= 1  # that thread's turn: the job is its
        if start:
            threading.Thread(target=self._work, name="vmledger-hypervisor", daemon=True).start()
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # no job was meant for this thread
                        self._idle -= 1
                        return
                continue
            tell = job()
            with self._lock:
                self._idle += 1
            tell()


_threads = _Threads()


def _forked() -> None:
    """Start a forked child with no thread counted idle: a fork copies the calling thread alone."""
    global _threads
    _threads = _Threads()


os.register_at_fork(after_in_child=_forked)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Return `fn(*args)`, run in a daemon thread; cancelled, the caller stops waiting, the call runs on."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def job() -> Callable[[], None]:
        result, error = None, None
        try:
            result = fn(*args)
        except BaseException as e:
            error = e

        def tell() -> None:
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:  # the loop closed meanwhile: nobody waits for the answer
                pass
        return tell

    _threads.submit(job)
    return await future
