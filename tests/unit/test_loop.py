"""The event loop a command runs on (`vmledger._loop`): uvloop where installed, chosen by VMLEDGER_LOOP."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest
import uvloop

from vmledger import _loop
from vmledger.eventstore.errors import InvalidRequestError


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


@pytest.mark.parametrize(("choice", "uv"), [("", True), ("uvloop", True), ("asyncio", False)])
def test_run_picks_the_loop_vmledger_loop_names(monkeypatch: pytest.MonkeyPatch, choice: str, uv: bool) -> None:
    """Unset or `uvloop` runs on uvloop where it is installed, `asyncio` on asyncio's loop, closed after."""
    monkeypatch.setenv("VMLEDGER_LOOP", choice)
    loop = _loop.run(_running_loop())
    assert (isinstance(loop, uvloop.Loop), loop.is_closed(), _loop.loop_name(_loop.loop_factory())) == (
        uv, True, f"uvloop {uvloop.__version__}" if uv else "asyncio")


def test_an_unknown_loop_is_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown VMLEDGER_LOOP raises a clear error and leaves the coroutine unrun (and closed, unwarned)."""
    ran = []

    async def work() -> None:
        ran.append(1)

    monkeypatch.setenv("VMLEDGER_LOOP", "fast")
    with pytest.raises(InvalidRequestError) as caught:
        _loop.run(work())
    assert (str(caught.value), ran) == ("VMLEDGER_LOOP must be one of uvloop, asyncio, not 'fast'", [])


def test_insisting_on_uvloop_without_it_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """`uvloop` asked for where it is not installed is an error; unset falls back to asyncio's loop."""
    # A fake for a fault the test machine cannot have: uvloop is a test dependency, so its absence is made
    # by hiding the module (an import of a `None` entry of sys.modules raises ImportError).
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(InvalidRequestError, match=r"^VMLEDGER_LOOP=uvloop, but uvloop is not installed"):
        _loop.loop_factory("uvloop")
    assert _loop.loop_factory("") is None


_TERMINATED = """
import asyncio, os, signal, sys
from vmledger import _loop

async def work():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(60)
    finally:
        print("cleaned up", flush=True)
        if sys.argv[1:] == ["stuck"]:  # a second SIGTERM while the clean-up waits for good
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.shield(asyncio.sleep(60))

try:
    _loop.run(work(), terminable=True)
except _loop.Terminated:
    print("terminated", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
"""


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `_TERMINATED` with `args` in a process of its own (a SIGTERM not caught would end this one)."""
    return subprocess.run([sys.executable, "-c", _TERMINATED, *args], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))


def test_sigterm_cancels_a_terminable_run_which_ends_as_an_interrupted_one() -> None:
    """With `terminable`, SIGTERM cancels the coroutine, whose clean-up runs, and `run` raises `Terminated`."""
    done = _python()
    assert (done.returncode, done.stdout, done.stderr) == (0, "cleaned up\nterminated True\n", "")


def test_a_second_sigterm_ends_the_process_at_once() -> None:
    """A clean-up that hangs does not hold the process: the second SIGTERM has its default action."""
    done = _python("stuck")
    assert (done.returncode, done.stdout, done.stderr) == (-signal.SIGTERM, "cleaned up\n", "")


def test_an_ignored_sigterm_stays_ignored() -> None:
    """A process started with SIGTERM ignored keeps ignoring it: the coroutine runs to its end."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        async def work() -> str:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.1)
            return "done"

        assert _loop.run(work(), terminable=True) == "done"
    finally:
        signal.signal(signal.SIGTERM, previous)
