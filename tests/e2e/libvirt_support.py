"""Helpers of the libvirt tests: libvirt-python or a clear skip, and `Ledger.watch` run as a task."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from vmledger import Ledger


def require_libvirt(tests: str) -> Any:
    """Return libvirt-python; without it skip the calling module, or fail it under CI=true, naming `tests`."""
    try:
        return importlib.import_module("libvirt")
    except ImportError as e:
        how = ("libvirt-python is not installed: apt-get install libvirt-dev pkg-config "
               "&& pip install 'vmledger[libvirt]' to run these tests")
        if os.environ.get("CI") == "true":
            raise ImportError(f"{how} (CI=true: {tests} must run)") from e
        pytest.skip(how, allow_module_level=True)


@contextlib.asynccontextmanager
async def watching(ledger: Ledger, interval: float) -> AsyncIterator[None]:
    """Run `ledger.watch(interval=...)` as a task for the block, then cancel it and check that it stopped cleanly."""
    task = asyncio.create_task(ledger.watch(interval=interval))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait((task,))
    assert (task.cancelled(), task.done()) == (True, True)


async def until(check: Callable[[], Awaitable[Any]], expected: Any, seconds: float = 10.0) -> float:
    """Poll `check()` until it returns `expected`, for at most `seconds`; return how long it took."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    got = await check()
    while got != expected and loop.time() - began < seconds:
        await asyncio.sleep(0.02)
        got = await check()
    assert got == expected
    return loop.time() - began
