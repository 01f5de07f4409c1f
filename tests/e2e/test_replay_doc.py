"""The replay example of docs/replay.md runs as written and prints what the page says (issue 17)."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest

PAGE = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "replay.md").read_text(encoding="utf-8")


def test_the_replay_example_runs_and_prints_what_the_page_says(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: Any) -> None:
    """The page's Python example, run in an empty directory, prints exactly the page's output block."""
    (code,) = re.findall(r"```python\n(.*?)```", PAGE, flags=re.S)
    (expected,) = re.findall(r"```text\n(.*?)```", PAGE, flags=re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/replay.md", "exec"), {"__name__": "__replay_doc__"})
    assert capsys.readouterr().out == expected
