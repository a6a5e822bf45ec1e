"""The library's errors.

Tree::

    Exception
     └── Error                   base; ``err.temporary`` says whether a retry can help
          ├── RemoteError        the remote method raised (when its exception can't be rebuilt)
          ├── MachineStopped     the machine is stopped or died during the call
          │    └── OutOfMemory   ... of memory exhaustion
          ├── Cancelled          the machine or call was cancelled
          ├── NotFound           no such service or method
          ├── SerializationError an argument, result or service can't be (un)pickled
          ├── Unavailable        the machine could not be reached (temporary)
          └── ProtocolError      a malformed request or reply

Timeouts raise the builtin :class:`TimeoutError`. Every error pickles with its
attributes, so it can cross the wire and come back intact.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Cancelled",
    "Error",
    "MachineStopped",
    "NotFound",
    "OutOfMemory",
    "ProtocolError",
    "RemoteError",
    "SerializationError",
    "Unavailable",
]


class Error(Exception):
    """Base of the library's own errors; ``temporary`` is True where a retry can help."""

    temporary: bool = False

    def __init__(self, message: str = "", *, temporary: bool | None = None) -> None:
        super().__init__(message)
        if temporary is not None:
            self.temporary = temporary

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword state (machine, temporary, ...) lives in __dict__; args alone would lose it.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[Error], args: tuple[Any, ...], state: dict[str, Any]) -> Error:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class RemoteError(Error):
    """A remote method raised; carries the machine's address and the remote traceback."""

    def __init__(self, message: str, *, machine: str, remote_traceback: str, exc_type: str) -> None:
        super().__init__(message)
        self.machine = machine
        self.remote_traceback = remote_traceback
        self.exc_type = exc_type

    def __str__(self) -> str:
        return (
            f"{self.exc_type}: {self.args[0]} (raised on {self.machine})\n\n"
            f"Remote traceback:\n{self.remote_traceback}"
        )


class MachineStopped(Error):
    """The machine is stopped, or died during the call; ``__cause__`` is the machine's error."""

    def __init__(self, message: str, *, machine: str) -> None:
        super().__init__(message, temporary=False)
        self.machine = machine


class OutOfMemory(MachineStopped):
    """The machine was killed for lack of memory."""


class Cancelled(Error):
    """The machine or call was cancelled."""


class NotFound(Error):
    """No such service or method on the machine; the message lists what exists."""


class SerializationError(Error):
    """An argument, result or service object can't be pickled or unpickled."""


class Unavailable(Error):
    """The machine could not be reached (connection refused, reset, TLS failure); retry may help."""

    temporary = True


class ProtocolError(Error):
    """A request or reply did not follow the wire protocol."""


for _name in __all__:
    globals()[_name].__module__ = "bigmachine"
