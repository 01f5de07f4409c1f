"""Hostile input through both front doors: every call succeeds, or is rejected cleanly and writes nothing.

Hypothesis draws command lines and Python arguments from the shapes that break
parsers: huge and negative numbers, NaN and infinity, lone surrogates, NUL and
other control characters, bidi and combining marks, overlong text, empty
strings, wrong types, other domains' devices, unknown properties and scopes.
One ledger (a real SQLite file, the simulated hypervisor) serves a whole test;
a call that is rejected must leave the log, every projection row and the
simulator's state exactly as they were (regression tests of issue #6).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import os
import re
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import vmledger
from vmledger.cli import main
from vmledger.ledger import Ledger

GiB = 2**30
TABLES = ("events", "domains", "persistent", "live", "drift", "history", "projection_position")
HOSTILE = settings(max_examples=80, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Text that has broken parsers somewhere: every one is a value a caller can send.
SPECIAL_TEXT = (
    "", " ", "-", "--", "-x", "--json", "/", "..", ".", "web/x", "a\x00b", "\x00", "\t", "\n", "x\ny",
    "\x7f", "\x85", "\x9b31m", "\u2028", "\u2029", "\u200f", "\u200e", "\u202e", "\u2066x\u2069",
    "e\u0301", "\u0301", "\ufeff", "\ud800", "\udcff", "\U0001f600", "\uffff", "a" * 65, "a" * 129,
    "a" * 1025, "/" + "a" * 4096, "x" * 20000, "web", "db", "nope", "WEB", "hdc", "hdd",
    "media:hdc", "media:hdd", "media:", "media:hd c", "memory", "power_state", "live", "both",
)
SPECIAL_NUMBERS = (
    "0", "-1", "-0", "1", "2", "4", "nan", "NaN", "inf", "-inf", "1e400", "1e-9", "9" * 30,
    "18446744073709551616", "9223372036854775808", "1.5", "0x10", "1_000", "+5", " 5 ", "5 ",
    "\u0661", "\uff15", "2GiB", "512MiB", "1.5GiB", "-2GiB", "99999999999999999999TiB",
    "17592186044417", "4097", "2026-01-31T12:00:00Z", "9999-12-31T23:59:59", "0001-01-01",
    "9" * 19, "9" * 5000,
)
#: Any code point, lone surrogates included (argv carries them for undecodable bytes).
ANY_CHAR = st.characters(codec=None, categories=None, exclude_categories=())
hostile_text = st.one_of(
    st.sampled_from(SPECIAL_TEXT), st.sampled_from(SPECIAL_NUMBERS),
    st.text(ANY_CHAR, max_size=40), st.text(ANY_CHAR, min_size=60, max_size=300),
)
hostile_number = st.one_of(st.sampled_from(SPECIAL_NUMBERS), st.integers().map(str), st.floats().map(str))
hostile_arg = st.one_of(hostile_text, hostile_number)
PROPERTIES = ("memory", "max_memory", "vcpus", "max_vcpus", "numa_nodes", "media:hdc", "media:hdd",
              "power_state", "memory_actual", "media:", "Memory", "cpu", "media:x/y")
prop_arg = st.one_of(st.sampled_from(PROPERTIES), hostile_text)
name_arg = st.one_of(st.sampled_from(("web", "db", "nope")), hostile_text)
value_arg = st.one_of(st.sampled_from(("3", "2GiB", "/iso/b.iso", "")), hostile_arg)


def _snapshot(db: str) -> tuple[Any, ...]:
    """Return every stored row of the ledger and the simulator's state: what a rejected call must not change."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = tuple(tuple(conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()) for t in TABLES)
    with open(db + ".sim.json", encoding="utf-8") as f:
        return rows, f.read()


def _new_ledger(directory: Any) -> str:
    """Return the path of a new database where `web` (PV, CD-ROM hdc) runs and `db` (HVM, CD-ROM hdd) is stopped."""
    db = str(directory / "l.db")

    async def setup() -> None:
        async with vmledger.open(db) as ledger:
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4,
                                cdroms={"hdc": "/iso/a.iso"})
            await ledger.define("db", guest_type="hvm", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4,
                                cdroms={"hdd": ""})
            await ledger.start("web")

    asyncio.run(setup())
    return db


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Return the path of one ledger that the property tests of this module share (they may change it)."""
    return _new_ledger(tmp_path_factory.mktemp("shared"))


@pytest.fixture(scope="module")
def pinned_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Return the path of one ledger for the pinned regressions, which all expect it unchanged."""
    return _new_ledger(tmp_path_factory.mktemp("pinned"))


def run_cli(db: str, argv: list[str]) -> tuple[int, str, str]:
    """Run `vmledger` in-process on `db`; return its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--db", db, *argv])
    return code, out.getvalue(), err.getvalue()


def cli_verdict(db: str, argv: list[str]) -> str:
    """Run one command line and say whether it was accepted, rejected cleanly, or broke the contract (and how)."""
    before = _snapshot(db)
    code, out, err = run_cli(db, argv)
    after = _snapshot(db)
    # A repeated request id is accepted with a note that it was a replay (issue 18).
    replayed = re.fullmatch(r"vmledger: request id .* was recorded before: its first outcome again, nothing appended\n",
                            err, re.S)
    if code in (0, 3) and (err == "" or (replayed and after == before)):
        return "accepted"
    if code == 2 and err.startswith("vmledger: error: ") and err.count("\n") == 1 and err.endswith("\n") \
            and "\r" not in err and after == before:
        return "rejected"
    return f"exit {code}, wrote {after != before}, stderr {err!r}"


def _options(draw: Any, names: tuple[str, ...]) -> list[str]:
    chosen = draw(st.lists(st.sampled_from(names), max_size=len(names), unique=True))
    return [part for opt in chosen for part in (opt, draw(hostile_arg))]


@st.composite
def set_argv(draw: Any) -> list[str]:
    """Return a `set` command line, well-formed but for one or two hostile arguments."""
    slots = {"name": st.sampled_from(("web", "db")), "property": st.sampled_from(PROPERTIES[:6]),
             "value": st.sampled_from(("3", "2GiB", "/iso/b.iso", "")), "--scope": st.sampled_from(("live", "both")),
             "--request-id": st.uuids().map(str), "--principal": st.just("alice"), "--reason": st.just("why")}
    hostile = set(draw(st.lists(st.sampled_from(sorted(slots)), min_size=1, max_size=2)))
    argv = {slot: draw(hostile_arg if slot in hostile else strategy) for slot, strategy in slots.items()}
    options = [part for opt in ("--scope", "--request-id", "--principal", "--reason")
               if opt in hostile or draw(st.booleans()) for part in (opt, argv[opt])]
    return ["set", argv["name"], argv["property"], argv["value"], *options]


@st.composite
def other_argv(draw: Any) -> list[str]:
    """Return a read or lifecycle command line with hostile arguments."""
    command = draw(st.sampled_from(("get", "show", "history", "drift", "events", "define", "observe", "timeout")))
    if command == "get":
        return ["get", draw(name_arg), draw(prop_arg), *_options(draw, ("--scope",))]
    if command in ("show", "observe"):
        return [command, draw(name_arg)]
    if command == "history":
        return ["history", draw(name_arg), draw(prop_arg), *_options(draw, ("--principal", "--since", "--until"))]
    if command == "drift":
        return ["drift", draw(name_arg), *_options(draw, ("--as-of",))]
    if command == "events":
        return ["events", "--from", draw(hostile_number)]
    if command == "timeout":
        return ["--timeout", draw(hostile_number), "set", "web", "vcpus", draw(st.sampled_from(("2", "3")))]
    sizes = st.one_of(st.sampled_from(("1GiB", "4GiB", "2")), hostile_arg)
    return ["define", draw(name_arg), "--type", draw(st.sampled_from(("pv", "hvm"))),
            "--memory", draw(sizes), "--max-memory", draw(sizes), "--vcpus", draw(sizes),
            "--max-vcpus", draw(sizes), *_options(draw, ("--numa-nodes", "--cdrom", "--principal"))]


@HOSTILE
@given(argv=set_argv())
@example(argv=["set", "web", "memory", "--", "--scope", "\n"])  # argparse showed an unknown argument as it came
@example(argv=["set", "web", "memory", "2GiB", "--\x1b[2J"])
def test_cli_set_accepts_or_rejects_cleanly(shared_db: str, argv: list[str]) -> None:
    """A hostile `set` command line is recorded, or exits 2 with one line on stderr and writes nothing."""
    assert cli_verdict(shared_db, argv) in ("accepted", "rejected")


@HOSTILE
@given(argv=other_argv())
@example(argv=["drift", "--as-of", "9" * 30])
@example(argv=["drift", "--as-of", "9" * 5000])
@example(argv=["--db", "/tmp/a\x00b.db", "list"])
def test_cli_other_commands_accept_or_reject_cleanly(shared_db: str, argv: list[str]) -> None:
    """A hostile read, define or global option is answered, or exits 2 with one line on stderr and writes nothing."""
    assert cli_verdict(shared_db, argv) in ("accepted", "rejected")


def _seconds(text: str) -> bool:
    """Say whether `text` is what --timeout documents: a finite number of seconds above 0."""
    try:
        return 0 < float(text) < math.inf
    except ValueError:
        return False


@HOSTILE
@given(timeout=hostile_number)
@example(timeout="nan")
@example(timeout="-1")
@example(timeout="0")
@example(timeout="inf")
def test_cli_timeout_is_a_finite_number_of_seconds_above_zero(shared_db: str, timeout: str) -> None:
    """`--timeout` takes a finite number of seconds above 0; anything else exits 2 before a request is recorded."""
    verdict = cli_verdict(shared_db, ["--timeout", timeout, "set", "web", "vcpus", "3"])
    assert verdict == ("accepted" if _seconds(timeout) else "rejected")


# The Python API: wrong types as well as wrong values.

hostile_value = st.one_of(
    st.integers(), st.integers(min_value=2**62), st.integers(max_value=-(2**62)), st.floats(), st.booleans(),
    st.none(), st.binary(max_size=8), hostile_text,
    st.lists(st.integers(0, 5), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from((math.nan, math.inf, -math.inf, 1.0, 2.5, -0.0, (1,), frozenset(), object())),
)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Return a strategy that leaves an argument out (None here) or draws it from `strategy`."""
    return st.one_of(st.none(), strategy)


def _kwargs(draw: Any, **strategies: st.SearchStrategy[Any]) -> dict[str, Any]:
    drawn = {k: draw(_maybe(s)) for k, s in strategies.items()}
    return {k: v for k, v in drawn.items() if v is not None}


api_name = st.one_of(st.sampled_from(("web", "db", "nope")), hostile_value)
api_prop = st.one_of(st.sampled_from(PROPERTIES), hostile_value)
api_value = st.one_of(st.sampled_from((3, 2 * GiB, "/iso/b.iso", "", "running")), hostile_value)
api_scope = st.one_of(st.sampled_from(("live", "persistent", "both", "current", "LIVE", "")), hostile_value)
api_when = st.one_of(st.sampled_from((datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 1))),
                     hostile_value)


@st.composite
def api_calls(draw: Any) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """Return `(method, args, kwargs)` of one Ledger call with hostile arguments."""
    method = draw(st.sampled_from(("set", "set", "set", "get", "show", "history", "drift", "request",
                                   "define", "events", "observe", "start", "stop")))
    text = st.one_of(st.sampled_from(("alice", "r-1", "why")), hostile_value)
    if method == "set":
        return method, (draw(api_name), draw(api_prop), draw(api_value)), _kwargs(
            draw, scope=api_scope, request_id=text, principal=text, reason=text)
    if method == "get":
        return method, (draw(api_name), draw(api_prop)), _kwargs(draw, scope=api_scope)
    if method in ("show", "observe", "start", "stop"):
        return method, (draw(api_name),), _kwargs(draw, principal=text) if method in ("start", "stop") else {}
    if method == "history":
        return method, (draw(_maybe(api_name)), draw(_maybe(api_prop))), _kwargs(
            draw, principal=text, since=api_when, until=api_when)
    if method == "drift":
        return method, (draw(_maybe(api_name)),), _kwargs(draw, as_of=st.one_of(st.integers(0, 9), api_when))
    if method == "request":
        return method, (draw(text),), {}
    if method == "events":
        return method, (), _kwargs(draw, from_position=st.one_of(st.integers(0, 9), hostile_value))
    size = st.one_of(st.sampled_from((GiB, 4 * GiB, 2)), hostile_value)
    cdroms = st.one_of(st.just({"hdc": "/iso/a.iso"}), st.dictionaries(hostile_value.filter(
        lambda v: isinstance(v, (str, int, float, bytes, tuple, frozenset))), hostile_value, max_size=2), hostile_value)
    return method, (draw(api_name),), {
        "guest_type": draw(st.one_of(st.sampled_from(("pv", "hvm")), hostile_value)),
        "memory": draw(size), "max_memory": draw(size), "vcpus": draw(size), "max_vcpus": draw(size),
        **_kwargs(draw, numa_nodes=size, cdroms=cdroms, principal=text)}


async def _call(ledger: Ledger, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if method == "events":
        return [rec async for rec in ledger.events(**kwargs)]
    return await getattr(ledger, method)(*args, **kwargs)


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _optional(check: Any) -> Any:
    return lambda v: v is None or check(v)


#: The documented type of every parameter the calls above pass: a call breaking one must be rejected.
PARAMETERS: dict[str, tuple[tuple[str, Any], ...]] = {
    "set": (("name", _text), ("prop", _text), ("value", lambda v: _whole(v) or _text(v))),
    "get": (("name", _text), ("prop", _text)),
    "show": (("name", _text),), "observe": (("name", _optional(_text)),), "start": (("name", _text),),
    "stop": (("name", _text),), "request": (("request_id", _text),), "events": (),
    "history": (("name", _optional(_text)), ("prop", _optional(_text))),
    "drift": (("name", _optional(_text)),),
    "define": (("name", _text),),
}
KEYWORDS: dict[str, Any] = {
    "scope": _text, "request_id": _text, "principal": _text, "reason": _optional(_text),
    "since": lambda v: isinstance(v, datetime), "until": lambda v: isinstance(v, datetime),
    "as_of": lambda v: _whole(v) or isinstance(v, datetime), "from_position": _whole,
    "guest_type": _text, "memory": _whole, "max_memory": _whole, "vcpus": _whole, "max_vcpus": _whole,
    "numa_nodes": _whole,
    "cdroms": lambda v: isinstance(v, dict) and all(_text(k) and _text(p) for k, p in v.items()),
}


def well_typed(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Say whether every argument of a call has the type the Ledger documents for it."""
    positional = all(check(a) for (_, check), a in zip(PARAMETERS[method], args))
    return positional and all(KEYWORDS[k](v) for k, v in kwargs.items())


def api_verdict(db: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Make one Ledger call; say whether it was answered or rejected with nothing written (any other error raises)."""

    async def go() -> str:
        async with vmledger.open(db, hypervisor_timeout=0.5) as ledger:
            try:
                await _call(ledger, method, args, kwargs)
            except vmledger.InvalidRequestError:
                return "rejected"
            return "accepted"

    before = _snapshot(db)
    verdict = asyncio.run(go())
    wrote = _snapshot(db) != before
    return f"{verdict}{' but wrote' if verdict == 'rejected' and wrote else ''}"


@HOSTILE
@given(call=api_calls())
@example(call=("set", (["web"], "vcpus", 3), {}))
@example(call=("set", ("web", 5, 3), {}))
@example(call=("set", ("web", "vcpus", 3), {"scope": ["both"]}))
@example(call=("get", ("web", None), {}))
@example(call=("observe", (None,), {}))
@example(call=("history", ("web", ["memory"]), {}))
@example(call=("history", (), {"since": "2020"}))
@example(call=("drift", (None,), {"as_of": 2**63}))
@example(call=("drift", (None,), {"as_of": b""}))
@example(call=("drift", (None,), {"as_of": 0.0}))
@example(call=("drift", (), {"as_of": "5"}))
@example(call=("drift", (), {"as_of": math.nan}))
@example(call=("events", (), {"from_position": 2**63}))
@example(call=("events", (), {"from_position": 0.0}))
@example(call=("events", (), {"from_position": []}))
@example(call=("define", ("x",), {"guest_type": ["pv"], "memory": GiB, "max_memory": GiB, "vcpus": 1,
                                  "max_vcpus": 1}))
@example(call=("define", ("x",), {"guest_type": "pv", "memory": GiB, "max_memory": GiB, "vcpus": 1,
                                  "max_vcpus": 1, "cdroms": ["hdc"]}))
def test_api_answers_or_raises_invalid_request_and_writes_nothing(
        shared_db: str, call: tuple[str, tuple[Any, ...], dict[str, Any]]) -> None:
    """A Ledger call with hostile arguments returns, or raises InvalidRequestError and writes nothing; ill-typed ones raise."""
    assert api_verdict(shared_db, *call) in (("accepted", "rejected") if well_typed(*call) else ("rejected",))


# Each failure the properties above found, pinned with its exact message.

CONTROLS = "(no control characters, line separators, bidi controls or lone surrogates)"
CLI_REGRESSIONS = {
    "nul-in-database-url": (["--db", "/tmp/a\x00b.db", "list"],
                            "database URL '/tmp/a\\x00b.db' holds a NUL character"),
    "position-beyond-64-bits": (["drift", "--as-of", "9" * 19],
                                "a log position must be between 0 and 9223372036854775807"),
    "position-beyond-int-digits": (["drift", "--as-of", "9" * 5000],
                                   f"invalid log position '{'9' * 56}...: use a whole number from 0 to "
                                   "9223372036854775807, or an ISO 8601 time"),
    "nan-timeout": (["--timeout", "nan", "set", "web", "vcpus", "3"],
                    "the hypervisor timeout must be a finite number of seconds above 0, not nan"),
    "negative-timeout": (["--timeout", "-1", "set", "web", "vcpus", "3"],
                         "the hypervisor timeout must be a finite number of seconds above 0, not -1.0"),
    "cdrom-given-twice": (["define", "x", "--type", "pv", "--memory", "1GiB", "--max-memory", "1GiB", "--vcpus", "1",
                           "--max-vcpus", "1", "--cdrom", "hdc", "--cdrom", "hdc=/iso/a.iso"],
                          "CD-ROM device 'hdc' is given twice"),
    "sim-unknown-domain": (["sim", "balloon", "nope", "1GiB"], "unknown domain 'nope'"),
    "sim-unknown-device": (["sim", "lock-tray", "web", "hdx"], "domain 'web' has no removable device 'hdx'"),
    "c1-control-in-path": (["set", "web", "media:hdc", "/iso/\x85.iso"], f"media path must not contain U+0085 {CONTROLS}"),
    "line-separator-in-reason": (["set", "web", "vcpus", "3", "--reason", "a\u2028b"],
                                 f"reason must not contain U+2028 {CONTROLS}"),
    "bidi-override-in-principal": (["set", "web", "vcpus", "3", "--principal", "\u202eecila"],
                                   f"principal must not contain U+202E {CONTROLS}"),
}


@pytest.mark.parametrize("case", sorted(CLI_REGRESSIONS))
def test_cli_regressions_exit_2_with_their_message(pinned_db: str, case: str) -> None:
    """Each hostile command line issue #6 found exits 2 with its one-line message and writes nothing."""
    argv, message = CLI_REGRESSIONS[case]
    before = _snapshot(pinned_db)
    code, out, err = run_cli(pinned_db, argv)
    assert (code, out, err, _snapshot(pinned_db) == before) == (2, "", f"vmledger: error: {message}\n", True)


def _subprocess_cli(db: str, argv: list[Any], **env: str) -> subprocess.CompletedProcess[bytes]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([sys.executable, "-m", "vmledger.cli", "--db", db, *argv], capture_output=True,
                          cwd=root, env={**os.environ, **env}, timeout=60, check=False)


def test_bad_timeout_in_the_environment_is_a_usage_error(pinned_db: str) -> None:
    """A VMLEDGER_TIMEOUT that is no number exits 2 with one line, where it crashed while building the parser (issue #6)."""
    proc = _subprocess_cli(pinned_db, ["list"], VMLEDGER_TIMEOUT="soon")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        2, b"", b"vmledger: error: argument --timeout: invalid float value: 'soon' (see 'vmledger --help')\n")


def test_undecodable_bytes_in_argv_are_an_invalid_name(pinned_db: str) -> None:
    """A name whose bytes are not UTF-8 (a lone surrogate once decoded) exits 2 with one line and writes nothing."""
    before = _snapshot(pinned_db)
    proc = _subprocess_cli(pinned_db, [b"set", b"web\xff", b"vcpus", b"3"])
    assert (proc.returncode, proc.stdout, proc.stderr, _snapshot(pinned_db) == before) == (
        2, b"", f"vmledger: error: domain name must not contain U+DCFF {CONTROLS}\n".encode(), True)
