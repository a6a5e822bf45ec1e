"""Parameters of ``b.start``: the services to install and the environment to set."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Environ", "Param", "Services", "merge_params"]


class Param:
    """Base of ``b.start`` parameters."""


class Services(Param):
    """Service name -> service object; each object is shipped to the machine with cloudpickle."""

    def __init__(self, mapping: Mapping[str, Any] | None = None, /, **services: Any) -> None:
        self.services: dict[str, Any] = {**(mapping or {}), **services}
        for name in self.services:
            if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
                raise ValueError(
                    f"service name {name!r} is not valid: use a public Python identifier, e.g. 'Store'"
                )
            if name == "Supervisor":
                raise ValueError("service name 'Supervisor' is reserved for the built-in supervisor")

    def __repr__(self) -> str:
        return f"Services({', '.join(self.services)})"


class Environ(Param):
    """Environment for the machine's process, on top of the driver's (later entries win)."""

    def __init__(self, mapping_or_list: Mapping[str, str] | Iterable[str]) -> None:
        if isinstance(mapping_or_list, Mapping):
            self.environ = {str(k): str(v) for k, v in mapping_or_list.items()}
        else:
            self.environ = {}
            for entry in mapping_or_list:
                key, sep, value = str(entry).partition("=")
                if not sep or not key:
                    raise ValueError(f"environment entry {entry!r} is not of the form KEY=value")
                self.environ[key] = value

    def __repr__(self) -> str:
        return f"Environ({sorted(self.environ)})"


def merge_params(params: Iterable[Param]) -> tuple[dict[str, Any], dict[str, str]]:
    """Merges ``Services`` and ``Environ`` params; duplicate service names are an error."""
    services: dict[str, Any] = {}
    environ: dict[str, str] = {}
    for param in params:
        if isinstance(param, Services):
            for name, obj in param.services.items():
                if name in services:
                    raise ValueError(f"service {name!r} is given twice; give each service a unique name")
                services[name] = obj
        elif isinstance(param, Environ):
            environ.update(param.environ)
        else:
            raise TypeError(f"b.start takes Services and Environ params, not {type(param).__name__}")
    return services, environ


Services.__module__ = Environ.__module__ = "bigmachine"
