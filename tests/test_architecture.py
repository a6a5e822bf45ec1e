"""The layers hold (docs/architecture.md): no import circle, and no layer imports one above it.

Imports are read from the source (AST). Imports under ``if TYPE_CHECKING:`` are left out: they
never run. Imports inside functions are real (they run on first use) and count, except the
few *feature hooks* listed below, where a lower layer deliberately loads an optional feature
on first use so that a machine never imports it (the debug server's Starlette and jinja2,
say): each is named with its reason, and anything else that imports upwards fails.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bigmachine"

# Deferred imports of an optional feature from below it, as (importer, imported): the only upward edges.
FEATURE_HOOKS = {
    ("bigmachine.session", "bigmachine.web.app"): "B.debug_app(): machines never load Starlette or jinja2",
    ("bigmachine.session", "bigmachine.executor"): "B.executor(): the Executor is built on sessions",
    ("bigmachine.session", "bigmachine.notebook"): "B._repr_html_(): Jupyter's view, loaded by Jupyter only",
    ("bigmachine.machine", "bigmachine.notebook"): "Machine._repr_html_(): likewise",
}

# Package prefixes that may not import the ones listed (deferred imports included).
LAYERS = {
    "bigmachine.rpc": ("bigmachine.machine", "bigmachine.session", "bigmachine.systems", "bigmachine.web",
                       "bigmachine.runtime", "bigmachine.metrics", "bigmachine.executor", "bigmachine.driver"),
    "bigmachine.runtime": ("bigmachine.systems", "bigmachine.web", "bigmachine.driver", "bigmachine.executor"),
    "bigmachine.systems": ("bigmachine.web", "bigmachine.driver", "bigmachine.executor"),
    "bigmachine.profile": ("bigmachine.machine", "bigmachine.session", "bigmachine.systems", "bigmachine.web",
                           "bigmachine.runtime", "bigmachine.rpc"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[tuple[str, bool]]:
    """``(imported module, deferred)`` for each bigmachine import that runs, type-only ones left out."""
    is_package = path.name == "__init__.py"
    found: set[tuple[str, bool]] = set()

    def target(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join([*base, *([node.module] if node.module else [])])

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.update((a.name, inner) for a in child.names if a.name.startswith("bigmachine"))
            elif isinstance(child, ast.ImportFrom):
                module = target(child)
                if module.startswith("bigmachine"):
                    for alias in child.names:
                        full = f"{module}.{alias.name}"
                        found.add((full if full in known else module, inner))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return {(m, d) for m, d in found if m in known and m != name}


def _graph(include_deferred: bool) -> dict[str, set[str]]:
    known = _modules()
    graph = {}
    for name, path in known.items():
        graph[name] = {m for m, deferred in _imports(name, path, known)
                       if not deferred or (include_deferred and (name, m) not in FEATURE_HOOKS)}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _importers_of_package(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {name: {m for m in deps if m == "bigmachine"} for name, deps in graph.items()}


def test_no_import_circle() -> None:
    """Neither at import time nor on first use (feature hooks aside) does a module import itself back."""
    graph = _graph(include_deferred=True)
    # The package's __init__ re-exports everything: a module importing ``bigmachine`` itself would close a
    # circle through it, and none needs to.
    assert not {n: d for n, d in _importers_of_package(graph).items() if d and n not in ("bigmachine", "bigmachine.__main__")}
    graph["bigmachine"] = set()  # re-exports only: what it imports is what everyone else may import
    assert _cycles(graph) == []


def test_no_layer_imports_one_above_it() -> None:
    graph = _graph(include_deferred=True)
    broken = []
    for name, deps in sorted(graph.items()):
        for layer, forbidden in LAYERS.items():
            if name == layer or name.startswith(layer + "."):
                broken += [f"{name} imports {m}" for m in sorted(deps) if m.startswith(forbidden)]
    assert broken == []


def test_rpc_imports_only_itself_and_the_error_tree() -> None:
    graph = _graph(include_deferred=True)
    outside = {f"{name} imports {m}" for name, deps in graph.items() if name.startswith("bigmachine.rpc")
               for m in deps if not m.startswith("bigmachine.rpc") and m != "bigmachine.errors"}
    assert outside == set()


def test_the_checker_sees_circles_and_deferred_imports() -> None:
    """The checker itself: a circle through a deferred import is found; a type-only import is not an edge."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    known = _modules()
    session = _imports("bigmachine.session", known["bigmachine.session"], known)
    assert ("bigmachine.web.app", True) in session  # debug_app's deferred import is seen (then excused)
    system = _imports("bigmachine.systems.base", known["bigmachine.systems.base"], known)
    assert not any(m == "bigmachine.session" for m, _ in system)  # TYPE_CHECKING only


# The web layer reads a session through one typed view (bigmachine/web/cluster.py, ``SessionView``).
SESSION_VIEW = PACKAGE / "web" / "cluster.py"
HAND_ON_TO = {"SessionView", "create_app"}  # what may be given a session: the view, and the app that builds one


def _session_uses(source: str) -> list[str]:
    """Each use of a parameter typed ``B`` other than handing it on to the view (``HAND_ON_TO``)."""
    found = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        args = function.args
        sessions = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]
                    if a.annotation is not None and ast.unparse(a.annotation).split(".")[-1].strip("'\"") == "B"}
        handed_on = {id(arg) for call in ast.walk(function)
                     if isinstance(call, ast.Call) and ast.unparse(call.func) in HAND_ON_TO for arg in call.args}
        found += [f"{function.name}, line {node.lineno}" for node in ast.walk(function)
                  if isinstance(node, ast.Name) and node.id in sessions and id(node) not in handed_on]
    return found


def test_the_web_layer_reads_sessions_only_through_its_view() -> None:
    """No web module but cluster.py touches a ``B``: the others hand it to ``SessionView`` and read that."""
    uses = {f"{path.name}: {use}" for path in (PACKAGE / "web").glob("*.py") if path != SESSION_VIEW
            for use in _session_uses(path.read_text())}
    assert uses == set()


def test_the_session_checker_sees_a_session_read() -> None:
    source = ("def page(b: B, view: SessionView) -> str:\n    return b.name\n"
              "def app(b: 'B') -> None:\n    keep(b)\n    SessionView(b)\n"
              "def serve(b: session.B) -> None:\n    create_app(b)\n")
    assert _session_uses(source) == ["page, line 2", "app, line 4"]


_STATE_NAME_COMPARED = re.compile(r"""(==|!=|\bin)\s*[(\[{]?\s*['"](UNSTARTED|STARTING|RUNNING|STOPPED)['"]""")


def test_views_compare_machine_states_as_states_not_names() -> None:
    """The debug pages, their templates and the notebook compare ``State`` values (Slurm's job states are its own)."""
    views = [*(PACKAGE / "web").rglob("*.py"), *(PACKAGE / "web" / "templates").glob("*.html"), PACKAGE / "notebook.py"]
    compared = [f"{path.name}: {match.group(0)}" for path in views
                for match in _STATE_NAME_COMPARED.finditer(path.read_text())]
    assert compared == []
    assert _STATE_NAME_COMPARED.search("{% if m.state != 'RUNNING' %}") and _STATE_NAME_COMPARED.search(
        'if m.state.name in ("UNSTARTED", "STARTING"):')
