"""Imports point downward only: vmledger -> adapters -> projections -> eventstore."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAYERS = ["eventstore", "projections", "adapters", "vmledger"]


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _modules() -> list[tuple[str, pathlib.Path]]:
    return [(layer, p) for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))]


@pytest.mark.parametrize("layer,path", _modules(), ids=lambda v: str(v).replace(str(ROOT) + "/", ""))
def test_no_upward_import(layer: str, path: pathlib.Path) -> None:
    """A module imports no package of a layer above its own."""
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    assert sorted(_imports(path) & above) == []


def test_every_layer_has_modules() -> None:
    """Each layer package exists and holds Python modules, so the check above is not vacuous."""
    assert {layer for layer, _ in _modules()} == set(LAYERS)
