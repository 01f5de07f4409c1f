"""The event loop a command runs on: uvloop where it is installed, else asyncio's own.

uvloop runs the same coroutines with less CPU per turn of the loop, and
asyncpg's protocol is fastest on it: on the bench's 64 callers over
PostgreSQL, the loop took 0.42-0.43 ms a request against 0.48-0.52 ms on
asyncio's, for 11-18 % more requests a second (two pairs of runs in turn).
`VMLEDGER_LOOP=asyncio` keeps asyncio's loop (to compare, or to rule the
loop out); `VMLEDGER_LOOP=uvloop` insists on uvloop.  A library caller runs
`vmledger.open()` on whatever loop it runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any, Callable, Coroutine, TypeVar

from vmledger.eventstore.errors import InvalidRequestError

__all__ = ["run", "loop_factory", "loop_name", "LOOPS", "Terminated"]

T = TypeVar("T")
#: The values `VMLEDGER_LOOP` takes; unset or empty picks uvloop where it is installed.
LOOPS = ("uvloop", "asyncio")


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return the factory of the loop `choice` names (default `VMLEDGER_LOOP`), or None for asyncio's.

    Raises:
        InvalidRequestError: `choice` is not one of `LOOPS`, or is `uvloop` and uvloop is not installed.
    """
    choice = os.environ.get("VMLEDGER_LOOP", "") if choice is None else choice
    if choice not in ("", *LOOPS):
        raise InvalidRequestError(f"VMLEDGER_LOOP must be one of {', '.join(LOOPS)}, not {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise InvalidRequestError("VMLEDGER_LOOP=uvloop, but uvloop is not installed "
                                      "(pip install uvloop, or unset VMLEDGER_LOOP)") from None
        return None
    return uvloop.new_event_loop


def loop_name(factory: Callable[[], asyncio.AbstractEventLoop] | None) -> str:
    """Return the name and version of the loop a `loop_factory` result makes, as a bench header shows it."""
    if factory is None:
        return "asyncio"
    import uvloop
    return f"uvloop {uvloop.__version__}"


class Terminated(Exception):
    """SIGTERM cancelled the coroutine `run` ran, which ended as an interrupted one does."""


def run(main: Coroutine[Any, Any, T], *, terminable: bool = False) -> T:
    """Run `main` to its end on a new loop of the kind `VMLEDGER_LOOP` picks (`loop_factory`), as `asyncio.run` does.

    With `terminable`, a SIGTERM cancels `main` as Ctrl-C does (a command's
    request says what it leaves in flight, its ledger closes), and raises
    `Terminated`; a second SIGTERM meanwhile ends the process at once.  Only
    in the main thread, and only where SIGTERM has its default action: one
    ignored stays ignored.

    Raises:
        InvalidRequestError: as `loop_factory` (before `main` starts; it is closed unrun).
        Terminated: with `terminable`, SIGTERM came, and `main` ended.
    """
    try:
        factory = loop_factory()
    except InvalidRequestError:
        main.close()
        raise
    if terminable and threading.current_thread() is threading.main_thread() and (
            signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
        main = _terminable(main)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


async def _terminable(main: Coroutine[Any, Any, T]) -> T:
    """Await `main`, cancelled by the first SIGTERM (`Terminated` then); the next one has its default action again."""
    loop, task, terminated = asyncio.get_running_loop(), asyncio.current_task(), []

    def stop() -> None:
        loop.remove_signal_handler(signal.SIGTERM)
        terminated.append(True)
        assert task is not None
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, stop)
    try:
        result = await main
    except asyncio.CancelledError:
        if not terminated:
            raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    if terminated:  # cancelled, or done meanwhile: SIGTERM came all the same
        raise Terminated("terminated (SIGTERM)")
    return result
