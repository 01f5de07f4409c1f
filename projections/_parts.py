"""The rebuild's fold split across worker processes, by stream.

Domains fold independently, and a request's events lie on its domain's
stream, so the streams of a log can be split into parts, each folded by a
`Replay` in a process of its own, while the rebuilding process writes the
rows they send.  The split is by the last character of the stream name (a
domain's uuid), in SQL and here alike (`part_of`).

Any part that cannot be folded alone ends the split fold, and the caller
folds the whole log in one process instead: an outcome on another domain's
stream than its request's (the store accepts it, no decision writes it), an
outcome of an unknown request, a row that does not decode, or a worker that
fails to start or stops.  So the rows and the errors of a rebuild are those
of the one-process fold, whatever happens here.

A worker is `python -c` running `work`, with two pipe file descriptors;
the messages are `multiprocessing.connection` pickles:

- to the worker: `(rows, part, parts, head, chunk)` first, where `rows` is a
  picklable callable yielding the part's stored rows in chunks, then the
  stored history row of each request it asks for (or None);
- from the worker: `("need", request_id)`, `("rows", table, rows, position)`
  (position None for the last rows), `("done",)`, or a traceback's text in
  `("unfolded", text)` (the log's fault: a row or an event the fold refuses)
  or `("failed", text)` (anything else, which the parent logs).

While the rebuilding process deletes the rows it replaces, a thread reads
the workers' messages ahead into memory (`_Early`), so that they fold
meanwhile rather than wait on a full pipe.
"""

from __future__ import annotations

import collections
import gc
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Generator, Iterator, Protocol, Sequence

from vmledger.eventstore.backends.common import ChainChecker
from vmledger.eventstore.errors import ChainBrokenError, VmledgerError
from vmledger.eventstore.log import Step
from vmledger.projections._replay import Replay
from vmledger.projections.model import FORGET_REQUEST
from vmledger.projections.scan import scan

__all__ = ["PartRows", "part_of", "fold_in_parts", "check_chain", "work"]

_log = logging.getLogger("vmledger")
#: The bytes of the workers' messages read ahead at most while the rebuilding process deletes the old rows
#: (`_Early`): at 1,000,000 events those rows take it 1.5–4.5 s, in which the workers send some 30 MiB.
_EARLY_BYTES = 32 << 20
# The worker's main: this process's module search path first, so that it imports the very code this
# process runs (a source checkout, an installed package), whatever its working directory holds.
_MAIN = ("import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
         "from multiprocessing.connection import Connection; from vmledger.projections._parts import work; "
         "work(Connection(int(sys.argv[2]), writable=False), Connection(int(sys.argv[3]), readable=False))")


def _search_path() -> str:
    """Return this process's module search path, made absolute, as JSON for the worker's command line."""
    return json.dumps([os.path.abspath(p) for p in sys.path])


class PartRows(Protocol):
    """Reads one part of the log in a worker process; picklable, so the worker gets its own copy."""

    def __call__(self, part: int, parts: int, head: int, chunk: int, hashes: bool = False
                 ) -> Iterator[list[tuple[Any, ...]]]:
        """Yield, in chunks of at most `chunk` rows in position order, the `SCAN_COLUMNS` rows up to `head` of the streams `part_of(stream, parts) == part`.

        With `hashes`, the rows are `COLUMNS` rows, their hash last.
        """
        ...


def part_of(stream: str, parts: int) -> int:
    """Return the part a stream's events fold in: its last character's code point modulo `parts` (0 for '')."""
    return (ord(stream[-1]) if stream else 0) % parts


def fold_in_parts(rows: PartRows, parts: int, head: int, chunk: int, insert: Callable[[str], str],
                  history_by_id: str, progress: Callable[[int, int], None] | None,
                  first: Sequence[Step] = ()) -> Generator[Step, Any, bool]:
    """Yield the statements that write the rows of `parts` workers' folds of the log up to `head`.

    Returns True once every part is folded and written, False when the log
    must be folded in one process instead (see the module's docstring); the
    rows written so far must then be deleted.  `insert(table)` is the SQL
    inserting a row of `table`, `history_by_id` the query of one stored
    history row by request id.  `first` (deleting the rows to replace) is
    yielded once the workers are started, so that it runs while they start.
    """
    workers: list[_Worker] = []
    try:
        for part in range(parts):
            workers.append(_Worker.start((rows, part, parts, head, chunk)))
        if first:
            with _Early(workers, _EARLY_BYTES):
                for step in first:
                    yield step
        reached = [0] * parts
        running = {w.output: i for i, w in enumerate(workers)}
        while running:
            # The messages read while `first` ran come first, in order.
            for ready in [c for c, i in running.items() if workers[i].early] or wait(list(running)):
                i = running[ready]
                message = workers[i].receive()
                kind = message[0]
                if kind == "rows":
                    _, table, part_rows, position = message
                    if part_rows:
                        yield ("execute_many", insert(table), part_rows)
                    if position is not None:
                        reached[i] = position
                        if progress is not None:
                            progress(min(reached), head)
                elif kind == "done":
                    del running[ready]
                    reached[i] = head
                    if progress is not None:
                        progress(min(reached), head)
                elif kind == "need":
                    request_id = message[1]
                    stored = yield ("fetch_all", history_by_id, (request_id,))
                    # The request's row is this part's own only if its domain folds here.
                    if not stored or part_of(stored[0][1], parts) != i:
                        return False
                    for forget in FORGET_REQUEST:
                        yield ("execute", forget, (request_id,))
                    workers[i].send(tuple(stored[0]))
                elif kind == "unfolded":
                    _log.debug("rebuild: part %d folds in one process instead: %s", i, message[1])
                    return False
                else:
                    raise OSError(message[1].strip().splitlines()[-1])
        return True
    except (OSError, EOFError) as e:
        _log.warning("rebuild: the worker processes failed (%s); folding in one process", e)
        return False
    finally:
        for w in workers:
            w.stop()


class _Worker:
    """One worker process and the two pipes to it."""

    def __init__(self, process: subprocess.Popen[bytes], input_: Connection, output: Connection) -> None:
        self.process, self.input, self.output = process, input_, output
        #: Its messages read ahead (`_Early`), as pickles, to be received before any other.
        self.early: collections.deque[bytes] = collections.deque()

    @classmethod
    def start(cls, spec: tuple[Any, ...]) -> "_Worker":
        child_in, parent_out = os.pipe()
        parent_in, child_out = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _MAIN, _search_path(), str(child_in), str(child_out)], pass_fds=(child_in, child_out),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)  # a terminal's Ctrl-C stops the rebuild's process, which stops these
        except BaseException:
            os.close(parent_in)
            os.close(parent_out)
            raise
        finally:  # the child has its own copies
            os.close(child_in)
            os.close(child_out)
        worker = cls(process, Connection(parent_out, readable=False), Connection(parent_in, writable=False))
        worker.send(spec)
        return worker

    def send(self, message: Any) -> None:
        self.input.send(message)

    def receive(self) -> tuple[Any, ...]:
        return pickle.loads(self.early.popleft()) if self.early else self.output.recv()

    def stop(self) -> None:
        """End the process, whatever it is doing, and close the pipes."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.input.close()
        self.output.close()


class _Early:
    """Reads the workers' messages ahead into memory, in a thread, while the rebuilding process does something else.

    The workers start folding at once, but the rebuilding process first
    deletes the rows it replaces (seconds, on a long log), and a worker
    blocks on its pipe once the pipe is full: read ahead, the workers fold
    meanwhile.  Reading stops once `limit` bytes are held (the workers wait
    again), or a pipe fails or ends: the rebuilding process then meets that
    failure or end itself, on its next read of that pipe.
    """

    def __init__(self, workers: Sequence[_Worker], limit: int) -> None:
        self._workers, self._limit = workers, limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="vmledger-rebuild-early", daemon=True)

    def __enter__(self) -> "_Early":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _read(self) -> None:
        held, reading = 0, {w.output: w for w in self._workers}
        while reading and held < self._limit and not self._stop.is_set():
            for ready in wait(list(reading), timeout=0.05):
                if held >= self._limit:  # several pipes may be ready at once: the limit holds all the same
                    break
                try:
                    message = ready.recv_bytes()
                except (OSError, EOFError):
                    del reading[ready]
                    continue
                reading[ready].early.append(message)
                held += len(message)


def check_chain(rows: PartRows, head: int, chunk: int, stop: threading.Event) -> int | None:
    """Check the chain of the log up to `head` in a worker process, as `ChainChecker` does; return the last position.

    Returns None if the worker fails to start or stops (the caller checks
    the chain itself instead), and early if `stop` is set.

    Raises:
        ChainBrokenError: naming the first position that does not check out.
    """
    try:
        worker = _Worker.start(("chain", rows, head, chunk))
    except OSError as e:
        _log.warning("verify: the worker process failed to start (%s); checking the chain in this one", e)
        return None
    try:
        while not wait([worker.output], timeout=0.1):
            if stop.is_set():
                return None
        message = worker.receive()
    except (OSError, EOFError) as e:
        _log.warning("verify: the worker process failed (%s); checking the chain in this one", e)
        return None
    finally:
        worker.stop()
    if message[0] == "broken":
        raise ChainBrokenError(message[1], message[2])
    if message[0] == "checked":
        return int(message[1])
    _log.warning("verify: the worker process failed (%s); checking the chain in this one",
                 message[1].strip().splitlines()[-1])
    return None


def _check(rows: PartRows, head: int, chunk: int, output: Connection) -> None:
    """Check the chain of the log up to `head` and send the verdict (the worker process's main, given "chain")."""
    checker = ChainChecker(decode=scan)
    try:
        for chunk_rows in rows(0, 1, head, chunk, hashes=True):
            checker.check_all(chunk_rows)
    except ChainBrokenError as e:
        output.send(("broken", e.position, e.detail))
        return
    except Exception:
        output.send(("failed", traceback.format_exc()))
        return
    output.send(("checked", checker.position))


def work(input_: Connection, output: Connection) -> None:
    """Fold one part and send its rows, or check the chain (the worker process's main).

    The cyclic garbage collector stays off for the worker's life: the fold
    makes no reference cycles, and pausing it around each chunk only moved
    its passes over the many long-lived domain folds to the pause's end
    (about a tenth of a worker's time).
    """
    gc.disable()
    spec = input_.recv()
    if spec[0] == "chain":
        _check(*spec[1:], output)
        return
    rows, part, parts, head, chunk = spec
    replay = Replay()
    try:
        for chunk_rows in rows(part, parts, head, chunk):
            request_id = replay.fold(chunk_rows)
            while request_id is not None:
                output.send(("need", request_id))
                request_id = replay.resume(input_.recv())
            done = replay.completed()
            for n, (table, table_rows) in enumerate(done, start=1):
                output.send(("rows", table, table_rows, chunk_rows[-1][0] if n == len(done) else None))
        for table, table_rows in replay.rows():
            output.send(("rows", table, table_rows, None))
    except (ValueError, VmledgerError):  # the log's: the parent folds in one process and raises it there
        output.send(("unfolded", traceback.format_exc()))
        return
    except Exception:
        output.send(("failed", traceback.format_exc()))
        return
    output.send(("done",))

