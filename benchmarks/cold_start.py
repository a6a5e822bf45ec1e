"""One cold start in this fresh process: `python -m benchmarks.cold_start BACKEND T0`.

T0 is the parent's `time.time()` just before it started this process, so the
figures count interpreter start-up too. Prints one JSON line: seconds from T0 to
the backend's package imported (import_s) and to 2 workers ready with one call
answered (ready_s), then the time shutdown took (shutdown_s).
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    name, t0 = sys.argv[1], float(sys.argv[2])
    from benchmarks.backends import load

    backend = load(name)  # imports the backend's package
    imported = time.time() - t0
    try:
        backend.start(2)
        if backend.call(0, "echo", 1) != 1:
            raise AssertionError("echo(1) != 1")
        ready = time.time() - t0
    finally:
        t = time.time()
        backend.shutdown()
        shutdown = time.time() - t
    print(json.dumps({"import_s": imported, "ready_s": ready, "shutdown_s": shutdown}))


if __name__ == "__main__":
    main()
