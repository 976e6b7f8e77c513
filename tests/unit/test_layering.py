"""Imports go one way: cli -> client -> (wire schema); daemon -> host/guest adapters -> errors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "banger"

# package (or module) -> banger modules it must never import
FORBIDDEN = {
    "cli": ("banger.daemon", "banger.store"),
    "client.py": ("banger.daemon", "banger.cli", "banger.store"),
    "host": ("banger.daemon", "banger.cli", "banger.client", "banger.store", "banger.guest", "banger.images",
             "banger.kernels", "banger.workspace", "banger.config"),
    "guest": ("banger.daemon", "banger.cli", "banger.client", "banger.store"),
    "store": ("banger.daemon", "banger.cli", "banger.client", "banger.host", "banger.guest"),
    "images": ("banger.daemon", "banger.cli", "banger.client", "banger.store"),
    "kernels": ("banger.daemon", "banger.cli", "banger.client", "banger.store"),
    "workspace": ("banger.daemon", "banger.cli", "banger.client", "banger.store"),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_go_one_way(part: str) -> None:
    files = [SRC / part] if part.endswith(".py") else sorted((SRC / part).rglob("*.py"))
    assert files
    bad = [
        f"{f.relative_to(SRC)} imports {name}"
        for f in files
        for name in _imports(f)
        if any(name == p or name.startswith(p + ".") for p in FORBIDDEN[part])
    ]
    assert not bad, bad
