"""Golden files pin the stored format of every event version that ever existed."""

from __future__ import annotations

import json
import pathlib

import pytest

from vmledger.eventstore.codec import decode, encode
from vmledger.eventstore.events import EVENT_TYPES

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "data" / "golden"

#: Every `(type, version)` a row may hold: versions 1 to the current one of every event type.
VERSIONS = sorted((name, v) for name, cls in EVENT_TYPES.items() for v in range(1, cls.schema_version + 1))
CURRENT = [(name, v) for name, v in VERSIONS if v == EVENT_TYPES[name].schema_version]
OLDER = [(name, v) for name, v in VERSIONS if v < EVENT_TYPES[name].schema_version]


def _row(name: str, version: int) -> tuple[str, int, str]:
    """Return the `(type, schema_version, data)` the golden file of `name` at `version` stores."""
    stored = json.loads((GOLDEN / f"{name}.v{version}.json").read_text(encoding="utf-8"))
    return stored["type"], stored["schema_version"], stored["data"]


def test_every_event_version_has_a_golden_file() -> None:
    """The golden folder holds exactly one file per event type and version, from 1 to the current one."""
    assert sorted(p.name for p in GOLDEN.iterdir()) == sorted(f"{n}.v{v}.json" for n, v in VERSIONS)


@pytest.mark.parametrize(("name", "version"), CURRENT, ids=[f"{n}.v{v}" for n, v in CURRENT])
def test_current_version_reencodes_to_the_golden_row(name: str, version: int) -> None:
    """A current version's golden row decodes, and encodes back to the same type, version and text."""
    row = _row(name, version)
    assert (row[:2], encode(decode(*row))) == ((name, version), row)


@pytest.mark.parametrize(("name", "version"), OLDER, ids=[f"{n}.v{v}" for n, v in OLDER])
def test_older_version_upcasts_to_the_current_class(name: str, version: int) -> None:
    """An older version's golden row decodes to the current class, which encodes at the current version and decodes back equal."""
    row = _row(name, version)
    event = decode(*row)
    again = encode(event)
    assert (row[:2], type(event), again[:2], decode(*again)) == (
        (name, version), EVENT_TYPES[name], (name, EVENT_TYPES[name].schema_version), event)
