"""The rebuild's driver of the fold: stored rows in, projection rows out, in bounded memory.

`Replay` keeps one `eventstore.state.DomainFold` per stream and feeds it the
change events (`…Requested` and the outcomes, nearly all of a log) with
their fields unboxed, as `projections.scan` decodes them, and every other
event whole.  The rules are the fold's and the model's own
(`DomainFold.requested`, `.outcome`, `.step`; `requested_record`,
`settle_record`; `domain_rows`, `history_row`, `ended_episodes`): this
module only decides when to call them and when to write a completed
request's rows out.  It counts the days of the outcomes of the `history`
rows it gives out (`outcome_days`).
"""

from __future__ import annotations

import contextlib
import gc
from collections import Counter
from typing import Any, Callable, Generator, Iterator, Sequence

from vmledger.eventstore.catalogue import Outcome
from vmledger.eventstore.log import RecordedEvent, timestamp
from vmledger.eventstore.state import DomainFold, drift_marks
from vmledger.projections.model import (
    TABLES, completed, count_outcome_days, domain_rows, ended_episodes, history_row, outcome_day_rows,
    outcome_rows, record_from_row, requested_record, settle_record,
)
from vmledger.projections.scan import Change, as_change, scan

__all__ = ["Replay"]

_IN_FLIGHT = Outcome.REQUESTED.status
# Domains turned into rows per batch at the end: bounds the rows held at once.
_ROWS_BATCH = 1000


class Replay:
    """Domain folds and open requests' history records, fed stored rows in log order."""

    def __init__(self) -> None:
        self.domains: dict[str, DomainFold] = {}
        self.history: dict[str, list[Any]] = {}
        self._completed: list[str] = []  # requests completed since the last `completed()`
        #: The rows of the drift episodes ended since the last `completed()`.
        self.ended: list[tuple] = []
        #: The `outcome_days` counts of the outcomes of the history rows given out so far, less those taken back.
        self.days: Counter[tuple] = Counter()
        self._folding = self._fold([])

    def fold(self, rows: Sequence[Sequence[Any]],
             decode: Callable[[Sequence[Sequence[Any]]], list[Change | RecordedEvent]] = scan) -> str | None:
        """Fold stored rows (`SCAN_COLUMNS`) in order, as `decode` reads them; return None when done.

        An outcome of a request whose record is not held (the caller wrote it
        out, completed) stops the fold and returns the request id: call
        `resume` with the request's stored history row to go on.

        Raises:
            StorageError: a row does not decode.
            ValueError: an event precedes its domain's definition, or an
                outcome names a request never recorded (as `Model.feed`).
        """
        with _collector_paused():
            self._folding = self._fold(decode(rows))
        return self.resume(None)

    def resume(self, row: tuple | None) -> str | None:
        """Go on with the fold `fold` stopped, given the stored history row it asked for (None if there is none).

        Returns and raises as `fold`.
        """
        with _collector_paused():
            try:
                return self._folding.send(row)
            except StopIteration:
                return None

    def _fold(self, items: list[Change | RecordedEvent]) -> Generator[str, tuple | None, None]:
        """Fold `items`, yielding the id of a request whose stored history row is needed, to be sent back."""
        domains, history, done, ended, days = self.domains, self.history, self._completed, self.ended, self.days
        for item in items:
            if item.__class__ is not tuple:
                rec: RecordedEvent = item  # type: ignore[assignment]
                change = as_change(rec)
                if change is None:
                    w = domains.get(rec.stream)
                    before = drift_marks(w) if w is not None else None
                    domains[rec.stream] = w = DomainFold.folded(w, rec)
                    if before:
                        ended += ended_episodes(rec.stream, before, drift_marks(w), rec.position,
                                                timestamp(rec.recorded_at))
                    continue
                item = change
            (position, stream, version, at, at_text, name, status, request_id, prop, scope,
             requested, value, reason, extra) = item
            w = domains.get(stream)
            if status == _IN_FLIGHT:
                if w is None:
                    raise ValueError(f"{name} at position {position} precedes DomainDefined")
                history[request_id] = requested_record(
                    request_id, stream, w.name, prop, requested, scope, extra, reason, at_text, position,
                    w.requested(position, version, at, request_id, prop, scope, requested))
                continue
            record = history.get(request_id)
            if record is None:  # a late outcome of a request written out: take its row back
                found = yield request_id
                if found is not None:  # the caller takes its rows out: their counts go too
                    record = record_from_row(found)
                    count_outcome_days(days, outcome_rows(record), -1)
            if w is None:
                raise ValueError(f"{name} at position {position} precedes DomainDefined")
            # An outcome moves its property's mark alone; the fold keeps a mark exactly where the values differ.
            mark = w.marks.get(prop)
            w.outcome(position, version, at, request_id, prop, scope, status, value, reason)
            if mark is not None and ((now := w.marks.get(prop)) is None or now.position != mark.position):
                ended += ended_episodes(stream, {prop: mark}, {}, position, at_text)
            if record is None:
                raise ValueError(f"outcome at position {position} for unknown request {request_id}")
            history[request_id] = record  # this fold's own: settled in place
            settle_record(record, scope, status, value, reason, extra, at_text)
            if completed(record):
                done.append(request_id)

    def completed(self) -> list[tuple[str, list[tuple]]]:
        """Return `(table, rows)` of the requests completed and the drift episodes ended so far, and forget them.

        The tables are `history`, then `episodes`.
        """
        records = []
        with _collector_paused():
            for request_id in self._completed:
                record = self.history.get(request_id)
                if record is not None and completed(record):
                    records.append(record)
                    del self.history[request_id]
            history = self._given_out(records)
        self._completed = []
        ended, self.ended = self.ended, []
        return [("history", history), ("episodes", ended)]

    def _given_out(self, records: list[list[Any]]) -> list[tuple]:
        """Return the history rows of request records, counting the days of their outcomes."""
        for record in records:
            count_outcome_days(self.days, outcome_rows(record))
        return [history_row(record) for record in records]

    def rows(self) -> Iterator[tuple[str, list[tuple]]]:
        """Yield `(table, rows)` for every domain, every drift episode ended since `completed()`, every request still open (`history`), in batches, and last the `outcome_days` of the outcomes of every history row given out."""
        uuids = sorted(self.domains)
        for start in range(0, len(uuids), _ROWS_BATCH):
            batch: dict[str, list[tuple]] = {t: [] for t in TABLES if t != "history"}
            with _collector_paused():
                for uuid in uuids[start:start + _ROWS_BATCH]:
                    for table, part in domain_rows(self.domains[uuid]).items():
                        batch[table].extend(part)
            yield from batch.items()
        yield "episodes", self.ended
        self.ended = []
        with _collector_paused():
            history = self._given_out([self.history[r] for r in sorted(self.history)])
        yield "history", history
        yield "outcome_days", outcome_day_rows(self.days)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector, if it runs, for one stretch of the rebuild.

    The fold makes no reference cycles, but it allocates several small
    containers per event while it holds many long-lived ones, and the
    collector's passes over them took about a fifth of its time.  A pause
    covers one synchronous stretch (about a chunk), never a `yield`, so other
    threads' cycles wait no longer than that, and it always ends.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
