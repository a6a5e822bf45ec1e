"""docs/api.md names every public name, and README links it (not a file outside the repository)."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest

import bigmachine
import bigmachine.errors
import bigmachine.executor
import bigmachine.expvar
import bigmachine.systems
from bigmachine import driver

ROOT = Path(__file__).parent.parent
MODULES = [bigmachine, bigmachine.errors, bigmachine.systems, driver, bigmachine.expvar, bigmachine.executor]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_public_name_is_in_the_api_reference(module: ModuleType) -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    named = set(re.findall(r"`(?:[\w.]+\.)?(\w+)[(`\[ ]", text))  # `Name`, `mod.Name(...)`, `b.name ...`
    missing = [name for name in module.__all__ if name not in named]
    assert not missing, f"docs/api.md does not name {missing} of {module.__name__}.__all__"


def test_readme_links_docs_inside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/api.md" in readme and "docs/porting-from-go.md" in readme
    assert "shared/" not in readme
    for link in re.findall(r"\]\(((?:docs/)[^)#]+)", readme):
        assert (ROOT / link).is_file(), link
