"""The stored format of events: canonical JSON, and upcasters for old versions.

Event classes know nothing of JSON; this module alone turns an event into the
`(type, schema_version, data)` triple a row stores, and back.  Old versions
are upcast on read by the functions in `UPCASTERS`, keyed by
`(name, from_version)`; stored rows are never rewritten.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any, Callable, Iterable

import attrs

from vmledger.eventstore.errors import StorageError
from vmledger.eventstore.events import EVENT_TYPES, Event, _pairs

try:  # orjson (the `bench` extra) reads and writes JSON faster, and the same: see `dumps_plain`, `loads_exact`.
    from orjson import OPT_SORT_KEYS
    from orjson import dumps as _orjson_dumps
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - depends on the environment
    _orjson_dumps = _orjson_loads = None

__all__ = ["encode", "decode", "event_data", "dumps", "dumps_flat", "dumps_plain", "dumps_value", "orjson_utf8", "plain",
           "plain_tree", "FAST_JSON", "loads", "loads_stored", "loads_exact", "canonical", "UPCASTERS"]


def _live_value_observed_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Add `previous` as None: version 1 did not record the live value the log held before."""
    return {**data, "previous": None}


#: Upcasters: `(name, from_version) -> function(data) -> data at from_version + 1`.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("LiveValueObserved", 1): _live_value_observed_v1,
}


# One encoder for every call: `json.dumps` with options builds a new one each time.
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def dumps(obj: Any) -> str:
    """Return the canonical JSON text of `obj` (sorted keys, no spaces, UTF-8 kept)."""
    return _ENCODE(obj)


def dumps_plain(obj: Any) -> str:
    """Return `dumps(obj)` for an object holding no float, through orjson when it is installed.

    For text, integers within 64 bits, booleans, null, and lists and dicts
    of them with text keys, orjson with sorted keys writes the very text of
    `dumps`; it refuses other integers and lone surrogates, which take
    `dumps`.  It writes floats differently (`1e-7`, not `1e-07`; NaN as null), so callers
    keep them away: check the values with `plain` first.
    """
    text = orjson_utf8(obj)
    return dumps(obj) if text is None else text.decode()


#: Whether orjson is installed, so that `orjson_utf8` may write anything.
FAST_JSON = _orjson_dumps is not None


def orjson_utf8(obj: Any) -> bytes | None:
    """Return orjson's UTF-8 text of `obj`, keys sorted (see `dumps_plain`); None where orjson is not installed or refuses it."""
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(obj, option=OPT_SORT_KEYS)
        except TypeError:
            pass
    return None


def dumps_flat(obj: dict[str, Any]) -> str:
    """Return `dumps(obj)` for a dict, through `dumps_plain` when its values are all plain (as most events' are)."""
    return dumps_plain(obj) if plain(obj.values()) else dumps(obj)


def dumps_value(value: Any) -> str:
    """Return `dumps(value)`, quicker for text and integers (written as `json` writes them)."""
    kind = value.__class__
    if kind is str:
        return encode_basestring(value)
    if kind is int:
        return int.__repr__(value)
    return dumps(value)


# The values orjson writes as `dumps` does (with the limits `dumps_plain` catches).
_PLAIN = frozenset((str, int, bool, type(None)))


def plain(values: Iterable[Any]) -> bool:
    """Tell whether `dumps_plain` may write every one of `values` (a config value may be a float, or hold one)."""
    return _PLAIN.issuperset(map(type, values))


def plain_tree(obj: Any) -> bool:
    """Tell whether `dumps_plain` may write `obj` as a whole: lists and dicts of values `plain` accepts, no float."""
    for value in obj.values() if obj.__class__ is dict else obj if obj.__class__ is list else (obj,):
        kind = value.__class__
        if kind not in _PLAIN and not ((kind is dict or kind is list) and plain_tree(value)):
            return False
    return True


def loads(text: str) -> Any:
    """Return the object a JSON text holds."""
    return json.loads(text)


def loads_stored(text: str, what: str) -> Any:
    """Return `loads(text)` of a stored projection row's JSON (`what` it is, for the error).

    Raises:
        StorageError: the text does not decode: changed behind the ledger's back.
    """
    try:
        return loads_exact(text)[0]
    except (ValueError, TypeError) as e:
        raise StorageError(f"a stored {what} does not decode ({e}): vmledger verify names the damage, "
                           "vmledger rebuild makes the projections again") from e


def loads_exact(text: str) -> tuple[Any, bool]:
    """Return `loads(text)` and whether it is `plain_tree`, through orjson where it reads the same.

    Where orjson reads a text into a plain tree, `json` reads it into the
    same one (orjson reads integers beyond 64 bits as floats, and refuses
    lone surrogates, NaN and what else `json` reads); any other text takes
    `loads`, and is said not plain.

    Raises:
        ValueError, TypeError: as `loads`.
    """
    if _orjson_loads is not None:
        try:
            obj = _orjson_loads(text)
        except (ValueError, TypeError):
            pass
        else:
            if plain_tree(obj):
                return obj, True
    return loads(text), False


def canonical(text: str) -> str:
    """Return `dumps(loads(text))`, the canonical form of a JSON text, through orjson where it may."""
    obj, is_plain = loads_exact(text)
    return dumps_plain(obj) if is_plain else dumps(obj)


def event_data(event: Event) -> dict[str, Any]:
    """Return the fields of `event` as the JSON data of its row holds them (`encode` writes it, keys sorted)."""
    data: dict[str, Any] = {}
    for field in attrs.fields(type(event)):
        value = getattr(event, field.name)
        data[field.name] = dict(value) if field.converter is _pairs else value
    return data


def encode(event: Event) -> tuple[str, int, str]:
    """Return `(type name, schema version, JSON data)` for `event`."""
    return event.name, event.schema_version, dumps_flat(event_data(event))


def decode(name: str, schema_version: int, data: str | dict[str, Any]) -> Event:
    """Return the event a stored row holds, upcasting it to the current version.

    Raises:
        StorageError: the type is unknown, the version is newer than this code
            knows, or the data does not fit the class.
    """
    cls = EVENT_TYPES.get(name)
    if cls is None:
        raise StorageError(f"unknown event type {name!r} in the log")
    version = schema_version
    if version > cls.schema_version:
        raise StorageError(
            f"{name} version {version} is newer than this vmledger knows "
            f"({cls.schema_version}); upgrade vmledger"
        )
    try:
        fields = loads_exact(data)[0] if isinstance(data, str) else dict(data)
        if not isinstance(fields, dict):
            raise ValueError("not a JSON object")
        while version < cls.schema_version:
            upcast = UPCASTERS.get((name, version))
            if upcast is None:
                raise StorageError(f"no upcaster for {name} version {version}")
            fields = upcast(fields)
            version += 1
        return cls(**fields)
    except (KeyError, TypeError, ValueError) as e:
        raise StorageError(f"stored {name} does not decode: {e}") from e
