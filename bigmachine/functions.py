"""The built-in ``Functions`` service: runs plain functions shipped by ``bigmachine.Executor``.

Every machine serves it beside the supervisor, so an Executor runs on any machine of a
session, whatever services it was started with. The function and its arguments arrive
pickled with cloudpickle (a function defined in ``__main__`` or a notebook cell travels
by value); its exception reaches the caller with its type and remote traceback.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["SERVICE", "Functions"]

SERVICE = "Functions"
"""The name the service is registered under on every machine."""


class Functions:
    """Runs shipped functions; plain methods, so each call runs in the machine's service threads."""

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``fn(*args, **kwargs)``; keyword arguments travel as a dict so none clashes with ``timeout``."""
        return _awaited(fn(*args, **kwargs))

    def run_chunk(self, fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
        """``[fn(*args) for args in chunk]``: one call for ``chunksize`` items of an ``Executor.map``."""
        return [_awaited(fn(*args)) for args in chunk]


def _awaited(result: Any) -> Any:
    """An ``async def`` function's result: its coroutine run to the end in this (service) thread's own loop."""
    return asyncio.run(result) if inspect.iscoroutine(result) else result
