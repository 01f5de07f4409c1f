"""Export lines: `to_line` and `from_line` write and read what `json` alone would, with orjson or without.

The texts are any JSON a stored row or an export line may hold: canonical,
spaced, escaped or with keys out of order, with floats, integers beyond 64
bits, lone surrogates, NaN, repeated keys, or no JSON at all.  Each quick path
must give `json`'s result, or raise its error.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from typing import Any, Callable, Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmledger.eventstore import codec, transfer
from vmledger.eventstore.codec import canonical, dumps, loads_exact, plain_tree
from vmledger.eventstore.errors import InvalidRequestError, StorageError

SETTINGS = settings(database=None, deadline=None, max_examples=300)
LOADERS = [
    pytest.param("orjson", marks=pytest.mark.skipif(importlib.util.find_spec("orjson") is None,
                                                    reason="orjson (the bench extra) is not installed")),
    "json",
]
_KEYS = ("position", "stream", "version", "type", "schema_version", "data", "metadata", "recorded_at", "hash")

_TEXT = st.one_of(st.text(max_size=6), st.sampled_from(("\ud800", "a\udcffb", "\x00", "\u2028", "é", "\"\\")))
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(2**63, 2**70) | st.integers(-2**70, -2**63)
    | st.floats() | _TEXT,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_TEXT, kids, max_size=3),
    max_leaves=8,
)
#: Texts that `json` reads and orjson does not, or reads otherwise, or that neither reads.
_ODD = ('{"a":1,"a":2}', "NaN", "-Infinity", "1e400", '"\\ud800"', "18446744073709551616", "-0", "1E5",
        '{"b":1, "a" : [1.0]}', "\ufeff{}", "{", "", "[1,]", "nul", " 1 ", '{"a":1}x', '"\\u00e9"')


@st.composite
def json_texts(draw: Callable[[st.SearchStrategy[Any]], Any], values: st.SearchStrategy[Any] = _VALUES) -> str:
    """Return a JSON text of a value, in one of the forms a stored or exported text may take, or no JSON."""
    value = draw(values)
    how = draw(st.sampled_from(("canonical", "canonical", "spaced", "escaped", "odd")))
    if how == "canonical":
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if how == "spaced":
        return json.dumps(value, ensure_ascii=False, indent=draw(st.sampled_from((None, 1))))
    if how == "escaped":
        return json.dumps(value)
    return draw(st.sampled_from(_ODD))


def _outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    """Return the repr of what `fn()` gives (True is not 1, nor 1.0), or the type and text of what it raises."""
    try:
        return ("gave", repr(fn()))
    except Exception as e:  # noqa: BLE001 - the error itself is what is compared
        return ("raised", type(e), str(e))


@contextlib.contextmanager
def _parsing(loader: str) -> Iterator[None]:
    """Run the quick paths with orjson as `codec` finds it, or as if it were not installed."""
    with pytest.MonkeyPatch.context() as mp:
        if loader == "json":
            mp.setattr(codec, "_orjson_loads", None)
            mp.setattr(codec, "_orjson_dumps", None)
        yield


@pytest.mark.parametrize("loader", LOADERS)
@SETTINGS
@given(text=json_texts())
def test_loads_exact_reads_as_json_does(loader: str, text: str) -> None:
    """`loads_exact` gives what `json.loads` gives, or its error, and says plain only of a plain tree."""
    with _parsing(loader):
        assert _outcome(lambda: loads_exact(text)[0]) == _outcome(lambda: json.loads(text))
        try:
            obj, is_plain = loads_exact(text)
        except ValueError:
            return
    assert not is_plain or plain_tree(obj)


@pytest.mark.parametrize("loader", LOADERS)
@SETTINGS
@given(text=json_texts())
@example(text='{"a":18446744073709551616}')
@example(text='{"a":1e16}')
@example(text='{"a":1e-7}')
def test_canonical_is_the_dumps_of_the_parse(loader: str, text: str) -> None:
    """`canonical(text)` is `dumps(json.loads(text))` to the character, or raises its error."""
    with _parsing(loader):
        assert _outcome(lambda: canonical(text)) == _outcome(lambda: dumps(json.loads(text)))


def _scalar() -> st.SearchStrategy[Any]:
    """A stored column's value: what it should be, or what a tampered SQLite file may hold instead."""
    return st.one_of(st.integers(0, 2**63), _TEXT, st.sampled_from((None, True, 1.5, b"\x00", -1)))


@pytest.mark.parametrize("loader", LOADERS)
@SETTINGS
@given(fields=st.tuples(_scalar(), _scalar(), _scalar(), _scalar(), _scalar(), json_texts(), json_texts(),
                        _scalar(), _scalar()))
def test_to_line_is_the_dumps_of_the_row_with_its_texts_parsed(loader: str, fields: tuple[Any, ...]) -> None:
    """An export line is the canonical JSON of the row's fields by name, data and metadata parsed; or `json`'s error, as a `StorageError` naming the event."""
    def reference() -> str:
        named = dict(zip(_KEYS, fields))
        try:
            named["data"], named["metadata"] = json.loads(named["data"]), json.loads(named["metadata"])
        except (ValueError, TypeError) as e:
            raise StorageError(f"stored {named['type']} at position {named['position']} does not decode: {e}") from e
        return dumps(named)

    with _parsing(loader):
        assert _outcome(lambda: transfer.to_line(fields)) == _outcome(reference)


def _old_from_line(line: str, number: int) -> tuple[Any, ...]:
    """`from_line` as it was written with `json` alone: the reference."""
    try:
        fields = json.loads(line)
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


@st.composite
def _lines(draw: Callable[[st.SearchStrategy[Any]], Any]) -> str:
    """Return an export line, often damaged: a field missing, added or of another type, or no JSON object."""
    fields: dict[str, Any] = {
        "position": draw(st.integers(1, 2**63)), "stream": "s", "version": draw(st.integers(1, 9)),
        "type": "MemoryChangeRequested", "schema_version": 1, "recorded_at": "2026-01-31T12:00:00.000000+00:00",
        "hash": "0" * 64, "data": draw(_VALUES), "metadata": draw(_VALUES),
    }
    how = draw(st.sampled_from(("whole", "whole", "value", "drop", "add")))
    if how == "value":
        fields[draw(st.sampled_from(_KEYS))] = draw(_VALUES)
    elif how == "drop":
        del fields[draw(st.sampled_from(_KEYS))]
    elif how == "add":
        fields["extra"] = 1
    return draw(json_texts(st.just(fields)))


@pytest.mark.parametrize("loader", LOADERS)
@SETTINGS
@given(line=_lines())
def test_from_line_reads_a_line_as_json_alone_did(loader: str, line: str) -> None:
    """A line reads to the row, or the error, that reading it with `json` alone gives."""
    with _parsing(loader):
        assert _outcome(lambda: transfer.from_line(line, 7)) == _outcome(lambda: _old_from_line(line, 7))
