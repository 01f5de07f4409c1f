"""Locks by key that every process writing one ledger honours: what orders their requests' hypervisor calls.

A request's hypervisor calls and the outcomes they make must reach the
hypervisor and the log in one order: two processes setting one property of
one domain at once must not leave the log saying one value while the
hypervisor holds the other.  `Ledger.set` holds its domain's lock of a scope
from that scope's hypervisor call until its outcome is committed.

On SQLite the locks are byte-range locks of a file beside the database
(`<database>-locks`, empty), one byte per key: Linux's open file description
locks, which the kernel frees when their process ends, however it ends.  On
PostgreSQL they are the session's advisory locks (`PostgresEventLog.exclusive`),
tried and given back for all of a process's callers in one statement.
Within a process an `asyncio.Lock` per key comes first, so that a key is
asked of the kernel or the server by one task at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import weakref
import zlib
from typing import AsyncIterator, Awaitable, Callable

from vmledger.eventstore.errors import LockTimeoutError, StorageError

__all__ = ["KeyLocks", "FileLocks", "key_of"]

#: The first and the longest pause between two tries of a lock another process holds.
_FIRST_PAUSE, _LONGEST_PAUSE = 0.001, 0.05
#: How long this process's tasks hand a key on among themselves before they let it go for a while (twice the longest
#: pause), so that another process, which tries at most a longest pause apart, gets its turn: else it may wait as long
#: as they keep coming.
_STREAK, _TURN = 2.0, 2 * _LONGEST_PAUSE


def key_of(name: str) -> int:
    """Return the 32-bit key of a name (a stream): two names may share one, which only orders them too."""
    return zlib.crc32(name.encode("utf-8", "surrogatepass"))


class KeyLocks:
    """Hold one key at a time per task of this process, then across processes through `try_lock` and `unlock`."""

    def __init__(self, try_lock: Callable[[int], Awaitable[bool]], unlock: Callable[[int], Awaitable[None]]) -> None:
        self._try_lock, self._unlock = try_lock, unlock
        self._local: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()
        #: Key -> this process's tasks holding or waiting for it; key -> since when they have held it without a break.
        self._users: dict[int, int] = {}
        self._streaks: dict[int, float] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str, wait: float) -> AsyncIterator[None]:
        """Hold the lock of `name` for the block: after this process's tasks that asked first, and after
        another process's holder, waited for `wait` seconds at most.

        This process's tasks hand the lock on among themselves without asking
        the kernel or the server again, but not for more than `_STREAK`
        seconds in a row: then it is let go for `_TURN`, long enough for
        another process's waiter, which tries at most `_LONGEST_PAUSE` apart.

        Raises:
            LockTimeoutError: another process held it longer.
        """
        key, loop = key_of(name), asyncio.get_running_loop()
        local = self._local.get(key)
        if local is None:
            local = self._local[key] = asyncio.Lock()
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with local:
                began = self._streaks.setdefault(key, loop.time())
                if loop.time() - began > _STREAK:  # another process's turn, if it waits
                    del self._streaks[key]
                    await asyncio.sleep(_TURN)
                pause, deadline = _FIRST_PAUSE, None
                while not await self._try_lock(key):
                    now = loop.time()
                    deadline = now + wait if deadline is None else deadline
                    if now >= deadline:
                        raise LockTimeoutError(f"another writer held the lock of {name} for {wait:g}s", wait)
                    await asyncio.sleep(min(pause, deadline - now))
                    pause = min(pause * 2, _LONGEST_PAUSE)
                try:
                    yield
                finally:
                    await self._unlock(key)
        finally:
            self._users[key] -= 1
            if not self._users[key]:  # nobody here holds or waits for it: the streak ends
                del self._users[key]
                self._streaks.pop(key, None)


# `struct flock` of Linux: l_type, l_whence (shorts), l_start, l_len (off_t), l_pid, and padding.
_FLOCK = "hhqqi4x"
# Open file description locks: owned by the open file, so two ledgers of one process exclude each other,
# and closing another descriptor of the file frees none.  Elsewhere, POSIX locks, owned by the process.
_SETLK = getattr(fcntl, "F_OFD_SETLK", fcntl.F_SETLK)


class FileLocks(KeyLocks):
    """`KeyLocks` held as byte-range locks of a file, one byte per key.

    Raises:
        OSError: the file cannot be opened or made.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        super().__init__(self._try, self._free)

    def close(self) -> None:
        """Close the file, which frees every lock it holds."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _set(self, kind: int, key: int) -> None:
        fcntl.fcntl(self._fd, _SETLK, struct.pack(_FLOCK, kind, os.SEEK_SET, key, 1, 0))

    async def _try(self, key: int) -> bool:
        try:
            self._set(fcntl.F_WRLCK, key)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise StorageError(f"cannot lock {self.path}: {e.strerror}") from e
        return True

    async def _free(self, key: int) -> None:
        try:
            self._set(fcntl.F_UNLCK, key)
        except OSError as e:
            raise StorageError(f"cannot unlock {self.path}: {e.strerror}") from e
