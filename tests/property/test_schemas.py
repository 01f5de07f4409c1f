"""Every stored event validates against the JSON Schema of its type and version; a changed shape needs a new version (issue 17)."""

from __future__ import annotations

import functools
import json
import re
import pathlib
from typing import Any, ClassVar

import attrs
import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmledger.eventstore import schema as schemas
from vmledger.eventstore.codec import encode, loads
from vmledger.eventstore.events import EVENT_TYPES, MediaTrayLocked
from tests.strategies import event_strategy, events

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "data" / "golden"
VERSIONS = schemas.versions()
SETTINGS = settings(database=None, deadline=None, max_examples=100)


@functools.lru_cache(maxsize=None)
def _validator(name: str, version: int) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schemas.schema(name, version))


def _golden_data(name: str, version: int) -> Any:
    return loads(json.loads((GOLDEN / f"{name}.v{version}.json").read_text(encoding="utf-8"))["data"])


def test_the_folder_holds_one_valid_2020_12_schema_per_type_and_version() -> None:
    """`eventstore/schemas` holds exactly one file per event type and version, each a valid draft 2020-12 schema."""
    for name, version in VERSIONS:
        jsonschema.Draft202012Validator.check_schema(schemas.schema(name, version))
    assert (sorted(p.name for p in schemas.FOLDER.iterdir()),
            {schemas.schema(n, v)["$schema"] for n, v in VERSIONS}) == (
        sorted(f"{n}.v{v}.json" for n, v in VERSIONS), {"https://json-schema.org/draft/2020-12/schema"})


@pytest.mark.parametrize(("name", "version"), VERSIONS, ids=[f"{n}.v{v}" for n, v in VERSIONS])
def test_every_golden_file_validates_against_its_schema(name: str, version: int) -> None:
    """The data of the golden file of each type and version has no error against that version's schema."""
    assert list(_validator(name, version).iter_errors(_golden_data(name, version))) == []


def test_a_version_1_observation_is_not_a_version_2_one() -> None:
    """The golden version-1 `LiveValueObserved` lacks `previous`, which version 2's schema requires."""
    errors = [e.message for e in _validator("LiveValueObserved", 2).iter_errors(_golden_data("LiveValueObserved", 1))]
    assert errors == ["'previous' is a required property"]


@SETTINGS
@given(events())
def test_every_generated_event_validates_against_its_schema(event: Any) -> None:
    """The stored data of any event Hypothesis makes has no error against its type's current schema."""
    name, version, data = encode(event)
    assert list(_validator(name, version).iter_errors(loads(data))) == []


@SETTINGS
@given(st.data(), st.sampled_from(sorted(EVENT_TYPES)), st.sampled_from(([], 1.5, {"x": []})))
def test_a_field_of_the_wrong_json_type_or_an_extra_field_is_invalid(data: st.DataObject, name: str, wrong: Any) -> None:
    """A stored event with any field replaced by a list, a fraction or an object of lists, or with an extra field, is invalid."""
    event = data.draw(event_strategy(EVENT_TYPES[name]))
    stored = loads(encode(event)[2])
    field = data.draw(st.sampled_from([*stored, "unexpected"]))
    assert _validator(name, EVENT_TYPES[name].schema_version).is_valid({**stored, field: wrong}) is False


def test_every_current_schema_matches_its_event_class() -> None:
    """The committed schema of each type's current version is the one its class makes now."""
    assert schemas.changed() == []


@attrs.frozen(kw_only=True)
class _MediaTrayLockedWithSlot(MediaTrayLocked):
    """`MediaTrayLocked` grown a field at the same version: the mistake the test below must catch."""

    schema_version: ClassVar[int] = 1
    slot: int = attrs.field(validator=attrs.validators.instance_of(int))


def test_a_changed_shape_without_a_new_version_fails_and_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event class whose fields changed at the same version is reported, with the steps to take, and its data is invalid."""
    monkeypatch.setitem(EVENT_TYPES, "MediaTrayLocked", _MediaTrayLockedWithSlot)
    data = loads(encode(_MediaTrayLockedWithSlot(device="hdc", slot=2))[2])
    assert (schemas.changed(), _validator("MediaTrayLocked", 1).is_valid(data)) == ([
        "MediaTrayLocked version 1: its fields no longer match its committed schema (MediaTrayLocked.v1.json). "
        "A stored version never changes shape: raise MediaTrayLocked.schema_version, add an upcaster from the "
        "old version to codec.UPCASTERS, then run scripts/golden.py to add the new version's golden file and "
        "schema."], False)


def test_the_reference_links_every_schema() -> None:
    """docs/reference.md links the schema file of every event type and version, and each link names a file that exists."""
    reference = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "reference.md").read_text(encoding="utf-8")
    links = set(re.findall(r"\]\(\.\./eventstore/schemas/([\w.]+\.json)\)", reference))
    assert (links, all((schemas.FOLDER / name).is_file() for name in links)) == (
        {f"{n}.v{v}.json" for n, v in VERSIONS}, True)
