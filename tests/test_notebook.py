"""bigmachine in a real Jupyter kernel (nbclient + ipykernel): classes and functions from cells ship, the rich
views render, and nothing is left running. The executed notebook is rendered by nbconvert and headless
Chromium to tests/artifacts/notebook.png."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.timeout(300)

ARTIFACTS = Path(__file__).parent / "artifacts"

CELLS = [
    "import argparse, os\nimport bigmachine\nfrom bigmachine import driver\nkernel_pid = os.getpid()",
    "class Greeter:\n"
    "    def __init__(self, greeting):\n"
    "        self.greeting = greeting\n\n"
    "    def greet(self, name):\n"
    "        return f'{self.greeting}, {name}, from process {os.getpid()}'\n\n\n"
    "def cube(x):\n"
    "    return x ** 3",
    "parser = argparse.ArgumentParser()\n"
    "driver.add_arguments(parser)\n"
    "b = driver.start(parser.parse_args(['--bigm.system=local', '--bigm.debug=127.0.0.1:0']))\n"
    "machines = b.start(2, bigmachine.Services(Greeter=Greeter('hello')))\n"
    "for m in machines:\n"
    "    m.wait(bigmachine.RUNNING, timeout=120)\n"
    "b",
    "machines[0].call('Greeter.greet', 'notebook')",
    "with b.executor() as executor:\n"
    "    cubes = list(executor.map(cube, range(1000), chunksize=50))\n"
    "sum(cubes)",
    "machines[0]",
    "print(f'{machines[0].state}', [m.info['pid'] for m in machines], kernel_pid)",
    "b.shutdown()\nb",
]

RUN = """
import sys, nbformat
from nbclient import NotebookClient
notebook = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(notebook, timeout=240, kernel_name="python3").execute()
nbformat.write(notebook, sys.argv[2])
"""


def _result(cell: Any) -> dict[str, str]:
    [result] = [o for o in cell.outputs if o.output_type == "execute_result"]
    return dict(result.data)


def _stdout(cell: Any) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def test_a_notebook_session_ships_cell_code_renders_rich_views_and_cleans_up(tmp_path: Path) -> None:
    source, executed = tmp_path / "tour.ipynb", tmp_path / "tour.out.ipynb"
    cells = [nbformat.v4.new_markdown_cell("# bigmachine in Jupyter")] + [nbformat.v4.new_code_cell(c) for c in CELLS]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), source)
    done = subprocess.run([sys.executable, "-c", RUN, str(source), str(executed)], capture_output=True, text=True,
                          timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    notebook = nbformat.read(executed, as_version=4)
    _, _, _, started, greeted, mapped, machine, printed, shut = notebook.cells

    session = _result(started)
    name = re.search(r"<code>(bigmachine-[0-9a-f]{8})</code>", session["text/html"]).group(1)  # type: ignore[union-attr]
    assert session["text/plain"] == f"<B {name} on Local()>"  # __repr__ stays one line
    assert "2 machines, 2 running" in session["text/html"] and session["text/html"].count(">RUNNING<") == 2
    assert re.search(r'<a href="http://127\.0\.0\.1:\d+/debug/bigmachine/status"[^>]*>debug server</a>',
                     session["text/html"])
    assert "hello, notebook, from process" in _result(greeted)["text/plain"]  # a class from a cell, shipped
    assert _result(mapped)["text/plain"] == str(sum(x ** 3 for x in range(1000)))  # a function from a cell
    one = _result(machine)
    assert one["text/plain"].startswith("<Machine https://127.0.0.1:") and one["text/html"].count("<tr>") == 2
    state, *pids = re.findall(r"RUNNING|\d+", _stdout(printed))
    assert state == "RUNNING" and len(pids) == 3
    assert "0 running" in _result(shut)["text/html"] and "shut down" in _result(shut)["text/html"]

    deadline = time.monotonic() + 10  # the kernel and both machines are gone
    while any(psutil.pid_exists(int(pid)) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if psutil.pid_exists(int(pid))]
    _screenshot(executed, tmp_path)


def _screenshot(executed: Path, tmp_path: Path) -> None:
    """nbconvert's HTML of the executed notebook, rendered by headless Chromium with no network but loopback."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("`chromium` is not installed (apt install chromium): the notebook ran, no screenshot taken")
    from nbconvert import HTMLExporter

    page, _ = HTMLExporter().from_filename(str(executed))
    page = re.sub(r'<script[^>]*src="https?://[^"]*"[^>]*>\s*</script>', "", page)  # CDN scripts (MathJax, require)
    html = tmp_path / "tour.html"
    html.write_text(page)
    ARTIFACTS.mkdir(exist_ok=True)
    png = ARTIFACTS / "notebook.png"
    png.unlink(missing_ok=True)
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}",
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--hide-scrollbars",
                    "--window-size=1100,1450", f"--screenshot={png}", html.as_uri()],
                   capture_output=True, timeout=60, check=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_rich_views_show_states_errors_escaped_and_no_machines(testing_session: Any) -> None:
    import bigmachine

    assert "no machines yet" in testing_session._repr_html_()
    [machine] = testing_session.start(1, bigmachine.Services(Noop=object()))
    machine.wait(bigmachine.RUNNING, timeout=30)
    assert ">RUNNING<" in machine._repr_html_() and machine.addr in testing_session._repr_html_()
    machine.stop(bigmachine.Cancelled("<script>alert(1)</script>"))
    view = testing_session._repr_html_()
    assert ">STOPPED<" in view and "<script>" not in view and "&lt;script&gt;alert(1)&lt;/script&gt;" in view
    assert repr(machine) == f"<Machine {machine.addr} STOPPED>"
