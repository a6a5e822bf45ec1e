"""The driver's command line: ``--bigm.*`` options (or ``BIGMACHINE_*`` variables) -> system -> session.

    parser = argparse.ArgumentParser()
    driver.add_arguments(parser)
    with driver.start(parser.parse_args()) as b:
        ...
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from typing import Any

from .session import B
from .systems.base import System

__all__ = ["add_arguments", "make_system", "start"]

logger = logging.getLogger(__name__)

SYSTEMS = ("local", "testing", "ec2", "slurm")
DEFAULT_DEBUG = "127.0.0.1:3333"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"BIGMACHINE_{name.upper().replace('.', '_')}", default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``--bigm.*`` options; each defaults to its ``BIGMACHINE_*`` environment variable."""
    group = parser.add_argument_group("bigmachine", "options of the bigmachine session (or BIGMACHINE_* variables)")
    group.add_argument("--bigm.system", dest="bigm_system", choices=SYSTEMS, default=_env("system", "local"),
                       help="where machines run (BIGMACHINE_SYSTEM; default: %(default)s)")
    group.add_argument("--bigm.debug", dest="bigm_debug", default=_env("debug", DEFAULT_DEBUG), metavar="HOST:PORT",
                       help="debug server address; port 0 picks a free port, 'none' turns it off "
                            "(BIGMACHINE_DEBUG; default: %(default)s)")
    group.add_argument("--bigm.name", dest="bigm_name", default=_env("name", "bigmachine"),
                       help="session name prefix (BIGMACHINE_NAME; default: %(default)s)")
    from .systems.slurm import options as slurm

    slurm.add_arguments(group, _env)
    try:
        from .systems import ec2
    except ImportError:  # boto3 missing: the EC2 options can't be offered
        return
    ec2.add_arguments(group, _env)


def make_system(args: argparse.Namespace) -> System:
    """The system the parsed options name."""
    from .systems import Local, Testing

    kind = args.bigm_system
    if kind == "local":
        return Local()
    if kind == "testing":
        return Testing()
    if kind == "slurm":
        from .systems.slurm import options as slurm

        return slurm.from_arguments(args)
    from .systems import ec2

    return ec2.from_arguments(args)


def start(args: argparse.Namespace | None = None) -> B:
    """Starts a session from parsed options (or ``sys.argv`` and the environment) and its debug server."""
    if args is None:
        parser = argparse.ArgumentParser(add_help=False)
        add_arguments(parser)
        args, _ = parser.parse_known_args()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    b = B(make_system(args), name=args.bigm_name)
    _exit_on_sigterm()
    try:
        _serve_debug(b, args.bigm_debug)
    except BaseException:
        b.shutdown()
        raise
    return b


def _exit_on_sigterm() -> None:
    """Makes SIGTERM end the driver as Ctrl-C does, so ``with``/``finally`` shut machines down cleanly."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum: int, frame: Any) -> None:
    logger.warning("terminated by %s: shutting machines down", signal.Signals(signum).name)
    raise SystemExit(128 + signum)


def _serve_debug(b: B, address: str) -> Any:
    if address.lower() in ("none", "off", ""):
        return None
    from .web.server import serve_debug

    return serve_debug(b, address)
