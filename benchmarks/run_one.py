"""Runs one scenario for one backend in this process; `run.py` starts one per pair.

`python -m benchmarks.run_one BACKEND SCENARIO OUT CONFIG_JSON` writes one JSON
line per measurement to OUT, then a line {"leftovers": [...]} naming processes
this one started that outlived the scenario (they are then terminated, so they
cannot skew what runs next). A failure becomes an error measurement.
"""

from __future__ import annotations

import json
import sys
import traceback

from .measure import Measurement, describe, descendants, wait_gone
from .scenarios import SCENARIOS, Config


def main() -> None:
    name, scenario, out_path, config = sys.argv[1:5]
    cfg = Config(**json.loads(config))
    try:
        results = SCENARIOS[scenario].run(name, cfg)
    except BaseException as exc:
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}".strip()[:500]
        results = [Measurement(backend=name, scenario=scenario, metric="(failed)", unit="",
                               error=error)]
    leftovers = wait_gone(descendants(helpers=False), timeout=10)
    names = [describe(p) for p in leftovers]
    for proc in leftovers:
        proc.kill()
    with open(out_path, "w") as f:
        for m in results:
            f.write(json.dumps(m.to_json()) + "\n")
        f.write(json.dumps({"leftovers": names}) + "\n")


if __name__ == "__main__":
    main()
