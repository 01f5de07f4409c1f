"""The README's tour and Python example, run as a reader would, twice in a row in one directory (issue 18)."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import attrs
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


@attrs.frozen(kw_only=True)
class Step:
    """One `$` line of the tour: the command, the exit code its comment gives, and the lines it should print."""

    command: str
    exit_code: int
    expected: tuple[str, ...]


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def tour() -> list[Step]:
    """Return the steps of every console block of the tour, in order."""
    steps: list[Step] = []
    for block in re.findall(r"```console\n(.*?)```", _section("A five-minute tour of the CLI"), re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                command, _, comment = line[2:].partition("  # ")
                code = re.fullmatch(r"exit (\d)", comment.strip())
                steps.append(Step(command=command.strip(), exit_code=int(code.group(1)) if code else 0, expected=()))
            else:
                last = steps[-1]
                steps[-1] = attrs.evolve(last, expected=(*last.expected, line))
    return steps


def matches(expected: tuple[str, ...], actual: str) -> bool:
    """Say whether `actual` is what `expected` shows: `…` alone stands for any lines, within a line for any text."""
    pattern = "".join(r"(?:.*\n)*?" if line == "…" else ".*?".join(map(re.escape, line.split("…"))) + r"\n"
                      for line in expected)
    return re.fullmatch(pattern, actual) is not None


def _run_tour(directory: pathlib.Path) -> list[tuple[str, int, str]]:
    """Run the tour's commands in `directory` as a shell would; return each command, exit code and output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMLEDGER_")}
    env["PYTHONPATH"] = str(ROOT)
    shell = f"vmledger() {{ {shlex.quote(sys.executable)} -m vmledger \"$@\"; }}\n"
    out = []
    for step in tour():
        if step.command.startswith("export "):
            name, _, value = step.command[len("export "):].partition("=")
            env[name] = value
            out.append((step.command, 0, ""))
            continue
        done = subprocess.run(["bash", "-c", shell + step.command], cwd=directory, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        out.append((step.command, done.returncode, done.stdout))
    return out


def test_the_tour_is_a_true_transcript_run_after_run(tmp_path: pathlib.Path) -> None:
    """Every command of the README's tour exits and prints as the README says, on a first and on a second run in the same directory."""
    steps = tour()
    assert len(steps) > 30
    for _ in range(2):
        ran = _run_tour(tmp_path)
        wrong = [(command, code, output) for (command, code, output), step in zip(ran, steps)
                 if code != step.exit_code or not matches(step.expected, output)]
        assert wrong == []


def test_the_python_example_prints_what_the_readme_says_run_after_run(tmp_path: pathlib.Path) -> None:
    """The README's Python example prints exactly the output the README gives, on a first and on a second run (issue 18)."""
    api = _section("The Python API")
    code = re.search(r"```python\n(.*?)```", api, re.S).group(1)
    expected = re.search(r"```text\n(.*?)```", api, re.S).group(1)
    (tmp_path / "example.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "error"}
    runs = [subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120) for _ in range(2)]
    assert [(r.returncode, r.stdout, r.stderr) for r in runs] == [(0, expected, "")] * 2


@pytest.mark.parametrize("expected, actual, verdict", [
    (("a …",), "a b c\n", True),
    (("a", "…", "z"), "a\nb\nc\nz\n", True),
    (("a", "…", "z"), "a\nz\n", True),
    (("a", "z"), "a\nb\nz\n", False),
    (("a …",), "b a\n", False),
])
def test_transcript_matching(expected: tuple[str, ...], actual: str, verdict: bool) -> None:
    """`…` stands for any text within a line and for any lines on a line of its own, and nothing else is loose."""
    assert matches(expected, actual) is verdict
