"""The stored format: every event survives encode/decode, JSON is canonical, versions are guarded."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from typing import ClassVar

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmledger.eventstore.codec import UPCASTERS, decode, dumps, encode, loads
from vmledger.eventstore.errors import StorageError
from vmledger import cli
from vmledger.eventstore.events import EVENT_TYPES, DomainDefined, Event, LiveValueObserved, MediaTrayLocked
from vmledger.eventstore import log as log_module
from vmledger.eventstore.log import Metadata, RecordedEvent, chain_hash, timestamp
from vmledger.eventstore.hypervisor import Value
from tests.strategies import devices, event_strategy, events, property_names, values

SETTINGS = settings(database=None, deadline=None, max_examples=100)

_names = st.sampled_from(sorted(EVENT_TYPES))


@SETTINGS
@given(st.data(), _names)
def test_decode_inverts_encode(data: st.DataObject, name: str) -> None:
    """Decoding an encoded event of any type gives back an equal event of the same class."""
    event = data.draw(event_strategy(EVENT_TYPES[name]))
    decoded = decode(*encode(event))
    assert (type(decoded), decoded) == (type(event), event)


@SETTINGS
@given(events())
def test_decode_accepts_parsed_data(event: object) -> None:
    """Decoding from already-parsed JSON data gives the same event as decoding from the text."""
    name, version, text = encode(event)  # type: ignore[arg-type]
    assert decode(name, version, loads(text)) == decode(name, version, text)


@SETTINGS
@given(events())
def test_encoding_is_canonical_and_stable(event: object) -> None:
    """Encoding twice, or after a round trip, gives identical canonical text (sorted keys, no spaces)."""
    name, version, text = encode(event)  # type: ignore[arg-type]
    again = encode(decode(name, version, text))
    assert (encode(event), again, dumps(loads(text))) == ((name, version, text), (name, version, text), text)  # type: ignore[arg-type]


@SETTINGS
@given(events())
def test_encode_stores_the_class_name_and_version(event: object) -> None:
    """The stored type and version are the class's `name` and `schema_version`, and name a known type."""
    name, version, _ = encode(event)  # type: ignore[arg-type]
    assert (name, version, EVENT_TYPES[name]) == (type(event).name, type(event).schema_version, type(event))


@SETTINGS
@given(st.text(max_size=30).filter(lambda n: n not in EVENT_TYPES))
def test_unknown_type_raises_storage_error(name: str) -> None:
    """A row whose type no event class has is a StorageError, not a KeyError."""
    with pytest.raises(StorageError, match="unknown event type"):
        decode(name, 1, "{}")


@SETTINGS
@given(st.data(), _names, st.integers(min_value=1, max_value=2**31))
def test_newer_schema_version_raises_storage_error(data: st.DataObject, name: str, ahead: int) -> None:
    """A row written by a newer vmledger (a higher schema version) is a StorageError."""
    event = data.draw(event_strategy(EVENT_TYPES[name]))
    stored_name, version, text = encode(event)
    with pytest.raises(StorageError, match="newer than this vmledger knows"):
        decode(stored_name, version + ahead, text)


@SETTINGS
@given(st.data(), _names)
def test_data_that_does_not_fit_raises_storage_error(data: st.DataObject, name: str) -> None:
    """A row whose data carries a field the class lacks is a StorageError."""
    event = data.draw(event_strategy(EVENT_TYPES[name]))
    stored_name, version, text = encode(event)
    fields = {**loads(text), "no_such_field": 1}
    with pytest.raises(StorageError, match="does not decode"):
        decode(stored_name, version, dumps(fields))


@SETTINGS
@given(property_names(), values(), st.booleans())
def test_live_value_observed_v1_reads_with_previous_none(prop: str, value: Value, parsed: bool) -> None:
    """A version-1 `LiveValueObserved` row, as text or parsed, decodes to version 2 with `previous` None."""
    data = {"property": prop, "value": value}
    decoded = decode("LiveValueObserved", 1, data if parsed else dumps(data))
    assert (type(decoded), decoded, encode(decoded)) == (
        LiveValueObserved, LiveValueObserved(property=prop, value=value, previous=None),
        ("LiveValueObserved", 2, dumps({**data, "previous": None})))


@SETTINGS
@given(property_names(), values(), st.none() | values())
def test_live_value_observed_v2_round_trips(prop: str, value: Value, previous: Value | None) -> None:
    """A version-2 `LiveValueObserved` row decodes with its `previous` and encodes back to the same row."""
    row = ("LiveValueObserved", 2, dumps({"previous": previous, "property": prop, "value": value}))
    decoded = decode(*row)
    assert (decoded, encode(decoded)) == (LiveValueObserved(property=prop, value=value, previous=previous), row)


def test_live_value_observed_v2_needs_previous() -> None:
    """A version-2 `LiveValueObserved` row without `previous` does not decode: only version 1 may lack it."""
    with pytest.raises(StorageError, match="does not decode"):
        decode("LiveValueObserved", 2, dumps({"property": "memory", "value": 2**30}))


@attrs.frozen(kw_only=True)
class _MediaTrayLockedV3(MediaTrayLocked):
    """A future `MediaTrayLocked` at version 3, for exercising upcasters."""

    schema_version: ClassVar[int] = 3


def _v1_to_v2(data: dict) -> dict:
    """Version 1 (in this test's story) called the device `drive`."""
    return {"device_name": data["drive"]}


def _v2_to_v3(data: dict) -> dict:
    """Version 2 (in this test's story) called the device `device_name`."""
    return {"device": data["device_name"]}


@SETTINGS
@given(devices())
def test_registered_upcasters_are_applied_in_order(device: str) -> None:
    """A version-1 row is upcast through every registered step to the current class."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(EVENT_TYPES, "MediaTrayLocked", _MediaTrayLockedV3)
        mp.setitem(UPCASTERS, ("MediaTrayLocked", 1), _v1_to_v2)
        mp.setitem(UPCASTERS, ("MediaTrayLocked", 2), _v2_to_v3)
        from_v1 = decode("MediaTrayLocked", 1, dumps({"drive": device}))
        from_v2 = decode("MediaTrayLocked", 2, {"device_name": device})
        current = decode(*encode(_MediaTrayLockedV3(device=device)))
    assert (type(from_v1), from_v1, from_v2, current) == (
        _MediaTrayLockedV3, _MediaTrayLockedV3(device=device), from_v1, from_v1)


def test_missing_upcaster_raises_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An old row with a gap in the upcaster chain is a StorageError naming the missing step."""
    monkeypatch.setitem(EVENT_TYPES, "MediaTrayLocked", _MediaTrayLockedV3)
    monkeypatch.setitem(UPCASTERS, ("MediaTrayLocked", 1), _v1_to_v2)
    with pytest.raises(StorageError, match="no upcaster for MediaTrayLocked version 2"):
        decode("MediaTrayLocked", 1, dumps({"drive": "hdc"}))


def test_temporary_registrations_are_gone() -> None:
    """The upcaster tests leave the real registry as they found it: v1 MediaTrayLocked, only the real upcasters."""
    assert (EVENT_TYPES["MediaTrayLocked"], sorted(UPCASTERS)) == (MediaTrayLocked, [("LiveValueObserved", 1)])


@pytest.mark.parametrize("fast", [True, False], ids=["orjson", "json"])
@given(fields=st.lists(st.none() | st.booleans() | st.integers() | st.floats()
                       | st.text(st.characters(exclude_categories=("Cs",))), min_size=9, max_size=9))
@example(fields=["h", 1, "s", 1, "T", 1, "{}", "{}", 1e-07])  # orjson writes 1e-7, json 1e-07
@example(fields=["h", 1, "s", 1, "T", 1, "{}", "{}", float("nan")])  # orjson writes null, json NaN
@example(fields=["h", 2**64, "s", 1, "T", 1, "{}", "{}", "t"])  # beyond orjson's integers
@example(fields=["h", 1, "s\x00\x1f\u2028\"\\é", 1, "T", True, None, "{}", "t"])
def test_chain_hash_is_the_sha256_of_the_dumps_of_its_fields(fields: list, fast: bool) -> None:
    """`chain_hash`, through orjson or not, writes its fields as `dumps` writes their list, whatever a stored row holds."""
    prev, position, stream, version, type_, schema_version, data, metadata, recorded_at = fields
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(log_module, "FAST_JSON", fast and log_module.FAST_JSON)
        assert chain_hash(prev, position=position, stream=stream, version=version, type=type_,
                          schema_version=schema_version, data=data, metadata=metadata,
                          recorded_at=recorded_at) == hashlib.sha256(dumps(fields).encode("utf-8")).hexdigest()


@given(st.datetimes(datetime(2, 1, 1), datetime(9998, 1, 1)), st.sampled_from([None, timezone.utc, timezone(timedelta(hours=-5)), timezone(timedelta(0), "Z")]))
def test_timestamp_is_the_utc_time_in_microseconds(when: datetime, tz: timezone | None) -> None:
    """Any aware time is written as its UTC instant, a naive one as UTC, always to the microsecond."""
    when = when.replace(tzinfo=tz)
    reference = (when.replace(tzinfo=timezone.utc) if tz is None else when).astimezone(timezone.utc)
    assert timestamp(when) == reference.isoformat(timespec="microseconds")


_ODD_TEXT = st.text(max_size=6) | st.sampled_from(("\u2028", "é", "\"\\", "\x00", "\ud800"))


@SETTINGS
@given(events(), _ODD_TEXT, st.integers(1, 2**63 - 1), st.integers(1, 2**31),
       st.none() | _ODD_TEXT, st.none() | _ODD_TEXT,
       st.datetimes(timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30))])))
@example(event=DomainDefined(domain="web", uuid="u", guest_type="pv", capabilities={"balloon": True},
                             config={"vcpus": 1, "memory": 2**40, "media:hdc": "/iso/é.iso", "max_vcpus": 2}),
         stream="s", position=1, version=1, principal="a\u2028b", request_id=None,
         when=datetime(2026, 1, 1, tzinfo=timezone.utc))
def test_an_events_line_is_the_json_of_the_event_as_stored(event: Event, stream: str, position: int, version: int,
                                                          principal: str | None, request_id: str | None,
                                                          when: datetime) -> None:
    """`vmledger events` writes each line by pieces, not through the stored text, and still writes its `json.dumps`."""
    rec = RecordedEvent(position=position, stream=stream, version=version, event=event,
                        metadata=Metadata(principal=principal, request_id=request_id), recorded_at=when)
    assert cli._event_line(rec) == json.dumps(cli._event_json(rec), ensure_ascii=False)
