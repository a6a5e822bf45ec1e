"""Backends behind one interface (`base.Backend`), loaded lazily by name.

Loading is lazy so that a missing package (ray, dask) only fails its own backend.
"""

from __future__ import annotations

import importlib

from .base import Backend, Unsupported

__all__ = ["NAMES", "Backend", "Unsupported", "load"]

#: Backend name -> module defining `BACKEND` (its Backend subclass).
_MODULES = {
    "bigmachine": "bigmachine_backend",
    "ray": "ray_backend",
    "dask": "dask_backend",
    "multiprocessing": "mp_backend",
}
NAMES = list(_MODULES)


def load(name: str) -> Backend:
    """Imports the backend's module (and so its package) and returns a fresh backend."""
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(NAMES)}")
    module = importlib.import_module(f"{__name__}.{_MODULES[name]}")
    return module.BACKEND()
