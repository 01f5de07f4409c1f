"""`vmledger schema [TYPE]` prints the committed JSON Schemas, and needs no ledger (issue 17)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from vmledger.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden"


def _file(name: str) -> Any:
    return json.loads((ROOT / "eventstore" / "schemas" / name).read_text(encoding="utf-8"))


def _run(capsys: Any, *args: str) -> tuple[int, str, str]:
    code = main(["--db", "/nonexistent/ledger.db", "schema", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_schema_prints_a_type_an_older_version_or_all(capsys: Any) -> None:
    """A type prints its current version's file, `--schema-version` an older one, and no type every file keyed by its name."""
    code, out, err = _run(capsys, "MemoryChangePartiallyApplied")
    assert (code, json.loads(out), err) == (0, _file("MemoryChangePartiallyApplied.v1.json"), "")
    code, out, err = _run(capsys, "LiveValueObserved", "--schema-version", "1")
    assert (code, json.loads(out), sorted(json.loads(out)["properties"]), err) == (
        0, _file("LiveValueObserved.v1.json"), ["property", "value"], "")
    code, out, err = _run(capsys)
    every = json.loads(out)
    # One schema per golden file: every type and version a stored row may have.
    assert (code, sorted(every), every["LiveValueObserved.v2"], err) == (
        0, sorted(p.name.removesuffix(".json") for p in GOLDEN.iterdir()), _file("LiveValueObserved.v2.json"), "")


def test_schema_of_an_unknown_type_or_version_exits_2(capsys: Any) -> None:
    """An unknown type, a version the type never had, or a version without a type is one line on stderr and exit 2."""
    assert [_run(capsys, *args) for args in (("MemoryChangeAplied",), ("MediaTrayLocked", "--schema-version", "2"),
                                             ("--schema-version", "1"))] == [
        (2, "", "vmledger: error: unknown event type 'MemoryChangeAplied': did you mean 'MemoryChangeApplied'?\n"),
        (2, "", "vmledger: error: MediaTrayLocked has schema versions 1 to 1, not 2\n"),
        (2, "", "vmledger: error: --schema-version needs a TYPE\n"),
    ]
