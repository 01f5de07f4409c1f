"""The change event classes: the base's attrs values, one class each, made without code of their own."""

import pickle
import subprocess
import sys

import attrs
import pytest

from vmledger.eventstore.catalogue import Outcome
from vmledger.eventstore.events import EVENT_TYPES, ChangeOutcome, ChangeRequested, change_event

CHANGES = [cls for cls in EVENT_TYPES.values() if issubclass(cls, (ChangeRequested, ChangeOutcome))]


def test_change_event_finds_the_class_of_a_property_and_outcome() -> None:
    assert change_event("media:hdc", Outcome.REFUSED).name == "MediaChangeRefused"
    assert change_event("memory", Outcome.REQUESTED) is EVENT_TYPES["MemoryChangeRequested"]


@pytest.mark.parametrize("cls", CHANGES, ids=lambda c: c.name)
def test_a_change_event_is_its_base_s_frozen_validated_slotted_value(cls: type) -> None:
    base = ChangeRequested if cls.outcome is Outcome.REQUESTED else ChangeOutcome
    fields = {"request_id": "r1", "property": "memory", "scope": "live", "value": 5}
    if base is ChangeOutcome:
        fields["requested"] = 5
    else:
        fields["principal"] = "ann"
    event = cls(**fields)
    assert attrs.has(cls) and attrs.fields(cls) == attrs.fields(base)
    assert event.name == cls.__name__ and repr(event).startswith(f"{cls.__name__}(request_id='r1'")
    assert event == cls(**fields) and hash(event) == hash(cls(**fields))
    assert event != cls(**{**fields, "value": 6})
    assert pickle.loads(pickle.dumps(event)) == event
    assert attrs.evolve(event, value=7).__class__ is cls
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.value = 6  # type: ignore[misc]
    assert not hasattr(event, "__dict__")  # slotted, as its base
    with pytest.raises(TypeError):
        cls(**{**fields, "request_id": 1})


def test_the_same_fields_in_two_classes_are_two_different_events() -> None:
    fields = {"request_id": "r1", "property": "memory", "scope": "live", "requested": 5, "value": 5}
    applied = change_event("memory", Outcome.APPLIED)(**fields)
    refused = change_event("memory", Outcome.REFUSED)(**fields)
    assert applied != refused and repr(applied) != repr(refused)


def test_importing_vmledger_leaves_out_what_only_some_commands_use() -> None:
    # Every command line pays for what `import vmledger` loads: the libvirt adapter is for libvirt's users.
    code = "import sys, vmledger, vmledger.cli; print(sorted(m for m in sys.modules if 'libvirt' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
