"""Dump of every thread's stack and of an event loop's pending tasks, as plain data.

Each entry is a dict: `kind` ("thread" or "task"), `name`, and `stack`, a root-first
list of `(filename, line, function, source_line)`. Threads also carry `ident`,
`native_id`, `daemon` and `current` (the thread that took the dump); tasks carry
`coro` (the coroutine's qualified name) and `state`.

`asyncio.all_tasks(loop)` and coroutine frames belong to the loop's thread, so
`athread_dump()` (awaited on the loop) is the safe way; `thread_dump(loop)` from
another thread hops onto the loop and, if the loop does not answer in time (it is
blocked: the very case one wants a dump for), reads the tasks from outside and
marks them `unsafe`.
"""

from __future__ import annotations

import asyncio
import linecache
import sys
import threading
from collections.abc import Coroutine, Generator
from types import FrameType
from typing import Any

__all__ = ["StackEntry", "athread_dump", "thread_dump", "threads_to_text"]

StackEntry = tuple[str, int, str, str]
"""`(filename, line, function, source_line)` of one frame."""


def _entry(frame: FrameType, lineno: int | None = None) -> StackEntry:
    """One frame as plain data, with its source line for readers on other hosts."""
    code = frame.f_code
    line = (frame.f_lineno if lineno is None else lineno) or 0
    source = linecache.getline(code.co_filename, line, frame.f_globals).strip()
    return (code.co_filename, line, code.co_qualname, source)


def _frame_stack(frame: FrameType | None) -> list[StackEntry]:
    """The root-first stack ending at `frame`."""
    stack = []
    while frame is not None:
        stack.append(_entry(frame))
        frame = frame.f_back
    stack.reverse()
    return stack


def _thread_entries() -> list[dict[str, Any]]:
    """Every thread's name, identity and stack."""
    frames = sys._current_frames()
    by_ident = {t.ident: t for t in threading.enumerate()}
    me = threading.get_ident()
    entries = []
    for ident, frame in sorted(frames.items()):
        thread = by_ident.get(ident)
        entries.append({
            "kind": "thread",
            "name": thread.name if thread else f"<unknown {ident}>",
            "ident": ident,
            "native_id": getattr(thread, "native_id", None),
            "daemon": thread.daemon if thread else None,
            "current": ident == me,
            "stack": _frame_stack(frame),
        })
    del frames  # frames hold locals of every thread
    return entries


def _coroutine_stack(coro: Any) -> list[StackEntry]:
    """Root-first frames of a suspended coroutine and of what it awaits, in turn."""
    # Task.get_stack() stops at the task's own coroutine on 3.11; following
    # cr_await/gi_yieldfrom also shows the awaited inner coroutines.
    stack = []
    seen = 0
    while coro is not None and seen < 1000:
        seen += 1
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) \
            or getattr(coro, "ag_frame", None)
        if frame is None:
            break
        stack.append(_entry(frame))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) \
            or getattr(coro, "ag_await", None)
    return stack


def _coro_name(coro: Any) -> str:
    """A coroutine's qualified name, or its repr for odd awaitables."""
    if isinstance(coro, (Coroutine, Generator)):
        return str(getattr(coro, "__qualname__", repr(coro)))
    return repr(coro)


def _task_entries(loop: asyncio.AbstractEventLoop, unsafe: bool = False) -> list[dict[str, Any]]:
    """The loop's unfinished tasks with their coroutine stacks."""
    entries = []
    for task in asyncio.all_tasks(loop):
        coro = task.get_coro()
        entry: dict[str, Any] = {
            "kind": "task",
            "name": task.get_name(),
            "coro": _coro_name(coro),
            "state": "cancelling" if task.cancelling() else "pending",
            "stack": _coroutine_stack(coro),
        }
        if unsafe:
            entry["unsafe"] = True
        entries.append(entry)
    entries.sort(key=lambda e: e["name"])
    return entries


async def athread_dump() -> list[dict[str, Any]]:
    """Every thread's stack and the running loop's tasks; await it on the loop."""
    return _thread_entries() + _task_entries(asyncio.get_running_loop())


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def thread_dump(
    loop: asyncio.AbstractEventLoop | None = None, *, timeout: float = 1.0
) -> list[dict[str, Any]]:
    """Every thread's stack, plus `loop`'s tasks (or the running loop's); any thread."""
    entries = _thread_entries()
    loop = loop or _running_loop()
    if loop is None or loop.is_closed():
        return entries
    if loop is _running_loop() or not loop.is_running():
        return entries + _task_entries(loop)
    return entries + _task_entries_from_outside(loop, timeout)


def _task_entries_from_outside(
    loop: asyncio.AbstractEventLoop, timeout: float
) -> list[dict[str, Any]]:
    """Collects a running loop's tasks on that loop, or unsafely if it is stuck."""
    done = threading.Event()
    result: list[list[dict[str, Any]]] = []

    def collect() -> None:
        try:
            result.append(_task_entries(loop))
        finally:
            done.set()

    try:
        loop.call_soon_threadsafe(collect)
    except RuntimeError:  # closed meanwhile
        return []
    if done.wait(timeout) and result:
        return result[0]
    try:  # the loop is blocked; its tasks are not changing much either
        return _task_entries(loop, unsafe=True)
    except RuntimeError:
        return []


def _format_stack(stack: list[StackEntry]) -> list[str]:
    """Python traceback style: most recent call last."""
    lines = []
    for filename, line, func, source in stack:
        lines.append(f'  File "{filename}", line {line}, in {func}')
        if source:
            lines.append(f"    {source}")
    return lines


def _header(entry: dict[str, Any]) -> str:
    """One line naming a thread or task."""
    if entry.get("kind") == "task":
        flag = " (read off-loop)" if entry.get("unsafe") else ""
        return f'task "{entry["name"]}" [{entry["state"]}] {entry["coro"]}{flag}:'
    flags = ["daemon"] if entry.get("daemon") else []
    if entry.get("current"):
        flags.append("dumping")
    extra = f" ({', '.join(flags)})" if flags else ""
    return f'thread {entry["ident"]} "{entry["name"]}"{extra}:'


def threads_to_text(dumps_by_machine: dict[str, list[dict[str, Any]] | str]) -> str:
    """Every machine's threads and tasks, grouped by machine, like Go's goroutine dump.

    A machine whose value is a string (say, why it did not answer) is shown as such.
    """
    out: list[str] = []
    for machine, entries in dumps_by_machine.items():
        if isinstance(entries, str):
            out += [f"== {machine}: no dump ==", f"  {entries}", ""]
            continue
        threads = sum(1 for e in entries if e.get("kind") != "task")
        out.append(f"== {machine}: {threads} threads, {len(entries) - threads} tasks ==")
        out.append("")
        for entry in entries:
            out.append(_header(entry))
            out.extend(_format_stack(entry.get("stack", [])))
            out.append("")
    return "\n".join(out)
