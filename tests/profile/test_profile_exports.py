"""The profile package's `__all__` lists are sorted, complete and importable."""

from __future__ import annotations

import importlib

import pytest

import bigmachine.profile

_MODULES = ["cpu", "heap", "threads", "pprof", "flamegraph"]


def test_package_all_is_sorted_and_importable() -> None:
    names = bigmachine.profile.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(bigmachine.profile, name) is not None


@pytest.mark.parametrize("module", _MODULES)
def test_module_all_names_exist_and_public_functions_are_listed(module: str) -> None:
    mod = importlib.import_module(f"bigmachine.profile.{module}")
    for name in mod.__all__:
        assert hasattr(mod, name), name
    own = {
        name for name, value in vars(mod).items()
        if callable(value) and not name.startswith("_")
        and getattr(value, "__module__", None) == mod.__name__
    }
    assert own <= set(mod.__all__), own - set(mod.__all__)
