"""Noticing callers that hang up while their calls run, for every connection of a server, on its loop.

A connection's thread is busy running the call, so it cannot see its caller go. Each
connection's socket is registered once, edge-triggered, for the peer's close
(``EPOLLRDHUP``, ``EPOLLHUP``) in an epoll set that the machine's loop watches: ordinary
request bytes never wake anyone, and a call costs no system call.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections.abc import Callable

__all__ = ["HangupWatch"]

logger = logging.getLogger(__name__)

_EVENTS = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR | select.EPOLLET


class HangupWatch:
    """Calls ``on_hangup()`` of a watched socket, on ``loop``, once its peer closes or resets it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll = select.epoll()
        self._watched: dict[int, Callable[[], None]] = {}
        self._closed = False
        loop.add_reader(self._epoll.fileno(), self._on_events)

    def watch(self, fd: int, on_hangup: Callable[[], None]) -> bool:
        """Starts watching ``fd`` (any thread); False once the watch is closed (the server is ending)."""
        if self._closed:
            return False
        self._watched[fd] = on_hangup
        try:
            self._epoll.register(fd, _EVENTS)
        except (OSError, ValueError):  # closed meanwhile
            return False
        return True

    def forget(self, fd: int) -> None:
        """Stops watching ``fd`` (any thread); call before closing it (its number may be reused)."""
        if self._watched.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def _on_events(self) -> None:
        for fd, _ in self._epoll.poll(0):
            on_hangup = self._watched.get(fd)
            if on_hangup is not None:
                try:
                    on_hangup()
                except Exception:
                    logger.exception("noticing a caller's hang-up failed")

    def close(self) -> None:
        """Stops watching (on the loop)."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
