"""What a remote machine needs of the driver's code: its ``__main__`` file, its local modules, its packages.

Installed packages travel as a requirements list (``name==version`` as the driver has
them); the driver's own, non-installed code travels as a zip: the ``__main__`` script
and every imported module that lives outside the interpreter's and site-packages'
directories, whole local packages included (submodules imported later work too).
bigmachine itself is never shipped: the host runs its own, at the driver's version.
"""

from __future__ import annotations

import io
import os
import site
import sys
import sysconfig
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Shipment", "collect", "environment", "requirements"]

_MAX_BYTES = 64 << 20
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".venv", "venv", "node_modules", ".tox", ".mypy_cache", ".pytest_cache"}
# Variables that describe the driver's host or hold its credentials: a remote machine gets its own.
_HOST_VARIABLES = {
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "OLDPWD", "TMPDIR", "TEMP", "TMP", "HOSTNAME", "TERM",
    "DISPLAY", "LANG", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "MAIL",
    "SHLVL", "_", "BIGMACHINE_LAUNCH_SPEC",
}
_HOST_PREFIXES = ("LD_", "SSH_", "XDG_", "DBUS_", "LC_", "KRB5", "GPG_", "PYENV_", "CONDA_")


@dataclass(frozen=True)
class Shipment:
    """The driver's code for a machine: a zip, the name of ``__main__`` in it, requirements."""

    archive: bytes = b""
    main: str | None = None
    requirements: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def collect(requirements_: Sequence[str] | None = None) -> Shipment:
    """The shipment for the running driver; ``requirements_`` None means detected from imports."""
    files = dict(_local_files())
    main = _main_file()
    if main is not None:
        files[main.name] = main
    buffer = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, path in sorted(files.items()):
            total += path.stat().st_size
            if total > _MAX_BYTES:
                raise ValueError(f"the driver's local code is over {_MAX_BYTES >> 20} MiB (at {path}); "
                                 "install large dependencies as packages instead")
            zf.write(path, name)
    reqs = list(requirements_) if requirements_ is not None else requirements()
    return Shipment(buffer.getvalue() if files else b"", main.name if main else None, reqs, sorted(files))


def environment(environ: dict[str, str], driver: dict[str, str] | None = None) -> dict[str, str]:
    """A remote machine's environment: the driver's, less its host's and AWS credentials, plus ``environ``."""
    base = dict(os.environ if driver is None else driver)
    kept = {k: v for k, v in base.items()
            if k not in _HOST_VARIABLES and not k.startswith(_HOST_PREFIXES)
            and not (k.startswith("AWS_") and k not in ("AWS_REGION", "AWS_DEFAULT_REGION"))}
    return {**kept, **environ}


def requirements() -> list[str]:
    """``name==version`` of every installed distribution the driver has imported from (bigmachine aside)."""
    from importlib import metadata

    owners = metadata.packages_distributions()
    found: set[str] = set()
    roots = _site_roots()
    for name, module in list(sys.modules.items()):
        path = _file_of(module)
        if path is None or "." in name or not _under(path, roots):
            continue
        for dist in owners.get(name, ()):
            if dist.lower().replace("_", "-") == "bigmachine":
                continue
            try:
                found.add(f"{dist}=={metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                pass
    return sorted(found, key=str.lower)


def _local_files() -> Iterable[tuple[str, Path]]:
    """(archive name, file) of each local module, whole top-level packages at once."""
    excluded = _site_roots() | _stdlib_roots() | {Path(__file__).resolve().parents[1]}  # bigmachine itself
    search = {Path(p).resolve() for p in sys.path if p}
    done: set[Path] = set()
    for name, module in list(sys.modules.items()):
        path = _file_of(module)
        if path is None or name == "__main__" or path.suffix != ".py" or _under(path, excluded):
            continue
        parts = name.split(".")
        depth = len(parts) - 1 + (path.name == "__init__.py")
        if len(path.parents) <= depth:
            continue
        root = path.parents[depth]
        if root not in search or _under(root, excluded):
            continue  # not imported through sys.path: nothing the machine could import either
        top = root / parts[0]
        if top in done:
            continue
        done.add(top)
        if top.is_dir():
            yield from _package_files(top, root)
        else:
            yield path.relative_to(root).as_posix(), path


def _package_files(package: Path, root: Path) -> Iterable[tuple[str, Path]]:
    for directory, dirs, names in os.walk(package):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")]
        for name in names:
            if name.endswith(".py"):
                path = Path(directory, name)
                yield path.relative_to(root).as_posix(), path


def _main_file() -> Path | None:
    main = sys.modules.get("__main__")
    path = _file_of(main)
    if path is None or path.suffix != ".py" or _under(path, _site_roots() | _stdlib_roots()):
        return None  # an interactive session, python -c, or a tool's entry point (pytest)
    return path


def _file_of(module: object) -> Path | None:
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):
        return None
    try:
        return Path(file).resolve()
    except OSError:
        return None


def _under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _site_roots() -> set[Path]:
    paths = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    paths += site.getsitepackages() if hasattr(site, "getsitepackages") else []
    paths.append(site.getusersitepackages())
    return {Path(p).resolve() for p in paths if p}


def _stdlib_roots() -> set[Path]:
    paths = [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")]
    paths += [os.path.join(sys.base_prefix, "lib"), os.path.join(sys.base_exec_prefix, "lib")]
    paths += [p for p in sys.path if p.endswith(".zip")]
    return {Path(p).resolve() for p in paths if p}
