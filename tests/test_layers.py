"""Imports point downward only: vmledger -> adapters -> projections -> eventstore."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAYERS = ["eventstore", "projections", "adapters", "vmledger"]


def _layer(module: str) -> str:
    """Return the layer a module name belongs to: `vmledger.eventstore.x` is `eventstore`'s, `vmledger.x` vmledger's."""
    parts = module.split(".")
    if parts[0] == "vmledger" and len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return parts[0]


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_layer(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(_layer(node.module))
    return found


def _top_level(path: pathlib.Path) -> set[str]:
    """Return the first component of every module `path` imports by absolute name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _modules() -> list[tuple[str, pathlib.Path]]:
    return [(layer, p) for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))]


@pytest.mark.parametrize("layer,path", _modules(), ids=lambda v: str(v).replace(str(ROOT) + "/", ""))
def test_no_upward_import(layer: str, path: pathlib.Path) -> None:
    """A module imports no package of a layer above its own, nor the top-level names the layers had before `vmledger.`."""
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    assert (sorted(_imports(path) & above), sorted(_top_level(path) & set(LAYERS[:-1]))) == ([], [])


def test_every_layer_has_modules() -> None:
    """Each layer package exists and holds Python modules, so the check above is not vacuous."""
    assert {layer for layer, _ in _modules()} == set(LAYERS)


def _package(path: pathlib.Path) -> str:
    """Return a module's package as installed: the folders eventstore, projections and adapters live under `vmledger.`."""
    parts = path.relative_to(ROOT).parts[:-1]
    return ".".join(parts if parts[0] == "vmledger" else ("vmledger", *parts))


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Return every module `path` imports at module level or inside functions, `from a import b` as `a.b` when `b` is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                folders = name.split(".")
                if folders[0] == "vmledger" and len(folders) > 1 and folders[1] in LAYERS[:-1]:
                    folders = folders[1:]  # the repository keeps these folders at the top
                module = ROOT / pathlib.Path(*folders)
                if module.with_suffix(".py").exists() or (module / "__init__.py").exists():
                    found.add(name)
    return found


def _private_owner(module: str) -> str | None:
    """Return the package whose private module `module` is (or lies in), or None for a public one."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


@pytest.mark.parametrize("layer,path", _modules(), ids=lambda v: str(v).replace(str(ROOT) + "/", ""))
def test_no_import_of_another_package_s_private_module(layer: str, path: pathlib.Path) -> None:
    """A module imports a private (`_x`) module only from its own package or one of its subpackages."""
    own = _package(path)
    foreign = sorted(m for m in _imported_modules(path) if m.split(".")[0] == "vmledger"
                     and (owner := _private_owner(m)) is not None and not (own + ".").startswith(owner + "."))
    assert foreign == []


def test_private_import_check_names_the_owner_of_a_private_module() -> None:
    """The private-import check tells private modules by their owning package, and public ones apart."""
    assert (_private_owner("vmledger.eventstore.backends._x"), _private_owner("vmledger.projections._parts"),
            _private_owner("vmledger.eventstore.backends.common"), _private_owner("vmledger.__main__")) == (
        "vmledger.eventstore.backends", "vmledger.projections", None, None)
