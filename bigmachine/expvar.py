"""Published variables of this process, as Go's expvar: JSON values shown on the debug pages."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["publish", "snapshot"]

_vars: dict[str, Any] = {}
_lock = threading.Lock()


def publish(name: str, value_or_callable: Any | Callable[[], Any]) -> None:
    """Publishes a JSON-serializable value, or a zero-argument callable returning one."""
    if not callable(value_or_callable):
        json.dumps(value_or_callable)  # fail here, not on the status page
    with _lock:
        _vars[name] = value_or_callable


def _memstats() -> dict[str, Any]:
    import gc

    import psutil

    info = psutil.Process().memory_info()
    return {"rss": info.rss, "vms": info.vms, "gc_counts": list(gc.get_count()), "gc_objects": len(gc.get_objects())}


def snapshot() -> dict[str, Any]:
    """Every variable's current value; a callable that fails shows its error instead."""
    values: dict[str, Any] = {"cmdline": sys.argv, "pid": os.getpid(), "memstats": _memstats}
    with _lock:
        values.update(_vars)
    out = {}
    for name, value in values.items():
        try:
            out[name] = value() if callable(value) else value
        except Exception as exc:
            out[name] = f"error: {exc!r}"
    return out
