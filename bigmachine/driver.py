"""The driver's command line: ``--bigm.*`` options (or ``BIGMACHINE_*`` variables) -> system -> session.

    parser = argparse.ArgumentParser()
    driver.add_arguments(parser)
    with driver.start(parser.parse_args()) as b:
        ...

Go bigmachine's single-dash spellings (``-bigm.system=ec2``, ``-bigm.ec2type``) are
accepted too, hidden from ``--help`` (docs/porting-from-go.md).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import logging
import os
import signal
import threading
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from . import starting
from .systems.base import System

if TYPE_CHECKING:
    from .session import B

__all__ = ["SYSTEM_OPTIONS", "add_arguments", "make_system", "start"]

logger = logging.getLogger(__name__)

SYSTEMS = ("local", "testing", "ec2", "slurm")
SYSTEM_OPTIONS = {"ec2": ("EC2", "bigmachine.systems.ec2.options"), "slurm": ("Slurm", "bigmachine.systems.slurm.options")}
"""Systems with ``--bigm.<system>.*`` options of their own: name -> (title, module). The module has
``add_arguments(group, env)`` (its options, in a ``--help`` group of their own) and ``from_arguments(args)``."""

DEFAULT_DEBUG = "127.0.0.1:3333"
_DEBUG_OFF = ("none", "off", "")
# Go's flags whose names differ beyond the dash: Go name -> (ours, whether a flag's sense is inverted).
_GO_NAMES = {"-bigm.ec2type": ("--bigm.ec2.instance-type", False), "-bigm.ec2ondemand": ("--bigm.ec2.spot", True)}


def _env(name: str, default: str) -> str:
    return os.environ.get(f"BIGMACHINE_{name.upper().replace('.', '_')}", default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``--bigm.*`` options; each defaults to its ``BIGMACHINE_*`` environment variable."""
    group = parser.add_argument_group("bigmachine", "options of the bigmachine session (or BIGMACHINE_* variables)")
    group.add_argument("--bigm.system", dest="bigm_system", choices=SYSTEMS, default=_env("system", "local"),
                       help="where machines run (BIGMACHINE_SYSTEM; default: %(default)s)")
    group.add_argument("--bigm.debug", dest="bigm_debug", default=_env("debug", DEFAULT_DEBUG), metavar="HOST:PORT",
                       type=_debug_address,
                       help="debug server address; port 0 picks a free port, 'none' turns it off "
                            "(BIGMACHINE_DEBUG; default: %(default)s)")
    group.add_argument("--bigm.debug-allow-host", dest="bigm_debug_allow_host", action="append", default=[],
                       metavar="NAME", help="one more Host name the debug server answers to, beside loopback "
                       "(repeatable; BIGMACHINE_DEBUG_ALLOW_HOST=a,b)")
    group.add_argument("--bigm.name", dest="bigm_name", default=_env("name", "bigmachine"), metavar="NAME",
                       help="session name prefix (BIGMACHINE_NAME; default: %(default)s)")
    _add_go_aliases(group)
    formatter: Any = parser.formatter_class
    if isinstance(formatter, type) and not issubclass(formatter, _CompactUsage):
        parser.formatter_class = cast(Any, type("CompactUsage", (_CompactUsage, formatter), {}))
    for name, (title, _) in SYSTEM_OPTIONS.items():
        module = _system_options(name)
        if module is None:  # its dependencies are missing (boto3 for EC2): its options can't be offered
            continue
        system_group = parser.add_argument_group(f"bigmachine on {title}", f"with --bigm.system={name}")
        module.add_arguments(system_group, _env)
        _add_go_aliases(system_group)


class _CompactUsage(argparse.HelpFormatter):
    """Shows each system's options as one ``[--bigm.ec2.*]`` in the usage line; ``--help`` lists them in their group."""

    def add_usage(self, usage: str | None, actions: Iterable[argparse.Action],
                  groups: Iterable[argparse._MutuallyExclusiveGroup], prefix: str | None = None) -> None:
        kept, folded = [], []
        for action in actions:
            system = next((name for name in SYSTEM_OPTIONS if action.dest.startswith(f"bigm_{name}_")), None)
            if system is None:
                kept.append(action)
            elif system not in folded:
                folded.append(system)
                kept.append(argparse.Action([f"--bigm.{system}.*"], dest=f"bigm_{system}", nargs=0))
        super().add_usage(usage, kept, groups, prefix)


def _system_options(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(SYSTEM_OPTIONS[name][1])
    except ImportError:
        return None


def _debug_address(value: str) -> str:
    """``--bigm.debug``'s value, checked while parsing so a bad one is a usage error, not a traceback."""
    if value.strip().lower() in _DEBUG_OFF:
        return value
    from .web.server import parse_address

    try:
        parse_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; or 'none' for no debug server") from None
    return value


def _add_go_aliases(group: argparse._ArgumentGroup) -> None:
    """Accepts each ``--bigm.x`` option of ``group`` as Go's ``-bigm.x`` too, without showing it in ``--help``."""
    for action in list(group._group_actions):  # argparse keeps a group's actions there; no public accessor
        for option in action.option_strings:
            if not option.startswith("--bigm."):
                continue
            aliases = [(option[1:], False)] + [(go, invert) for go, (ours, invert) in _GO_NAMES.items() if ours == option]
            for alias, invert in aliases:
                if action.nargs == 0:  # a flag; Go's take -flag, -flag=true, -flag=false
                    group.add_argument(alias, dest=action.dest, nargs="?", const=not invert,
                                       type=_go_not if invert else _go_bool,
                                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)
                else:
                    typed: dict[str, Any] = {"type": action.type} if action.type is not None else {}
                    group.add_argument(alias, dest=action.dest, choices=action.choices, default=argparse.SUPPRESS,
                                       help=argparse.SUPPRESS, **typed)


def _go_bool(value: str) -> bool:
    if value.lower() in ("1", "t", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, not {value!r}")


def _go_not(value: str) -> bool:
    return not _go_bool(value)


def make_system(args: argparse.Namespace) -> System:
    """The system the parsed options name."""
    kind = args.bigm_system
    if kind == "local":
        from .systems.local import Local

        return Local()
    if kind == "testing":
        from .systems.testing import Testing

        return Testing()
    module = _system_options(kind)
    try:
        if module is None:
            raise ImportError(SYSTEM_OPTIONS[kind][1])
        system: System = module.from_arguments(args)
    except ImportError as exc:
        raise ValueError(f"--bigm.system={kind} cannot be used here: {exc}; install its dependencies "
                         "(EC2: pip install boto3)") from exc
    return system


def start(args: argparse.Namespace | None = None) -> B:
    """Starts a session from parsed options (or ``sys.argv`` and the environment) and its debug server."""
    if args is None:
        parser = argparse.ArgumentParser(add_help=False)
        add_arguments(parser)
        args, _ = parser.parse_known_args()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        system = make_system(args)
    except ValueError as exc:  # a bad --bigm.* value found only when the system is made
        raise SystemExit(f"bigmachine: error: {exc}") from None
    b = starting.start(system, name=args.bigm_name)
    _exit_on_sigterm()
    try:
        _serve_debug(b, args.bigm_debug, getattr(args, "bigm_debug_allow_host", []))
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
    """The first SIGTERM ends the driver; later ones (supervisors repeat it) must not cut its shutdown short.

    Each call takes its own number with one ``next``, which no other call of the handler can
    interrupt: a signal can run the handler again inside itself, between any two steps.
    """
    received = next(_SIGTERMS)
    if received == 1:
        logger.warning("terminated by %s: shutting machines down", signal.Signals(signum).name)
        raise SystemExit(128 + signum)
    if received == 2:
        logger.warning("%s again: the machines are being shut down (SIGKILL ends the driver at once)",
                       signal.Signals(signum).name)


_SIGTERMS = itertools.count(1)  # the SIGTERMs _raise_exit has received


def _serve_debug(b: B, address: str, allow_hosts: list[str]) -> Any:
    if address.strip().lower() in _DEBUG_OFF:
        return None
    from .web.server import serve_debug

    return serve_debug(b, address, allow_hosts=allow_hosts)
