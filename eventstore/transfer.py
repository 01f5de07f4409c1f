"""Moving a log between databases: one JSON object per event, with its hash link."""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

from vmledger.eventstore.backends.common import ChainChecker
from vmledger.eventstore.codec import canonical, dumps, dumps_plain, dumps_value, loads_exact
from vmledger.eventstore.errors import (
    ChainBrokenError, DamagedExportError, InvalidRequestError, StorageError, VmledgerError,
)

__all__ = ["to_line", "from_line", "checked_chunks", "ChainChecker"]

_KEYS = ("position", "stream", "version", "type", "schema_version", "data", "metadata", "recorded_at", "hash")


def to_line(row: Sequence[Any]) -> str:
    """Return the export line of a stored row: every stored field, data and metadata as objects.

    That is the `dumps` of the row's fields by name, data and metadata
    parsed; written here a field at a time, keys in order, with each stored
    JSON text made canonical (`canonical`) rather than parsed and written again.
    """
    position, stream, version, type_, schema_version, data, metadata, recorded_at, hash_ = row
    try:
        data, metadata = canonical(data), canonical(metadata)
    except (ValueError, TypeError) as e:  # changed behind the ledger's back: `verify` names the damage too
        raise StorageError(f"stored {type_} at position {position} does not decode: {e}") from e
    return (f'{{"data":{data},"hash":{dumps_value(hash_)},"metadata":{metadata},'
            f'"position":{dumps_value(position)},"recorded_at":{dumps_value(recorded_at)},'
            f'"schema_version":{dumps_value(schema_version)},"stream":{dumps_value(stream)},'
            f'"type":{dumps_value(type_)},"version":{dumps_value(version)}}}')


def from_line(line: str, number: int) -> tuple[Any, ...]:
    """Return the stored row an export line holds (data and metadata as their canonical text).

    Raises:
        InvalidRequestError: the line is not an export object, naming its line number.
    """
    try:
        fields, is_plain = loads_exact(line)
        if not isinstance(fields, dict) or set(fields) != set(_KEYS):
            raise ValueError(f"expected the keys {', '.join(_KEYS)}")
        write = dumps_plain if is_plain else dumps
        row = tuple(write(fields[k]) if k in ("data", "metadata") else fields[k] for k in _KEYS)
        for i in (0, 2, 4):
            if isinstance(row[i], bool) or not isinstance(row[i], int):
                raise ValueError(f"{_KEYS[i]} must be a whole number")
        for i in (1, 3, 7, 8):
            if not isinstance(row[i], str):
                raise ValueError(f"{_KEYS[i]} must be text")
    except ValueError as e:
        raise InvalidRequestError(f"line {number}: not an exported event ({e})") from e
    return row


def checked_chunks(lines: Iterable[str], checker: ChainChecker, size: int) -> Iterator[list[tuple[Any, ...]]]:
    """Yield the rows of an export's lines `size` at a time, each chunk checked by `checker` before it is yielded.

    Blank lines are skipped; errors number the lines as `lines` gives them.

    Where a line is no export line (or reading `lines` raises a
    `VmledgerError`), or breaks the chain, the rows before it are yielded
    first, then its error is raised once they are taken: so a caller that
    folds each chunk as it comes meets the first error that importing line
    by line would, be it the fold's own or the export's.

    Raises:
        InvalidRequestError: a line is not an export line, naming its line number.
        DamagedExportError: the chain breaks, naming the position and the line.
    """
    lines, number = iter(lines), 0
    while True:
        rows: list[tuple[Any, ...]] = []
        numbers: list[int] = []  # each row's line
        failure: VmledgerError | None = None
        line: str | None = ""
        start = checker.position
        while line is not None and len(rows) < size:
            try:
                line = next(lines, None)
                if line is not None:
                    number += 1
                    if line.strip():
                        rows.append(from_line(line, number))
                        numbers.append(number)
            except VmledgerError as e:  # a line that is no export line, or one that cannot be read
                failure, line = e, None
        try:
            checker.check_all(rows)
        except ChainBrokenError as e:  # the chain breaks before the line that failed, if one did
            failure = DamagedExportError(e.position, e.detail, numbers[checker.position - start])
        if checker.position > start:
            yield rows[:checker.position - start]
        if failure is not None:
            raise failure
        if line is None:
            return
