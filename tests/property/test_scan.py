"""The rebuild's decoding: `scan` reads every stored row as `record` does, with orjson or without.

Rows start from encoded events of every type and are then broken the ways a
stored row can be: fields dropped, added or given values of the wrong type
(booleans, floats, integers beyond 64 bits, lone surrogates, lists), data
that is no JSON object or no JSON at all, other schema versions and type
names, and metadata or times that do not decode.  Whatever the row, `scan`
must give what `record` gives, or raise the same error.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from typing import Any, Awaitable, Callable, Iterator

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import vmledger
from vmledger import ledger as ledger_module
from vmledger.eventstore import transfer
from vmledger.projections import scan as _scan_module
from vmledger.eventstore.backends.common import ChainChecker, _link, record
from vmledger.projections.scan import as_change, scan
from vmledger.eventstore.codec import dumps, encode, loads
from vmledger.eventstore.errors import ChainBrokenError, DamagedExportError, StorageError
from vmledger.eventstore.events import EVENT_TYPES, DomainDefined, DomainStarted
from vmledger.eventstore.log import GENESIS_HASH, RecordedEvent
from tests.strategies import any_logs, events

SETTINGS = settings(database=None, deadline=None, max_examples=300)
META = dumps({"correlation_id": None, "principal": "p", "request_id": None})
AT = "2026-01-31T12:00:00.000000+00:00"

_hostile_text = st.one_of(st.text(max_size=8), st.sampled_from(("\ud800", "a\udcffb", "\x00", "\u2028")))
_hostile_value = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(2**63, 2**70), st.integers(-2**70, -2**63),
    st.floats(allow_nan=False, allow_infinity=False), _hostile_text,
    st.sampled_from(("live", "persistent", "both", "current", "tray_locked", "requires_restart", "bogus")),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_ORJSON = importlib.util.find_spec("orjson") is not None
#: The parsers `scan` may run on: json stands in for orjson where orjson is not installed.
LOADERS = [
    pytest.param("orjson", marks=pytest.mark.skipif(not _ORJSON, reason="orjson (the bench extra) is not installed")),
    "json",
]
#: Texts that json reads and orjson does not, or reads otherwise.
_ODD_JSON = ("NaN", "Infinity", "-Infinity", "1e400", '"\\ud800"', "18446744073709551616")


@st.composite
def _data(draw: Callable[[st.SearchStrategy[Any]], Any], fields: dict[str, Any]) -> str:
    """Return the JSON text of `fields`, broken in one of the ways stored data can be, or not at all."""
    how = draw(st.sampled_from(("as is", "value", "value", "drop", "add", "text", "odd")))
    fields = dict(fields)
    if how == "value" and fields:
        fields[draw(st.sampled_from(sorted(fields)))] = draw(_hostile_value)
    elif how == "drop" and fields:
        del fields[draw(st.sampled_from(sorted(fields)))]
    elif how == "add":
        fields[draw(st.sampled_from(("extra", "reason", "message", "principal", "requested")))] = draw(_hostile_value)
    elif how == "text":
        return draw(st.sampled_from(("[]", "1", "null", '"x"', "{", "", "{}", "{\"a\":1,}")))
    elif how == "odd" and fields:
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        key = draw(st.sampled_from(sorted(fields)))
        return text.replace(json.dumps(fields[key]), draw(st.sampled_from(_ODD_JSON)), 1)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@st.composite
def rows(draw: Callable[[st.SearchStrategy[Any]], Any]) -> tuple[Any, ...]:
    """Return a stored row (`SCAN_COLUMNS`) of any event, often broken."""
    event = draw(events())
    name, version, text = encode(event)
    data = draw(_data(loads(text)))
    name = draw(st.sampled_from((name, name, name, "NoSuchEvent", "MemoryChangeApplied", "VcpusChangeRequested")))
    version = draw(st.sampled_from((version, version, version, 0, 2, True)))
    metadata = draw(st.sampled_from((META, META, META, "{", "[]", '{"principal":1}', '{"who":"x"}')))
    at = draw(st.sampled_from((AT, AT, AT, "2026-01-31T12:00:00", "yesterday", "2026-01-31T12:00:00+02:00")))
    return (draw(st.integers(1, 2**63)), "stream", draw(st.integers(1, 9)), name, version, data, metadata, at)


def _outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    """Return what `fn()` gives, typed, or the type and text of what it raises."""
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - the error itself is what is compared
        return ("raised", type(e), str(e))
    return ("gave", [(type(x), x) for x in result])


def _typed(result: list[Any]) -> list[Any]:
    """Return scanned items as `Change`s where they are changes, each field beside its type (True is not 1)."""
    typed = []
    for item in result:
        change = as_change(item) if isinstance(item, RecordedEvent) else item
        typed.append(item if change is None else [(type(f), f) for f in change])
    return typed


@pytest.mark.parametrize("loader", LOADERS)
@SETTINGS
@given(row=rows())
@example(row=(1, "s", 1, "MemoryChangeRequested", 1, '{"principal":"p","property":"memory","request_id":"r",'
              '"scope":"both","value":18446744073709551616}', META, AT))
@example(row=(1, "s", 1, "MemoryChangeApplied", 1, '{"property":"memory","request_id":"r","requested":1,'
              '"scope":"live","value":true}', META, AT))
@example(row=(1, "s", 1, "MediaChangeRefused", 1, '{"message":"\\ud800","property":"media:hdc","reason":null,'
              '"request_id":"r","requested":"","scope":"live","value":null}', META, AT))
@example(row=(1, "s", 1, "VcpusChangeFailed", 1, '{"property":"vcpus","request_id":"r","requested":1,'
              '"scope":"both","value":null}', META, AT))
@example(row=(1, "s", 1, "VcpusChangeFailed", 1, '{"property":"vcpus","reason":"bogus","request_id":"r",'
              '"requested":1,"scope":"live","value":null}', META, AT))
@example(row=(1, "s", 1, "VcpusChangeRequested", 1, '{"principal":"p","property":"vcpus","request_id":"r",'
              '"scope":"live","value":2,"who":"x"}', META, AT))
def test_scan_reads_each_row_as_record_does(loader: str, row: tuple[Any, ...]) -> None:
    """A stored row, well formed or broken, scans to what `record` makes of it, or to the same error."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_scan_module, "_fast_loads", __import__(loader).loads)
        scanned = _outcome(lambda: _typed(scan([row])))
    assert scanned == _outcome(lambda: _typed([record((*row, ""))]))


@SETTINGS
@given(st.lists(rows(), min_size=2, max_size=6))
def test_scan_of_many_rows_raises_at_the_first_that_does_not_decode(batch: list[tuple[Any, ...]]) -> None:
    """Scanning rows together gives each row's result, or the error of the first row that does not decode."""
    assert _outcome(lambda: _typed(scan(batch))) == _outcome(lambda: _typed([record((*row, "")) for row in batch]))


def test_every_change_event_is_scanned_without_record() -> None:
    """Every change event type of the catalogue is decoded by `scan` itself, none left to `record` (a guard on their fields)."""
    changes = {name for name, cls in EVENT_TYPES.items() if "Change" in name}
    assert set(_scan_module._FAST) == changes


@st.composite
def _chains(draw: Callable[[st.SearchStrategy[Any]], Any]) -> list[tuple[Any, ...]]:
    """Return stored rows (`COLUMNS`) linked as a log's are, often broken: a row that does not decode, a gap, a bad link."""
    chain, prev = [], GENESIS_HASH
    for position, row in enumerate(draw(st.lists(rows(), min_size=1, max_size=6)), start=1):
        fields = (position, "s", position, *row[3:])
        how = draw(st.sampled_from(("linked", "linked", "linked", "gap", "version", "hash")))
        if how == "gap":
            fields = (position + 1, *fields[1:])
        elif how == "version":
            fields = (position, "s", 9, *fields[3:])
        try:
            link = _link(prev, fields)
        except UnicodeEncodeError:  # a lone surrogate: no stored text holds one
            continue
        chain.append((*fields, "0" * 64 if how == "hash" else link))
        prev = link
    return chain


@st.composite
def _foldable_chains(draw: Callable[[st.SearchStrategy[Any]], Any]) -> list[tuple[Any, ...]]:
    """Return the linked rows of a log that folds (`any_logs`), perhaps spoilt once.

    Spoilt: a domain's name defined again on a stream of its own, a request
    id used again (both refused by the fold, their chain intact), a gap or a
    bad link.
    """
    records = draw(any_logs(max_events=6))
    items = [(r.stream, *encode(r.event)) for r in records]
    at = draw(st.integers(0, len(items)))
    how = draw(st.sampled_from(("as is", "defined again", "request again", "gap", "hash")))
    if how == "defined again":
        first = records[0].event
        assert isinstance(first, DomainDefined)
        items.insert(at, ("c", *encode(attrs.evolve(first, uuid="c"))))
    elif how == "request again":
        requests = [i for i, item in enumerate(items) if item[1].endswith("Requested")]
        if requests:
            items.insert(max(at, requests[0] + 1), items[requests[0]])
    return _linked(items, at, how)


def _linked(items: list[tuple[str, str, int, str]], at: int = -1, how: str = "as is") -> list[tuple[Any, ...]]:
    """Return the stored rows of `items` (stream, type, schema version, data) linked in turn; the row at `at` with a gap or a bad link if `how` says so."""
    chain, prev, versions = [], GENESIS_HASH, {}
    for index, (stream, name, version, data) in enumerate(items):
        versions[stream] = versions.get(stream, 0) + 1
        spoilt = index == at
        fields = (index + 1 + (how == "gap" and spoilt), stream, versions[stream], name, version, data, META, AT)
        link = _link(prev, fields)
        chain.append((*fields, "0" * 64 if how == "hash" and spoilt else link))
        prev = link
    return chain


#: An event the fold refuses (no `DomainDefined` before it), then a gap, in one chunk of two lines.
_REFUSED_THEN_GAP = _linked([("s", *encode(DomainStarted(config={})))] * 2, at=1, how="gap")


@SETTINGS
@given(chain=_chains())
def test_a_chain_checked_in_a_batch_fails_where_row_by_row_it_fails_first(chain: list[tuple[Any, ...]]) -> None:
    """`ChainChecker.check_all` with `scan` as its decoder raises what checking row by row with `record` raises first."""
    def one_by_one() -> list[Any]:
        checker = ChainChecker()
        for row in chain:
            checker.check(row)
        return [checker.position]

    def batched() -> list[Any]:
        checker = ChainChecker(decode=scan)
        checker.check_all(chain)
        return [checker.position]

    assert _outcome(batched) == _outcome(one_by_one)


#: A line that cannot be read: reading the export raises where it stands.
_UNREADABLE = "(unreadable)"


def _read(lines: list[str]) -> Iterator[str]:
    """Yield the lines, raising at `_UNREADABLE` as the command line's reader does at a line that is not UTF-8."""
    for number, line in enumerate(lines, start=1):
        if line == _UNREADABLE:
            raise vmledger.InvalidRequestError(f"line {number} of the export is not UTF-8 text")
        yield line


@settings(database=None, deadline=None, max_examples=80)
@given(chain=_chains() | _foldable_chains(),
       bad=st.none() | st.tuples(st.integers(0, 10), st.sampled_from(("{", "[]", '{"position":1}', _UNREADABLE, "", " \t"))))
@example(chain=_REFUSED_THEN_GAP, bad=None)
@example(chain=_REFUSED_THEN_GAP[:1], bad=(1, "{"))
@example(chain=_linked([("s", *encode(DomainStarted(config={})))], at=0, how="gap"), bad=(1, _UNREADABLE))
@example(chain=_REFUSED_THEN_GAP[:1], bad=(0, ""))
def test_an_import_fails_where_importing_its_lines_one_by_one_fails_first(
        tmp_path_factory: pytest.TempPathFactory, chain: list[tuple[Any, ...]], bad: tuple[int, str] | None) -> None:
    """`import` checks and folds an export in chunks, and still refuses it with the first error a line-by-line import meets.

    The export is a chain of rows (broken or not, folding or not), perhaps
    with one line that is no export line, that cannot be read, or that is
    blank (skipped, but counted in the line numbers of errors); the chunks
    are of two lines, so that errors fall within a chunk and across chunks.
    The first error is the fold's, if it refuses a row before the line where
    checking line by line stops, else that line's.  Refused, the ledger
    stays empty.
    """
    lines = []
    for row in chain:
        try:
            lines.append(transfer.to_line(row))
        except StorageError:  # data that is no JSON: an export never holds it, a damaged line stands for it
            lines.append("{")
    if bad is not None:
        lines.insert(min(bad[0], len(lines)), bad[1])
    accepted = []

    def one_by_one() -> list[Any]:
        checker = ChainChecker()
        for number, line in enumerate(_read(lines), start=1):
            if not line.strip():
                continue
            try:
                checker.check(transfer.from_line(line, number))
            except ChainBrokenError as e:  # the export's damage, at its line
                raise DamagedExportError(e.position, e.detail, number) from e
            accepted.append(line)
        return [checker.position]

    async def imported(path: str, lines: list[str]) -> tuple[tuple[Any, ...], int]:
        async with vmledger.open(path) as ledger:
            outcome = await _outcome_async(lambda: ledger.import_lines(lambda: _read(lines)))
            return outcome, await ledger.log.head()

    def in_chunks(size: int, lines: list[str]) -> tuple[tuple[Any, ...], int]:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ledger_module, "_IMPORT_CHUNK", size)
            return asyncio.run(imported(str(tmp_path_factory.mktemp("import") / "ledger.db"), lines))

    checked = _outcome(one_by_one)
    folded = in_chunks(len(lines) + 1, accepted)  # the rows before the first bad line, in one chunk
    events = sum(1 for line in lines if line.strip())
    expected = folded if folded[0][0] == "raised" else (checked, events if checked[0] == "gave" else 0)
    outcome, head = in_chunks(2, lines)
    assert (outcome, head) == expected
    assert head in (0, events)


async def _outcome_async(fn: Callable[[], Awaitable[Any]]) -> tuple[Any, ...]:
    """Return `("gave", [result])`, or the type and text of what awaiting `fn()` raises."""
    try:
        result = await fn()
    except Exception as e:  # noqa: BLE001 - the error itself is what is compared
        return ("raised", type(e), str(e))
    return ("gave", [(type(result), result)])
