"""The map and the contract agree: every top-level module of ``pswd_gateway`` has a layer in the
import-linter contract, and ``docs/architecture.md`` draws the same layers in the same order."""

from __future__ import annotations

import pkgutil
import re
import tomllib
from pathlib import Path
from typing import Any

import pswd_gateway

ROOT = Path(__file__).parents[2]
LAYERS_CONTRACT = "layers flow one way"


def _contracts() -> list[dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts: list[dict[str, Any]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def _contract_layers() -> list[set[str]]:
    """The layers of the contract, top first, each as its module names (optional or not)."""
    (contract,) = (c for c in _contracts() if c["name"] == LAYERS_CONTRACT)
    assert contract["containers"] == ["pswd_gateway"], "layers are named relative to the package"
    return [{name.strip().strip("()") for name in layer.split("|")} for layer in contract["layers"]]


def _doc_layers() -> list[set[str]]:
    """The ``modules`` column of the layer table in docs/architecture.md, row by row."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][2:]  # past the header
    return [set(re.findall(r"`([\w.]+)`", row.split("|")[2])) for row in rows]


def _top_level_modules() -> set[str]:
    return {m.name for m in pkgutil.iter_modules(pswd_gateway.__path__)}


def test_every_top_level_module_has_a_layer_in_the_contract() -> None:
    """A new module or package of pswd_gateway cannot escape the layers (and the contract is
    exhaustive, so lint-imports refuses it too)."""
    (contract,) = (c for c in _contracts() if c["name"] == LAYERS_CONTRACT)
    assert contract["exhaustive"] is True
    declared = set().union(*_contract_layers())
    assert _top_level_modules() - declared == set(), "give the new module a layer in pyproject"
    assert declared - _top_level_modules() == set(), "the contract names a module that is gone"


def test_the_architecture_page_draws_the_contracts_layers_in_order() -> None:
    """docs/architecture.md's layer table lists exactly the contract's layers, top first."""
    assert _doc_layers() == _contract_layers()


def test_the_architecture_page_names_every_contract() -> None:
    """Each contract's rule is stated on the page in bold, by the first words of its name."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    for contract in _contracts():
        if contract["name"] == LAYERS_CONTRACT:
            continue
        stem = re.split(r"[:(]", contract["name"])[0].strip()
        assert f"**{stem}" in text, f"docs/architecture.md does not state {stem!r}"
