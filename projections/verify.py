"""Checking the stored projections against a fold of the log, one domain at a time, in bounded memory.

`verify` must hold neither the stored rows nor the expected ones whole: a
log of a million events has hundreds of thousands of history rows.  So the
rebuild's fold (`Replay`) writes the rows it expects into a scratch SQLite
file as it goes, exactly as a rebuild writes the tables (a long log in
worker processes, where the backend lets them read it), and both sides are
then read back in pages, in the same order, one domain's rows at a time:
each table sorted by the column naming its domain first, on an index.  A
domain's rows are compared, and digested for a checkpoint, while the next
domain's are still unread; memory holds the fold's domain states, one page
per table and one domain's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import sqlite3
import tempfile
import threading
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import aiosqlite

from vmledger.eventstore.backends.common import CHUNK, check_lowest
from vmledger.eventstore.backends.sqlite import SyncTx
from vmledger.eventstore.codec import dumps, dumps_plain, plain
from vmledger.eventstore.errors import ChainBrokenError
from vmledger.eventstore.log import run_steps_sync, stopping
from vmledger.projections._parts import PartRows, check_chain
from vmledger.projections._replay import Replay
from vmledger.projections.model import FORGET_REQUEST, TABLES
from vmledger.projections.store import (
    ADD_OUTCOME_DAYS, OUTCOME_DAYS_ROWS, SCHEMA, TableProjector,
)

__all__ = ["Reader", "folded_rows", "chain_in_worker", "domain_groups", "paired_groups", "compare", "digest",
           "compare_days"]

Reader = Callable[..., Awaitable[list[tuple[Any, ...]]]]
#: Rows read per query, per table.  The pages of every table, of both sides, are held at once while
#: domains are compared: at 1,000 rows they take about 12 MiB less than at 2,000, and `verify` of
#: 1,000,000 events takes as long, within the noise (27.0-28.7 s against 26.1-29.3 s, in turn).
PAGE = 1000
# Each table's reading order: the column naming the domain first, then columns that make the order
# total and that an index serves (history's key, the request id, comes after other columns: a domain's
# rows are put in key order in memory, where one domain's rows are).
_ORDER = {
    "domains": ("uuid",),
    "persistent": ("domain", "property"),
    "live": ("domain", "property"),
    "drift": ("domain", "property"),
    "history": ("domain", "property", "position", "request_id"),
    "episodes": ("domain", "property", "since_position"),
}
_INSERT = {table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
           for table, (cols, _) in TABLES.items()}
_INSERT["outcome_days"] = ADD_OUTCOME_DAYS
_HISTORY_BY_ID = f"SELECT {', '.join(TABLES['history'][0])} FROM history WHERE request_id = ?"
Group = dict[str, list[tuple]]
#: The scratch database's settings: a file thrown away, never read after a crash.
_SCRATCH = ("journal_mode = OFF", "synchronous = OFF")


@contextlib.asynccontextmanager
async def folded_rows(rows: AsyncIterator[Sequence[Any]], chunk: int = CHUNK, parts: PartRows | None = None,
                      head: int = 0, projector: TableProjector | None = None) -> AsyncIterator[Reader]:
    """Fold the stored rows (`COLUMNS`, in order) into a scratch database; yield a reader of its projection rows.

    Given `parts`, a way for worker processes to read the log, and `head`,
    the position `rows` end at, a long log is folded in worker processes as
    `projector` (by default a `TableProjector` reading `chunk` events at a
    time) folds it for a rebuild (`TableProjector.fold_in_parts`), and
    `rows` are read only if it must be folded in one process after all.
    The reader answers `OUTCOME_DAYS_ROWS` with the days the fold counted.

    The scratch file lives in a temporary directory, removed on exit.

    Raises:
        StorageError: a row does not decode.
        ValueError: the fold refuses an event (as `Model.feed`).
    """
    with tempfile.TemporaryDirectory(prefix="vmledger-verify-") as tmp:
        path = os.path.join(tmp, "expected.db")
        projector = projector or TableProjector(chunk=chunk)
        if parts is None or not projector.folds_in_parts(head) or not await stopping(
                lambda stop: asyncio.to_thread(_fold_in_parts, path, projector, parts, head, stop)):
            await _fold(path, rows, chunk)
        async with aiosqlite.connect(path) as db:

            async def fetch_all(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
                return [tuple(r) for r in await db.execute_fetchall(sql, params)]

            yield fetch_all


def _fold_in_parts(path: str, projector: TableProjector, parts: PartRows, head: int, stop: threading.Event) -> bool:
    """Fold the log up to `head` into a new scratch database at `path` in worker processes; False if it cannot be.

    Then nothing is left at `path`.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in _SCRATCH:
            conn.execute(f"PRAGMA {pragma}")
        for statement in SCHEMA:
            conn.execute(statement)
        conn.execute("BEGIN")
        if run_steps_sync(SyncTx(conn), projector.fold_in_parts(parts, head, bulk=True), stop):
            conn.execute("COMMIT")
            return True
    finally:
        conn.close()
    os.remove(path)  # unjournalled: what it wrote cannot be rolled back
    return False


async def _fold(path: str, rows: AsyncIterator[Sequence[Any]], chunk: int) -> None:
    """Fold the stored rows (`COLUMNS`, in order) into a new scratch database at `path`, in this process."""
    async with aiosqlite.connect(path) as db:
        for pragma in _SCRATCH:
            await db.execute(f"PRAGMA {pragma}")
        for statement in SCHEMA:
            await db.execute(statement)
        replay, part = Replay(), []

        async def fold() -> None:
            request_id = replay.fold(part)
            while request_id is not None:  # a late outcome of a completed request: its row back
                found = await db.execute_fetchall(_HISTORY_BY_ID, (request_id,))
                if found:
                    for forget in FORGET_REQUEST:
                        await db.execute(forget, (request_id,))
                request_id = replay.resume(tuple(found[0]) if found else None)
            for table, done in replay.completed():
                await db.executemany(_INSERT[table], done)
            part.clear()

        async for row in rows:
            part.append(row[:-1])  # all but the hash
            if len(part) == chunk:
                await fold()
        await fold()
        for table, table_rows in replay.rows():
            await db.executemany(_INSERT[table], table_rows)
        await db.commit()


async def chain_in_worker(parts: PartRows, fetch_all: Reader, head: int, alone: Callable[[], Awaitable[int]]) -> int:
    """Check the chain of the log up to `head` in a worker process, or with `alone()` if it cannot; return the head.

    Raises:
        ChainBrokenError: naming the first position that does not check out.
    """
    await check_lowest(fetch_all)
    checked = await stopping(lambda stop: asyncio.to_thread(check_chain, parts, head, CHUNK, stop))
    return await alone() if checked is None else checked


async def _pages(fetch_all: Reader, table: str) -> AsyncIterator[list[tuple]]:
    """Yield every row of `table` in its reading order, a page per query (keyset paging), a page at a time."""
    cols = TABLES[table][0]
    order = _ORDER[table]
    at = [cols.index(c) for c in order]
    select, by = f"SELECT {', '.join(cols)} FROM {table}", ", ".join(order)
    after: tuple | None = None
    while True:
        if after is None:
            found = await fetch_all(f"{select} ORDER BY {by} LIMIT {PAGE}", ())
        else:
            found = await fetch_all(
                f"{select} WHERE ({by}) > ({', '.join('?' * len(order))}) ORDER BY {by} LIMIT {PAGE}", after)
        if found:
            yield [tuple(row) for row in found]
        if len(found) < PAGE:
            return
        after = tuple(found[-1][i] for i in at)


class _Table:
    """One table's rows in reading order, taken a domain at a time."""

    def __init__(self, fetch_all: Reader, table: str) -> None:
        self._pages = _pages(fetch_all, table)
        self._column = TABLES[table][0].index("uuid" if table == "domains" else "domain")
        self._page: list[tuple] = []  # the rows of the page read last, from `_at` on not taken yet
        self._at = 0
        self._done = False

    async def peek(self) -> str | None:
        """Return the domain of the next row (None at the end)."""
        if self._at == len(self._page) and not self._done:
            self._page, self._at = await anext(self._pages, []), 0
            self._done = not self._page
        return self._page[self._at][self._column] if self._at < len(self._page) else None

    async def take(self, uuid: str) -> list[tuple]:
        """Return the rows of domain `uuid` that come next."""
        taken: list[tuple] = []
        column = self._column
        while await self.peek() == uuid:
            page, start = self._page, self._at
            end = start
            while end < len(page) and page[end][column] == uuid:
                end += 1
            taken += page[start:end]
            self._at = end
        return taken


async def domain_groups(fetch_all: Reader) -> AsyncIterator[tuple[str, Group]]:
    """Yield `(uuid, rows)` for every domain any projection row names, by uuid, each table's rows in key order."""
    tables = {table: _Table(fetch_all, table) for table in TABLES}
    while True:
        found = [u for u in [await t.peek() for t in tables.values()] if u is not None]
        if not found:
            return
        uuid = min(found)
        group = {table: await t.take(uuid) for table, t in tables.items()}
        group["history"].sort(key=lambda row: row[:TABLES["history"][1]])
        yield uuid, group


async def paired_groups(want: Reader, have: Reader) -> AsyncIterator[tuple[str, Group, Group]]:
    """Yield `(uuid, expected rows, stored rows)` for every domain either side names, by uuid."""
    empty: Group = {table: [] for table in TABLES}
    wanted, had = domain_groups(want), domain_groups(have)
    w, h = await anext(wanted, None), await anext(had, None)
    while w is not None or h is not None:
        if h is None or (w is not None and w[0] < h[0]):
            yield w[0], w[1], empty  # type: ignore[index]
            w = await anext(wanted, None)
        elif w is None or h[0] < w[0]:
            yield h[0], empty, h[1]
            h = await anext(had, None)
        else:
            yield w[0], w[1], h[1]
            w, h = await anext(wanted, None), await anext(had, None)


def digest(rows: Group) -> str:
    """Return the SHA-256 digest of one domain's projection rows: of their `dumps`, in table order.

    Written through `dumps_plain` when no value is a float (none is, but in
    a row changed behind the ledger's back): the same text, quicker.
    """
    tree = [[table, rows.get(table, [])] for table in TABLES]
    cells = itertools.chain.from_iterable(itertools.chain.from_iterable(rows.values()))
    return hashlib.sha256((dumps_plain(tree) if plain(cells) else dumps(tree)).encode()).hexdigest()


def compare(expected: Group, actual: Group) -> None:
    """Check that stored rows equal the rows a rebuild would write.

    Raises:
        ChainBrokenError: naming the first differing row's position.
    """
    for table in TABLES:
        want, have = expected[table], actual[table]
        if want == have:
            continue
        extra = sorted(set(have) - set(want)) or sorted(set(want) - set(have))
        row = extra[0] if extra else (want or have)[0]
        cols = TABLES[table][0]
        pos_col = "since_position" if "since_position" in cols else "position"
        position = row[cols.index(pos_col)] if pos_col in cols else 0
        raise ChainBrokenError(int(position), f"projection {table} disagrees with the log at row {row[:2]}")


async def compare_days(expected: list[tuple], fetch_all: Reader, head: int) -> None:
    """Check that the stored `outcome_days` rows (`OUTCOME_DAYS_ROWS`, zero counts left out) are `expected`.

    The table is the whole ledger's, no domain's, so it is checked whole,
    after the domains: its rows are a few a day.

    Raises:
        ChainBrokenError: naming the position of the first request made on
            the first day that differs (the head if the log has none that day).
    """
    have = [tuple(r) for r in await fetch_all(OUTCOME_DAYS_ROWS, ())]
    if have == expected:
        return
    row = next(min(r for r in pair if r is not None)
               for pair in itertools.zip_longest(expected, have) if pair[0] != pair[1])
    day = row[0]
    found = await fetch_all("SELECT position, requested_at FROM history WHERE requested_at >= ? "
                            "ORDER BY requested_at LIMIT 1", (f"{day}T",))
    position = found[0][0] if found and found[0][1].startswith(day) else head
    raise ChainBrokenError(int(position), f"projection outcome_days disagrees with the log at row {row[:2]}")
