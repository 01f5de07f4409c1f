"""Moving a log between databases: one JSON object per event, with its hash link."""

from __future__ import annotations

from typing import Any, Sequence

from vmledger.eventstore.backends.common import ChainChecker
from vmledger.eventstore.codec import canonical, dumps, dumps_plain, dumps_value, loads_exact
from vmledger.eventstore.errors import InvalidRequestError

__all__ = ["to_line", "from_line", "ChainChecker"]

_KEYS = ("position", "stream", "version", "type", "schema_version", "data", "metadata", "recorded_at", "hash")


def to_line(row: Sequence[Any]) -> str:
    """Return the export line of a stored row: every stored field, data and metadata as objects.

    That is the `dumps` of the row's fields by name, data and metadata
    parsed; written here a field at a time, keys in order, with each stored
    JSON text made canonical (`canonical`) rather than parsed and written again.
    """
    position, stream, version, type_, schema_version, data, metadata, recorded_at, hash_ = row
    data, metadata = canonical(data), canonical(metadata)
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
