"""Every runtime dependency in pyproject.toml is used by the proxy: none installed for nothing."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Distributions whose import name is not their project name.
IMPORT_NAMES = {"pyyaml": "yaml"}


def _imported_modules() -> set[str]:
    found: set[str] = set()
    pattern = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)
    for source in (ROOT / "proxy").rglob("*.py"):
        found.update(pattern.findall(source.read_text()))
    return found


def test_every_runtime_dependency_is_imported() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0] for spec in project["dependencies"]]
    assert names
    imported = _imported_modules()
    unused = [
        name
        for name in names
        if IMPORT_NAMES.get(name.lower(), name.lower().replace("-", "_")) not in imported
    ]
    assert unused == []
