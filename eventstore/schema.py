"""JSON Schemas (draft 2020-12) of the stored event data: one per event type and schema version.

A schema describes the `data` object of a stored event (what `vmledger
events` prints under `data`, and an export line holds): its fields, their
JSON types, the values an enumerated field may take, and which fields a
reader needs.  `generate` makes the schema of an event class's current
version from its attrs fields and their validators.

`eventstore/schemas/<Type>.v<N>.json` keeps every schema that ever was, as
the golden files keep every stored format: `scripts/golden.py` adds the
current version's file when it is missing and never rewrites one, so an
older version's schema stays what it was.  A test compares each current
version's file with `generate`: an event class whose shape changed without a
new schema version fails it.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import attrs

from vmledger.eventstore.catalogue import Capability
from vmledger.eventstore.errors import InvalidRequestError
from vmledger.eventstore.events import EVENT_TYPES, Event, _pairs, event_type

__all__ = ["DIALECT", "FOLDER", "generate", "schema", "versions", "changed"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: The committed schema of every event type and version, shipped with the package.
FOLDER = pathlib.Path(__file__).resolve().parent / "schemas"

_JSON_TYPES = {str: "string", int: "integer", bool: "boolean", type(None): "null"}
#: The fields stored as an object of pairs (a tuple of pairs in the class), by name: their keys and values.
_PAIR_FIELDS: dict[str, dict[str, Any]] = {
    "config": {"type": "object", "additionalProperties": {"type": ["integer", "string"]}},
    "capabilities": {"type": "object", "propertyNames": {"enum": [c.value for c in Capability]},
                     "additionalProperties": {"type": ["boolean", "null"]}},
}


def _of_validator(validator: Any) -> dict[str, Any]:
    """Return the schema of the values an attrs validator accepts (instance_of, in_, optional)."""
    inner = getattr(validator, "validator", None)
    if inner is not None:  # `optional`
        nullable = _of_validator(inner)
        if "enum" in nullable:
            return {"enum": [*nullable["enum"], None]}
        kinds = nullable["type"] if isinstance(nullable["type"], list) else [nullable["type"]]
        return {"type": [*kinds, "null"]}
    if hasattr(validator, "options"):  # `in_`
        return {"enum": sorted(validator.options)}
    kinds = getattr(validator, "type", None)
    if kinds is None:
        raise TypeError(f"no JSON Schema for the validator {validator!r}: teach eventstore/schema.py")
    names = [_JSON_TYPES[k] for k in (kinds if isinstance(kinds, tuple) else (kinds,))]
    return {"type": names[0] if len(names) == 1 else names}


def _of_field(field: attrs.Attribute) -> dict[str, Any]:
    if field.converter is _pairs:
        if field.name not in _PAIR_FIELDS:
            raise TypeError(f"no JSON Schema for the pairs field {field.name!r}: teach eventstore/schema.py")
        return dict(_PAIR_FIELDS[field.name])
    return _of_validator(field.validator)


def _describe(name: str, version: int, doc: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "$schema": DIALECT,
        "$id": f"urn:vmledger:event:{name}:v{version}",
        "title": f"{name} version {version}",
        "description": f"{doc} The `data` of a stored event of type `{name}` and `schema_version` {version}.",
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def generate(cls: type[Event]) -> dict[str, Any]:
    """Return the JSON Schema of the data of `cls` at its current schema version, made from its fields.

    Fields without a default are required; `reason` and `message`, which
    have one, may be absent (the codec writes every field all the same).

    Raises:
        TypeError: a field's validator or converter has no JSON Schema mapping yet.
    """
    fields = attrs.fields(cls)
    doc = (cls.__doc__ or "").strip().splitlines()[0].split(" (fields: see")[0].rstrip(".") + "."
    return _describe(cls.name, cls.schema_version, doc, {f.name: _of_field(f) for f in fields},
                     [f.name for f in fields if f.default is attrs.NOTHING])


def versions() -> list[tuple[str, int]]:
    """Return every `(type, version)` a stored event may have: versions 1 to the current one of every type."""
    return [(name, v) for name, cls in EVENT_TYPES.items() for v in range(1, cls.schema_version + 1)]


def schema(name: str, version: int | None = None) -> dict[str, Any]:
    """Return the committed JSON Schema of event type `name` at `version` (default: its current version).

    Raises:
        InvalidRequestError: no such event type, or no such version of it.
    """
    cls = event_type(name)
    version = cls.schema_version if version is None else version
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= cls.schema_version:
        raise InvalidRequestError(f"{name} has schema versions 1 to {cls.schema_version}, not {version!r}")
    return json.loads((FOLDER / f"{name}.v{version}.json").read_text(encoding="utf-8"))


def changed() -> list[str]:
    """Return a line for each event type whose current shape differs from its committed schema (none: all match)."""
    lines = []
    for name, cls in EVENT_TYPES.items():
        path = FOLDER / f"{name}.v{cls.schema_version}.json"
        committed = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        if committed != generate(cls):
            lines.append(
                f"{name} version {cls.schema_version}: " + ("no committed schema" if committed is None else
                                                             "its fields no longer match its committed schema")
                + f" ({path.name}). A stored version never changes shape: raise {name}.schema_version, add an "
                f"upcaster from the old version to codec.UPCASTERS, then run scripts/golden.py to add the new "
                "version's golden file and schema.")
    return lines
