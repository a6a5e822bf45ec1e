"""Noticing callers that hang up while their calls run, for every connection of a server, in one thread.

A connection's thread is busy running the call, so it cannot see its caller go. Each
connection's socket is registered once, edge-triggered, for the peer's close (``EPOLLRDHUP``,
``EPOLLHUP``): ordinary request bytes never wake this thread, and a call costs no system call.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable

__all__ = ["HangupWatch"]

logger = logging.getLogger(__name__)

_EVENTS = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR | select.EPOLLET


class HangupWatch:
    """Calls ``on_hangup()`` of a watched socket once its peer closes or resets it."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._wake_read, self._wake_write = os.pipe()
        self._epoll.register(self._wake_read, select.EPOLLIN)
        self._watched: dict[int, Callable[[], None]] = {}
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bigmachine-hangups", daemon=True)
        self._thread.start()

    def watch(self, fd: int, on_hangup: Callable[[], None]) -> bool:
        """Starts watching ``fd``; False once the watch is closed (the server is ending)."""
        with self._lock:
            if self._closed:
                return False
            self._watched[fd] = on_hangup
            self._epoll.register(fd, _EVENTS)
            return True

    def forget(self, fd: int) -> None:
        """Stops watching ``fd``; call before closing it (its number may be reused)."""
        with self._lock:
            if self._watched.pop(fd, None) is not None and not self._closed:
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass

    def _run(self) -> None:
        while not self._closed:
            try:
                events = self._epoll.poll()
            except InterruptedError:
                continue
            except (OSError, ValueError):  # closed under us
                return
            for fd, _ in events:
                on_hangup = self._watched.get(fd)
                if on_hangup is not None:
                    try:
                        on_hangup()
                    except Exception:
                        logger.exception("noticing a caller's hang-up failed")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.write(self._wake_write, b"x")
        self._thread.join(1.0)
        with self._lock:
            self._epoll.close()
            os.close(self._wake_read)
            os.close(self._wake_write)
