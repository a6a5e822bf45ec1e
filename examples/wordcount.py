"""A distributed word count where machines talk to each other.

    python examples/wordcount.py FILE... [--nmach 3]

Every machine runs a Counter service that owns a shard of the words (by hash).
The driver hands each machine a slice of the lines; the machine splits them into
words and sends each word straight to the machine that owns it, dialling it with
its own session (``b.dial``) — the driver is not in that path. Finally the driver
gathers the top words from every shard.
"""

import argparse
import collections
import heapq
import sys
import zlib
from typing import Any

import bigmachine
from bigmachine import driver


class Counter:
    """Counts the words of its shard, and routes other words to their owners."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.peers: list[str] = []

    def init(self, b: Any) -> None:
        self.b = b

    def set_peers(self, peers: list[str]) -> None:
        self.peers = peers

    def add(self, words: dict[str, int]) -> None:
        self.counts.update(words)

    def count_lines(self, lines: list[str]) -> int:
        """Splits lines into words and sends each shard's words to the machine that owns it."""
        shards: list[collections.Counter[str]] = [collections.Counter() for _ in self.peers]
        n = 0
        for line in lines:
            for word in line.lower().split():
                word = word.strip(".,;:!?\"'()[]")
                if word:
                    shards[zlib.crc32(word.encode()) % len(self.peers)][word] += 1
                    n += 1
        futures = [self.b.dial(peer).submit("Counter.add", dict(shard)) for peer, shard in zip(self.peers, shards)]
        for future in futures:
            future.result()
        return n

    def top(self, k: int) -> list[tuple[int, str]]:
        return [(count, word) for word, count in self.counts.most_common(k)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="text files (default: standard input)")
    parser.add_argument("--nmach", type=int, default=3)
    parser.add_argument("--top", type=int, default=10)
    driver.add_arguments(parser)
    args = parser.parse_args()
    if args.nmach < 1 or args.top < 1:
        parser.error("--nmach and --top must be at least 1")
    lines: list[str] = []
    for name in args.files or ["-"]:
        with open(sys.stdin.fileno() if name == "-" else name, closefd=name != "-") as f:
            lines.extend(f)
    with driver.start(args) as b:
        machines = b.start(args.nmach, bigmachine.Services(Counter=Counter()))
        for m in machines:
            m.wait(bigmachine.RUNNING)
        peers = [m.addr for m in machines]
        for m in machines:
            m.call("Counter.set_peers", peers)
        step = max(1, len(lines) // len(machines) + 1)
        futures = [m.submit("Counter.count_lines", lines[i * step:(i + 1) * step]) for i, m in enumerate(machines)]
        words = sum(f.result() for f in futures)
        top = heapq.nlargest(args.top, (pair for m in machines for pair in m.call("Counter.top", args.top)))
    print(f"{words} words")
    for count, word in top:
        print(f"{count:8d} {word}")


if __name__ == "__main__":
    main()
