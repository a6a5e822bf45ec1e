"""Starting a fork server's process (bigmachine/runtime/forks.py), which needs no event loop.

``bigmachine.start`` has ``Local`` start one before the session imports its modules, so the
server boots while the driver does (``Local.prepare``); a session's loop then serves it
(forkserver.py). Without asyncio here, ``Local`` is importable without it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

__all__ = ["ForkServerProcess", "server_environment", "start_key"]

_STARTUP_PREFIXES = ("PYTHON", "LD_", "MALLOC_", "GLIBC_")  # read once, when an interpreter starts


def start_key(env: dict[str, str], cwd: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """What a new process takes from its start: machines forked from a server with another key would differ."""
    return cwd, tuple(sorted((k, v) for k, v in env.items() if k.startswith(_STARTUP_PREFIXES)))


def server_environment() -> dict[str, str]:
    """The environment of a fork server: the driver's, as it is when the server starts."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


class ForkServerProcess:
    """A fork server's process, started with ``env`` and the driver's directory, and our end of its socket.

    It dies with the thread that starts it (``PR_SET_PDEATHSIG``), and its machines with it: start
    it on the session's loop thread, or on the main thread, which lives as long as the process.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.key = start_key(env, os.getcwd())
        self.socket, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bigmachine.runtime", "--fork-server", str(theirs.fileno()), str(os.getpid())],
                env=env, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, start_new_session=True,
            )
        except BaseException:
            self.socket.close()
            raise
        finally:
            theirs.close()

    def discard(self) -> None:
        """Ends a server no session will use (it has forked nothing): kills and reaps it, closes the socket."""
        self.process.kill()
        self.process.wait()
        self.socket.close()
