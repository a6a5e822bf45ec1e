"""The cloud-init user-data of an instance: install Python and bigmachine, run the agent of its machines.

A shell script (cloud-init runs it once, as root, at first boot). It carries the
agent's bootstrap credentials (short-lived, good for serving this one bootstrap; see
``bigmachine.systems.bootstrap``) and nothing else secret. The agent and the machine
run as an unprivileged user; whenever the agent ends — its last machine ended (lease
lapsed, crash, stopped), nobody bootstrapped it in time, or anything here failed —
the script powers the instance off, which terminates it.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

__all__ = ["AGENT_HOME", "render"]

AGENT_HOME = "/var/lib/bigmachine"

_SCRIPT = """\
#!/bin/bash
# bigmachine {version}: machines {machines} of session {session}.
# Installs Python {python} and {package}, then serves the bootstrap agent on port {port}
# for {count} machines, on the ports above it.
# When the agent ends, for whatever reason, the instance powers off (and so terminates).
set -uo pipefail
trap 'shutdown -h now' EXIT
PY=python{python}
if ! command -v "$PY" >/dev/null; then
  if command -v dnf >/dev/null; then dnf install -y -q "$PY" "$PY-pip" || exit 1
  elif command -v apt-get >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$PY" "$PY-venv" || exit 1
  else echo "bigmachine: no $PY and no dnf or apt-get to install it" >&2; exit 1
  fi
fi
id bigmachine >/dev/null 2>&1 || useradd --system --create-home --home-dir {home} bigmachine || exit 1
cd {home} || exit 1
umask 077
cat > bootstrap.json <<'BIGMACHINE_CREDENTIALS'
{credentials}
BIGMACHINE_CREDENTIALS
chown bigmachine bootstrap.json
as_agent() {{ runuser -u bigmachine -- "$@"; }}
as_agent "$PY" -m venv venv || exit 1
as_agent venv/bin/python -m pip install --no-input --disable-pip-version-check -q {package} || exit 1
as_agent venv/bin/python -m bigmachine.systems.agent --listen 0.0.0.0:{port} --machines {count} \\
  --credentials bootstrap.json --workdir work
"""


def render(credentials: dict[str, Any], *, session: str, machines: list[str], port: int, python: str,
           package: str, version: str) -> str:
    """The user-data script for one instance (well under EC2's 16 KiB)."""
    names = _clean(machines[0]) + (f"..{_clean(machines[-1])}" if len(machines) > 1 else "")
    return _SCRIPT.format(version=_clean(version), machines=names, count=len(machines), session=_clean(session),
                          python=_clean(python), port=int(port),
                          package=shlex.quote(package), home=AGENT_HOME,
                          credentials=json.dumps(credentials, separators=(",", ":")))


def _clean(text: str) -> str:
    """Names as they may appear in the script: nothing a shell or a comment could misread."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
