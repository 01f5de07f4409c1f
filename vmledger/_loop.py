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
from typing import Any, Callable, Coroutine, TypeVar

from vmledger.eventstore.errors import InvalidRequestError

__all__ = ["run", "loop_factory", "loop_name", "LOOPS"]

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


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end on a new loop of the kind `VMLEDGER_LOOP` picks (`loop_factory`), as `asyncio.run` does.

    Raises:
        InvalidRequestError: as `loop_factory` (before `main` starts; it is closed unrun).
    """
    try:
        factory = loop_factory()
    except InvalidRequestError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
