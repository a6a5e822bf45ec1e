"""The fork server: one machine process, started once by ``Local``, that forks each machine already imported.

A machine spends most of its start importing (asyncio, ssl, the RPC server, bigmachine);
forked from here it starts with all of that done. The fork server imports bigmachine's
runtime and nothing of the user's, so a machine still imports the user's modules fresh,
from the files as they are when it starts.

The driver talks over a ``SOCK_SEQPACKET`` Unix socket, one JSON message each way:

- ``{"id", "env"}`` with the machine's stdout, stderr, report pipe, listening socket and
  (when the driver made one) Unix socket passed as fds (``SCM_RIGHTS``): the server forks,
  and answers ``{"id", "pid"}`` with a pidfd of the machine, so the driver signals it
  without a pid race;
- when a machine ends, ``{"exit": pid, "code": code}``: its process group is killed first,
  before it is reaped (its pid, and so its group id, can't be reused while it is a zombie).

The server dies with the driver (``PR_SET_PDEATHSIG``), and its machines with it, the same
way; it exits when the driver closes the socket.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import sys
import traceback
from typing import NoReturn

import uvloop  # noqa: F401  (imported once here, for every machine)

from . import server  # noqa: F401  (likewise: the machine's server and all it imports)
from .process import die_with_parent, run
from .spec import FORK_MESSAGE_MAX, LaunchSpec

__all__ = ["serve"]

_FDS_PER_MACHINE = 5  # stdout, stderr, report pipe, listening socket, and the Unix socket if there is one


def serve(control_fd: int, driver: int) -> NoReturn:
    """Forks machines on request from the driver until it closes ``control_fd``, then exits."""
    die_with_parent(driver)
    control = socket.socket(fileno=control_fd)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    children: dict[int, int] = {}  # pidfd -> pid
    while True:
        for key, _ in selector.select():
            if key.fileobj is control:
                if not _serve_request(control, selector, children):
                    os._exit(0)  # nothing to clean up: skip the interpreter's finalization (part of b.shutdown)
            else:
                _report_exit(control, selector, children, key.fd)


def _serve_request(control: socket.socket, selector: selectors.BaseSelector, children: dict[int, int]) -> bool:
    """Forks the machine one request asks for; False once the driver has closed the socket."""
    try:
        data, fds, flags, _ = socket.recv_fds(control, FORK_MESSAGE_MAX, _FDS_PER_MACHINE)
    except ConnectionResetError:  # the driver died with a request of ours unread: gone all the same
        return False
    if not data:
        return False
    request: dict[str, object] = {}
    try:
        if flags & socket.MSG_TRUNC or len(fds) not in (_FDS_PER_MACHINE - 1, _FDS_PER_MACHINE):
            raise ValueError(f"a malformed request ({len(data)} bytes, {len(fds)} fds)")
        request = json.loads(data)
        pid = os.fork()
        if pid == 0:
            _machine(request["env"], fds)  # type: ignore[arg-type]
        pidfd = os.pidfd_open(pid)
    except Exception as exc:
        _send(control, {"id": request.get("id"), "error": f"{type(exc).__name__}: {exc}"})
        return True
    finally:
        for fd in fds:
            os.close(fd)
    children[pidfd] = pid
    selector.register(pidfd, selectors.EVENT_READ)
    _send(control, {"id": request["id"], "pid": pid}, [pidfd])
    return True


def _report_exit(control: socket.socket, selector: selectors.BaseSelector, children: dict[int, int], pidfd: int) -> None:
    """A machine ended: kill its group (before reaping: see the module docstring), reap it, tell the driver."""
    pid = children.pop(pidfd)
    selector.unregister(pidfd)
    os.close(pidfd)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    _send(control, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _send(control: socket.socket, message: dict[str, object], fds: list[int] | tuple[int, ...] = ()) -> None:
    with contextlib.suppress(OSError):  # the driver is gone: the next read ends the server
        socket.send_fds(control, [json.dumps(message).encode()], list(fds))


def _machine(env: dict[str, str], fds: list[int]) -> None:
    """In the forked child: become the machine a fresh ``python -m bigmachine.runtime`` would be, then run it."""
    code = 1
    try:
        stdout, stderr, report, listen, *unix = fds
        os.setsid()  # a process group of its own, as Popen(start_new_session=True) gives
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        for fd in (report, listen, *unix):
            os.set_inheritable(fd, True)  # as Popen's pass_fds leaves them
        _close_fds_but((0, 1, 2, report, listen, *unix))
        os.environ.clear()
        os.environ.update(env)
        spec = LaunchSpec.from_environment()
        spec.report_fd, spec.listen_fd, spec.unix_fd = report, listen, (unix[0] if unix else None)
        code = _run_as_main(spec)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _run_as_main(spec: LaunchSpec) -> int:
    """Runs the machine; the exit status an uncaught exception or ``sys.exit`` would give a fresh process."""
    try:
        run(spec)
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        logging.shutdown()


def _close_fds_but(keep: tuple[int, ...]) -> None:
    """Closes every other fd inherited from the fork server, as Popen's ``close_fds`` does."""
    low = 0
    for fd in sorted(set(keep)):
        if low < fd:  # closerange(n, n) would close every fd from n on (close_range with an end of -1)
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
