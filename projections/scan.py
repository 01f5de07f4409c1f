"""The rebuild's decoder: stored rows to the change events' fields, without building event objects.

A log is nearly all `…Requested` and outcome events; `scan` reads their rows
into plain tuples (`Change`) that the fold takes unboxed, and every other row
through `eventstore.backends.common.record`, so that a row decodes as there
or raises the same error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Sequence

import attrs

from vmledger.eventstore.backends.common import Row, decode_metadata, decode_time, record
from vmledger.eventstore.catalogue import Outcome, Reason, Scope
from vmledger.eventstore.codec import loads
from vmledger.eventstore.events import EVENT_TYPES, ChangeOutcome, ChangeRequested
from vmledger.eventstore.log import RecordedEvent, timestamp

try:  # orjson (the `bench` extra) parses faster; whatever it refuses goes through `record`.
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = loads

__all__ = ["Change", "scan", "as_change"]

#: A change event as `scan` returns it, a plain tuple for speed: `(position, stream,
#: version, recorded_at, recorded_at as `timestamp` writes it, type name, status of
#: its outcome, request_id, property, scope, requested, value, reason, principal or
#: message)`.  A `…Requested` has the status `Outcome.REQUESTED.status`, its asked
#: value in `requested`, `value` None, and its principal last; an outcome has its
#: message last.
Change = tuple

_REQUESTED, _OUTCOME = "requested", "outcome"
_IN_FLIGHT = Outcome.REQUESTED.status
_SCOPES = frozenset(s.value for s in Scope)
_OUTCOME_SCOPES = frozenset((Scope.LIVE.value, Scope.PERSISTENT.value))
_REASONS = frozenset(r.value for r in Reason)
_VALUE_TYPES = frozenset((int, str))  # exactly: a bool is an int to the classes, and takes `record`


def _shape(cls: type) -> tuple[frozenset[str], frozenset[str]]:
    """Return the required and the optional field names of an attrs class."""
    fields = attrs.fields(cls)
    required = frozenset(f.name for f in fields if f.default is attrs.NOTHING)
    return required, frozenset(f.name for f in fields) - required


# `scan` checks the data of these shapes itself, as strictly as the classes'
# validators or more; a class whose fields differ keeps to `record`.
_SHAPES = {
    _REQUESTED: (frozenset({"request_id", "property", "value", "scope", "principal"}), frozenset({"reason"})),
    _OUTCOME: (frozenset({"request_id", "property", "scope", "requested", "value"}), frozenset({"reason", "message"})),
}
#: Type name -> (schema version, outcome status, shape, field count) of the change events `scan` decodes itself.
_FAST = {
    name: (cls.schema_version, cls.outcome.status, kind, len(attrs.fields(cls)))
    for name, cls in EVENT_TYPES.items()
    for kind, base in ((_REQUESTED, ChangeRequested), (_OUTCOME, ChangeOutcome))
    if issubclass(cls, base) and _shape(cls) == _SHAPES[kind]
}
_TIMES: dict[str, tuple[datetime, str]] = {}
_UNSEEN = object()


def scan(rows: Sequence[Row]) -> list[Change | RecordedEvent]:
    """Return what each row of `SCAN_COLUMNS` holds: a `Change` for a current change event, else a `RecordedEvent`.

    It is `record` without building event objects for the events a log holds
    most, for the rebuild: a row whose data is not exactly what the encoder
    writes and the classes accept (every field present, of the right type)
    goes through `record`, so it decodes as there or raises the same error.
    The records it makes have no hash.

    Raises:
        StorageError: a row's data, metadata or time does not decode.
    """
    out: list[Change | RecordedEvent] = []
    append, fast, times, loads_ = out.append, _FAST, _TIMES, _fast_loads
    last_meta = last_time = _UNSEEN
    when: tuple[datetime, str] = (datetime.min, "")
    for row in rows:
        position, stream, version, type_, schema_version, data, metadata, recorded_at = row
        spec = fast.get(type_)
        if spec is None or schema_version != spec[0] or data.__class__ is not str:
            append(record((*row, "")))
            continue
        try:
            d = loads_(data)
            # Only text, integers and null are taken from the parse: JSON parsers agree on
            # them (orjson reads integers beyond 64 bits as floats, which fall through).
            # A missing field raises KeyError, an unhashable scope or reason TypeError.
            if len(d) != spec[3]:
                raise KeyError
            request_id, prop, scope, reason = d["request_id"], d["property"], d["scope"], d["reason"]
            if spec[2] is _REQUESTED:
                requested, value, extra = d["value"], None, d["principal"]
                valid = (scope in _SCOPES and extra.__class__ is str
                         and (reason is None or reason.__class__ is str))
            else:
                requested, value, extra = d["requested"], d["value"], d["message"]
                valid = (scope in _OUTCOME_SCOPES and (value is None or value.__class__ in _VALUE_TYPES)
                         and (reason is None or reason in _REASONS) and (extra is None or extra.__class__ is str))
            valid = (valid and request_id.__class__ is str and prop.__class__ is str
                     and requested.__class__ in _VALUE_TYPES)
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            append(record((*row, "")))
            continue
        if metadata != last_meta:  # the events of one append share it, and its time
            decode_metadata(metadata)
            last_meta = metadata
        if recorded_at != last_time:
            when = times.get(recorded_at)  # type: ignore[assignment]
            if when is None:
                if len(times) >= 4096:
                    times.clear()
                at = decode_time(recorded_at)
                when = times[recorded_at] = (at, timestamp(at))
            last_time = recorded_at
        append((position, stream, version, when[0], when[1], type_, spec[1], request_id, prop, scope,
                requested, value, reason, extra))
    return out


def as_change(rec: RecordedEvent) -> Change | None:
    """Return a change event's record as the `Change` `scan` makes of its row, or None for any other event."""
    e = rec.event
    if isinstance(e, ChangeRequested):
        status, requested, value, extra = _IN_FLIGHT, e.value, None, e.principal
    elif isinstance(e, ChangeOutcome):
        status, requested, value, extra = e.outcome.status, e.requested, e.value, e.message
    else:
        return None
    return (rec.position, rec.stream, rec.version, rec.recorded_at, timestamp(rec.recorded_at), e.name, status,
            e.request_id, e.property, e.scope, requested, value, e.reason, extra)


