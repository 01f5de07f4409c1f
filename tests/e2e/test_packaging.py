"""The wheel installs everything under `vmledger.`: no generic top-level package (issue 18)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: The repository's folders and where the wheel puts them.
FOLDERS = {"vmledger": "vmledger", "eventstore": "vmledger/eventstore", "projections": "vmledger/projections",
           "adapters": "vmledger/adapters"}


@pytest.fixture(scope="module")
def names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Return the names of the files in the wheel built from the repository."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                            "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("vmledger-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    return names


def test_the_wheel_holds_every_module_under_vmledger_and_its_type_hints(names: set[str]) -> None:
    """Every module of the four folders and every event schema is in the wheel under `vmledger/`, with `py.typed`, and nothing else is top-level."""
    expected = {f"{FOLDERS[folder]}/{path.relative_to(ROOT / folder).as_posix()}"
                for folder in FOLDERS for path in (ROOT / folder).rglob("*.py")}
    # The JSON Schema of every event type and version, which `vmledger schema` prints (issue 17).
    expected |= {f"vmledger/eventstore/schemas/{path.name}" for path in (ROOT / "eventstore" / "schemas").glob("*.json")}
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert (sorted(expected - names), top, "vmledger/py.typed" in names) == ([], {"vmledger"}, True)


def test_the_wheel_holds_the_consoles_templates_and_static_files(names: set[str]) -> None:
    """Every template and static file of the console (uPlot with its licence too) is in the wheel (issue 15)."""
    console = ROOT / "vmledger" / "console"
    expected = {f"vmledger/console/{p.relative_to(console).as_posix()}" for folder in ("templates", "static")
                for p in (console / folder).iterdir()}
    assert (len(expected) > 20, sorted(expected - names)) == (True, [])
