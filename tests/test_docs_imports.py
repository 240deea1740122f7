"""Every `from <our package> import <names>` shown in the README and docs/ names something that exists.

The documentation outlived a move of modules once (issue 9): snippets that a reader copies must follow the code.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("broker", "adapters", "consent", "schemas", "examples")
IMPORT = re.compile(rf"^\s*from ((?:{'|'.join(OURS)})[\w.]*) import ([\w, ]+)$", re.MULTILINE)


def documented_imports() -> list[tuple[str, str, str]]:
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for module, names in IMPORT.findall(doc.read_text()):
            found += [(doc.name, module, name.strip()) for name in names.split(",") if name.strip()]
    return found


def test_the_docs_show_imports() -> None:
    assert len(documented_imports()) >= 5  # the pattern still finds the snippets


@pytest.mark.parametrize(("doc", "module", "name"), documented_imports())
def test_a_documented_import_exists(doc: str, module: str, name: str) -> None:
    assert hasattr(importlib.import_module(module), name), f"{doc}: {module} has no {name}"
