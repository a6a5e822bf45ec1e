"""A machine's batch script: serve the bootstrap agent on a free port of the allocated node.

``sbatch`` reads the script from its stdin, so it is never a file. The agent's
credentials are: ``bootstrap.json`` in the job's directory (0600, the job's user
alone can read it), opened as the agent's stdin and removed before the agent reads
it, so the file is gone from the shared filesystem as soon as the job starts. The
job's output file tells the driver where the agent is: the script prints the node's
name, the agent ``listening on HOST:PORT``; whenever the agent ends (its machine ended, nobody bootstrapped it
before its credentials expired), the job ends.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

__all__ = ["CREDENTIALS", "OUTPUT", "render", "report"]

CREDENTIALS = "bootstrap.json"
OUTPUT = "job.out"
_NODE = re.compile(r"^bigmachine: node (\S+)$", re.MULTILINE)
_LISTENING = re.compile(r"^listening on (?:\S+):(\d+)$", re.MULTILINE)

_SCRIPT = """\
#!/bin/sh
# bigmachine {version}: machine {machine} of session {session}.
echo "bigmachine: node $SLURMD_NODENAME"
{{ rm -f {credentials}; exec {python} -m bigmachine.systems.agent --listen 0.0.0.0:0 --credentials /dev/stdin; }} \\
  < {credentials}
"""


def render(*, python: str, session: str, machine: str, version: str) -> str:
    """The batch script of one machine's job (run in the job's directory)."""
    return _SCRIPT.format(version=_clean(version), machine=_clean(machine), session=_clean(session),
                          credentials=CREDENTIALS, python=shlex.quote(python))


def report(output: Path) -> tuple[str, int] | None:
    """The node and the agent's port, from the job's output file (None until the agent listens)."""
    try:
        text = output.read_text(errors="replace")
    except FileNotFoundError:
        return None
    node, port = _NODE.search(text), _LISTENING.search(text)
    return (node.group(1), int(port.group(1))) if node and port else None


def _clean(text: str) -> str:
    """Names as they may appear in a comment: nothing a shell could misread."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
