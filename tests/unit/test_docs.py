"""The documentation covers the catalogue, events, reason codes and causes, and its examples run."""

from __future__ import annotations

import pathlib
import re
import sys
from typing import Any

import pytest

from vmledger.eventstore import catalogue
from vmledger.eventstore.catalogue import CATALOGUE, Cause, Reason
from vmledger.eventstore.events import EVENT_TYPES

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import gen_docs  # noqa: E402

REFERENCE = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")


def test_reference_is_generated_from_the_code() -> None:
    """docs/reference.md equals what scripts/gen_docs.py writes now."""
    assert gen_docs.render() == REFERENCE


@pytest.mark.parametrize("name", [
    *("media:DEV" if p == "media" else p for p in CATALOGUE),
    *EVENT_TYPES,
    *(r.value for r in Reason),
    *(c.value for c in Cause),
])
def test_every_name_is_documented(name: str) -> None:
    """Every catalogue property, event type, reason code and drift cause appears in the reference."""
    assert f"`{name}`" in REFERENCE


@pytest.mark.parametrize("limit", sorted(n for n in catalogue.__all__ if n.startswith("MAX_")))
def test_every_limit_is_documented(limit: str) -> None:
    """Every limit the catalogue enforces appears, with its value, in the reference's limits table."""
    table = REFERENCE.split("## Limits", 1)[1].split("\n## ", 1)[0]
    assert f" {getattr(catalogue, limit)} " in table.replace("(", " ").replace(")", " ")


def test_readme_python_example_runs(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """The README's Python example runs as written against a fresh ledger and prints the output the README gives."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (expected,) = re.findall(r"```text\n(.*?)```", readme, flags=re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out == expected


GUARANTEES = (ROOT / "docs" / "guarantees.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("named", sorted(set(re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", GUARANTEES))),
                         ids=lambda n: "::".join(filter(None, n)))
def test_every_test_the_guarantees_name_exists(named: tuple[str, str]) -> None:
    """Each test docs/guarantees.md names as a promise's proof is a test in the suite."""
    path, name = named
    source = (ROOT / path).read_text(encoding="utf-8")
    assert not name or re.search(rf"^(?:async )?def {name}\(|^class {name}\b|^    def {name}\(", source, re.M)
