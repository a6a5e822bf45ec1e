"""Shipped code keeps the file it was defined in, so machines' profiles and tracebacks name real source.

cloudpickle (3.x) pickles code by value (functions and classes of ``__main__``, of a
notebook, of modules registered by value) with ``co_filename`` set to
``"<dynamic-code>"``, so a CPU profile on a machine showed ``<dynamic-code>:21`` for
the hot function (issue 13). ``install()`` makes cloudpickle carry the driver's
filename with the code and put it back when the machine unpickles it; line numbers
already travel with the code. Idempotent; ``wire`` calls it once at import.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import cloudpickle

__all__ = ["install", "rebuild"]


def rebuild(make: Callable[..., types.CodeType], args: tuple[Any, ...], filename: str) -> types.CodeType:
    """cloudpickle's code object, with the filename it had on the driver."""
    return make(*args).replace(co_filename=filename)


def _reduce(code: types.CodeType) -> tuple[Any, ...]:
    make, args = _CLOUDPICKLE_REDUCE(code)
    return rebuild, (make, args, code.co_filename)


_TABLE: dict[type, Any] = cloudpickle.Pickler._dispatch_table
_CLOUDPICKLE_REDUCE = _TABLE[types.CodeType]


def install() -> None:
    """Makes every cloudpickle pickle of code carry its real filename."""
    _TABLE[types.CodeType] = _reduce
