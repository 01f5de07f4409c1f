"""The drift story of issue 13, each step through the CLI: the cause of a difference stays until a value moves."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vmledger.cli import main

MiB, GiB = 2**20, 2**30


def test_drift_names_the_event_that_made_the_difference(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A balloon stays the cause through a refused request and one for the value held; later changes take over."""
    db = f"sqlite:///{tmp_path}/ledger.db"

    def run(*args: str) -> tuple[int, Any]:
        capsys.readouterr()
        code = main(["--db", db, *args])
        out = capsys.readouterr().out
        return code, json.loads(out) if "--json" in args else out

    def drift() -> list[tuple]:
        return [(d["property"], d["cause"], d["request_id"], d["since_position"], d["persistent"], d["live"])
                for d in run("drift", "--json")[1]]

    def last(kind: str) -> int:
        return [json.loads(line)["position"] for line in run("events")[1].splitlines()
                if json.loads(line)["type"] == kind][-1]

    assert run("define", "web", "--type", "pv", "--memory", "1GiB", "--max-memory", "4GiB",
               "--vcpus", "2", "--max-vcpus", "4")[0] == 0
    assert run("start", "web")[0] == 0
    assert run("sim", "balloon", "web", "900MiB")[0] == 0
    assert run("observe", "web")[0] == 0
    balloon = ("memory", "external", None, last("LiveValueObserved"), GiB, 900 * MiB)
    steps = [drift()]
    steps.append((run("set", "web", "memory", "100GiB", "--json")[0], drift()))
    steps.append((run("set", "web", "memory", "1GiB", "--scope", "persistent", "--json")[0], drift()))
    code, record = run("set", "web", "memory", "2GiB", "--scope", "persistent", "--json")
    steps.append((code, drift()))
    persistent_only = ("memory", "persistent_only", record["request_id"], last("MemoryChangeApplied"), 2 * GiB, 900 * MiB)
    steps.append((run("set", "web", "memory", "2GiB", "--scope", "live", "--json")[0], drift()))
    assert run("sim", "balloon", "web", "1536MiB")[0] == 0
    assert run("observe", "web")[0] == 0
    steps.append(drift())
    again = ("memory", "external", None, last("LiveValueObserved"), 2 * GiB, 1536 * MiB)
    assert steps == [[balloon], (3, [balloon]), (0, [balloon]), (0, [persistent_only]), (0, []), [again]]
    assert again[3] > balloon[3]
