"""Estimates pi by sampling random points on machines in parallel.

    python examples/bigpi.py -n 100000000 --nmach 2
    python examples/bigpi.py --bigm.system testing --bigm.debug none

Each machine runs the CirclePI service; the driver asks each for its share of the
samples and adds up how many fell inside the circle.
"""

import argparse
import logging
import random

import bigmachine
from bigmachine import driver

log = logging.getLogger("bigpi")


class CirclePI:
    """Counts the random points of the unit square that fall inside the inscribed circle."""

    def sample(self, n: int) -> int:
        r = random.Random()
        return sum(1 for _ in range(n) if (r.random() - 0.5) ** 2 + (r.random() - 0.5) ** 2 < 0.25)


def positive(text: str) -> int:
    """An integer >= 1, else a usage error (not a ZeroDivisionError later)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=positive, default=10**7, help="number of samples (default: %(default)s)")
    parser.add_argument("--nmach", type=positive, default=2, help="number of machines (default: %(default)s)")
    driver.add_arguments(parser)
    args = parser.parse_args()
    with driver.start(args) as b:
        machines = b.start(args.nmach, bigmachine.Services(PI=CirclePI()))
        for m in machines:
            m.wait(bigmachine.RUNNING)
        log.info("all %d machines are running; sampling %d points", len(machines), args.n)
        shares = [args.n // len(machines) + (1 if i < args.n % len(machines) else 0) for i in range(len(machines))]
        futures = [m.submit("PI.sample", share) for m, share in zip(machines, shares)]
        total = sum(f.result() for f in futures)
    print(f"pi = {4 * total / args.n}")


if __name__ == "__main__":
    main()
