"""A system's ``--bigm.<system>.*`` options from a table, each defaulting to its ``BIGMACHINE_<SYSTEM>_*`` variable.

Every value is checked while it is parsed, so a bad one (on the command line or in the
variable) is a usage error naming the option, not a traceback when the system is made.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Option", "add_options", "keywords"]

Option = tuple[str, str, Callable[[str], Any], str]
"""(option, keyword of the system's class, type, help); the variable is BIGMACHINE_<SYSTEM>_<OPTION>, - as _."""

_KINDS: dict[Any, str] = {int: "an integer", float: "a number"}


def add_options(group: argparse._ArgumentGroup, env: Callable[[str, str], str], system: str,
                options: Sequence[Option]) -> None:
    """Adds ``--bigm.<system>.<option>`` for each of ``options`` to ``group``."""
    for option, keyword, kind, text in options:
        variable = f"{system}.{option.replace('-', '_')}"
        group.add_argument(f"--bigm.{system}.{option}", dest=f"bigm_{system}_{keyword}", default=env(variable, ""),
                           type=_checked(kind), metavar=keyword.split("_")[-1].upper(),
                           help=f"{text} (BIGMACHINE_{system.upper()}_{option.replace('-', '_').upper()})")


def keywords(args: argparse.Namespace, system: str, options: Sequence[Option]) -> dict[str, Any]:
    """The system's keyword arguments the parsed ``args`` set (those left unset are left out)."""
    values = {keyword: getattr(args, f"bigm_{system}_{keyword}", "") for _, keyword, _, _ in options}
    return {keyword: value for keyword, value in values.items() if value not in ("", None)}


def _checked(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """Converts a value while parsing, so a bad one is a usage error; '' (unset) passes."""
    def check(text: str) -> Any:
        try:
            return kind(text) if text else text
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {_KINDS.get(kind, 'valid')}, not {text!r}") from None

    return check
