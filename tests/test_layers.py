"""The package layers hold: import-linter's contracts in pyproject.toml, run over the installed ``dlmi``.

A module that imports from a layer above its own (the cycles issue 18 removed: runtime <-> training checkpoint
loading, training <-> evaluation, inference <-> export) or a core module that imports a concrete built-in
plugin fails this test, naming the import chain.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from importlinter.cli import lint_imports

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = REPO_ROOT / "pyproject.toml"


def test_the_import_contracts_hold(capsys) -> None:
    exit_code = lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert exit_code == 0, report
    assert "0 broken" in report


def test_the_architecture_page_lists_the_same_layers() -> None:
    """docs/architecture.md draws the layers the contract checks, in the same order."""
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in config if c["type"] == "layers")
    page = (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    packages = [[name.strip() for name in layer.split("|")] for layer in layers]
    missing = [name for layer in packages for name in layer if f"`{name}`" not in page]
    assert not missing, f"docs/architecture.md does not name the layer packages {missing}"
    positions = [page.find(f"`{layer[0]}`") for layer in packages]
    assert positions == sorted(positions), "docs/architecture.md lists the layers in another order"
