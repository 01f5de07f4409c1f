"""Moving a log between databases: one JSON object per event, with its hash link."""

from __future__ import annotations

from typing import Any, Sequence

from vmledger.eventstore.backends.common import ChainChecker
from vmledger.eventstore.codec import dumps, loads
from vmledger.eventstore.errors import InvalidRequestError

__all__ = ["to_line", "from_line", "ChainChecker"]

_KEYS = ("position", "stream", "version", "type", "schema_version", "data", "metadata", "recorded_at", "hash")


def to_line(row: Sequence[Any]) -> str:
    """Return the export line of a stored row: every stored field, data and metadata as objects."""
    fields = dict(zip(_KEYS, row))
    fields["data"], fields["metadata"] = loads(fields["data"]), loads(fields["metadata"])
    return dumps(fields)


def from_line(line: str, number: int) -> tuple[Any, ...]:
    """Return the stored row an export line holds (data and metadata as their canonical text).

    Raises:
        InvalidRequestError: the line is not an export object, naming its line number.
    """
    try:
        fields = loads(line)
        if not isinstance(fields, dict) or set(fields) != set(_KEYS):
            raise ValueError(f"expected the keys {', '.join(_KEYS)}")
        row = tuple(dumps(fields[k]) if k in ("data", "metadata") else fields[k] for k in _KEYS)
        for i in (0, 2, 4):
            if isinstance(row[i], bool) or not isinstance(row[i], int):
                raise ValueError(f"{_KEYS[i]} must be a whole number")
        for i in (1, 3, 7, 8):
            if not isinstance(row[i], str):
                raise ValueError(f"{_KEYS[i]} must be text")
    except ValueError as e:
        raise InvalidRequestError(f"line {number}: not an exported event ({e})") from e
    return row
