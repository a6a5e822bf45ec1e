"""The call_ceiling scenario: what bigmachine's way of carrying calls costs, with none of bigmachine's code.

The floor the throughput target is held against, as tls_ceiling is for bulk. Two spawned
servers listen on Unix sockets, as a Local machine does for its driver, and serve each
connection on a thread of its own that reads a request and writes its reply, as a machine
does (`bigmachine/rpc/serving.py`), scheduled as batch work as a machine's threads are.
This process keeps cfg.inflight connections busy from one uvloop loop, as the driver's
`acall` on `b.loop` does, alternating servers. The bytes are those
of bigmachine's `echo(1)`: its HTTP request and reply, encoded by bigmachine's codec, but
nothing parses, pickles or dispatches them. Certificates are ECDSA P-256 from
`bigmachine.tls`, as a session's are.

Two variants:
- "one call per record": each request alone in its TLS record and its write, each reply
  too: what bigmachine does, so no call waits behind another on its connection;
- "4 calls per record": 4 requests written together on a quarter as many connections,
  answered together. What carrying several calls per record (multiplexing) would save,
  at the price of a call waiting behind the others of its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import uvloop

from bigmachine.rpc import calls, codec, sockets, wire
from bigmachine.tls import client_context, server_context

from .harness import Config, measurement
from .measure import Measurement
from .tls_ceiling import HOST, certificates

__all__ = ["call_ceiling"]

_METHOD = "Bench.echo"
_ECHO = calls.encode_call(f"{HOST}:1".encode(), _METHOD, (1,), {}).data
REQUEST = _ECHO if isinstance(_ECHO, bytes) else b"".join(_ECHO)  # small: one buffer
REPLY = codec.encode_response(200, wire.RESULT, b"".join(wire.encode_result(_METHOD, 1)), keep_alive=True)
_BATCHES = {"one call per record": 1, "4 calls per record": 4}
_WARMUP_PER_LANE = 100
_DEADLINE = 120.0  # seconds any one wait may take


def call_ceiling(name: str, cfg: Config) -> list[Measurement]:
    """Calls/s and CPU per call on each side, cfg.inflight in flight on 2 servers, for each variant."""
    out = []
    with certificates() as certs, _servers(certs, 2) as servers:
        for variant, batch in _BATCHES.items():
            runs = [_run(certs, servers, cfg, batch) for _ in range(cfg.repeat + 1)][1:]  # the first warms up
            for metric, unit, better, key in (("calls/s", "calls/s", "higher", "rate"),
                                              ("client CPU per call", "µs", "lower", "client_us"),
                                              ("server CPU per call", "µs", "lower", "server_us")):
                out.append(measurement(name, "call_ceiling", metric, unit, better=better, variant=variant,
                                       values=[r[key] for r in runs],
                                       extra={"inflight": cfg.inflight, "calls_per_record": batch,
                                              "request_bytes": len(REQUEST), "reply_bytes": len(REPLY)}))
    return out


def _run(certs: str, servers: list[tuple[int, multiprocessing.connection.Connection]], cfg: Config,
         batch: int) -> dict[str, float]:
    """One timed round: about cfg.throughput_seconds of calls, with each side's CPU time per call."""
    rounds = max(_WARMUP_PER_LANE, int(cfg.throughput_seconds * 20_000 / cfg.inflight))  # ~the seconds asked at 1 per record
    wall, client_cpu, server_cpu, ncalls = uvloop.run(_drive(certs, servers, cfg.inflight, batch, rounds))
    return {"rate": ncalls / wall, "client_us": client_cpu / ncalls * 1e6, "server_us": server_cpu / ncalls * 1e6}


async def _drive(certs: str, servers: list[tuple[str, multiprocessing.connection.Connection]], inflight: int,
                 batch: int, rounds: int) -> tuple[float, float, float, int]:
    """Connects inflight / batch lanes, warms them, then times `rounds` rounds of batch calls on each:
    the seconds, this process's CPU seconds, the servers' and the number of calls."""
    paths = [path for path, _ in servers]
    loop = asyncio.get_running_loop()
    context = client_context(certs)
    lanes = []
    for i in range(inflight // batch):
        _, lane = await asyncio.wait_for(loop.create_unix_connection(
            lambda: _Lane(REQUEST * batch, len(REPLY) * batch), paths[i % len(paths)],
            ssl=context, server_hostname=HOST), _DEADLINE)
        lanes.append(lane)
    try:
        await asyncio.wait_for(asyncio.gather(*(lane.run(_WARMUP_PER_LANE) for lane in lanes)), _DEADLINE)
        server_cpu = sum(_server_cpu(control) for _, control in servers)  # nothing in flight: blocking is fine
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(lane.run(rounds) for lane in lanes)), _DEADLINE)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        server_cpu = sum(_server_cpu(control) for _, control in servers) - server_cpu
    finally:
        for lane in lanes:
            lane.transport.close()
    return wall, cpu, server_cpu, rounds * batch * len(lanes)


class _Lane(asyncio.Protocol):
    """One connection: writes its requests, waits for all their replies, again."""

    def __init__(self, requests: bytes, replies_size: int) -> None:
        self._requests, self._replies_size = requests, replies_size
        self._received = 0
        self._waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sockets.tune(transport.get_extra_info("socket"))

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        if self._received >= self._replies_size and self._waiter is not None:
            self._received -= self._replies_size
            self._waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc or ConnectionError("the server closed the connection"))

    async def run(self, rounds: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(rounds):
            self._waiter = loop.create_future()
            self.transport.write(self._requests)
            await self._waiter


@contextlib.contextmanager
def _servers(certs: str, n: int) -> Iterator[list[tuple[str, multiprocessing.connection.Connection]]]:
    """n spawned servers, each as (its socket's path, the pipe it reports its CPU time on); closing the pipe ends it."""
    ctx = multiprocessing.get_context("spawn")
    started = []
    try:
        for i in range(n):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(certs, os.path.join(certs, f"calls-{i}.sock"), theirs), daemon=True)
            proc.start()
            theirs.close()
            started.append((proc, ours))
            if not ours.poll(_DEADLINE):
                raise TimeoutError(f"a call server did not listen within {_DEADLINE:g} s")
        yield [(str(control.recv()), control) for _, control in started]
    finally:
        for proc, control in started:
            control.close()
            proc.join(_DEADLINE)
            if proc.is_alive():
                proc.kill()
                proc.join(_DEADLINE)


def _server_cpu(control: multiprocessing.connection.Connection) -> float:
    control.send(None)
    if not control.poll(_DEADLINE):
        raise TimeoutError(f"a call server did not report its CPU time within {_DEADLINE:g} s")
    return float(control.recv())


def _serve(certs: str, path: str, parent: multiprocessing.connection.Connection) -> None:
    """A server: a thread per accepted connection; answers CPU-time queries on parent, ends when it closes."""
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # as bigmachine.runtime.process does
    context = server_context(certs)
    listener = sockets.listen_unix(path)
    parent.send(path)
    threading.Thread(target=_report_cpu, args=(parent,), daemon=True).start()
    while True:
        raw, _ = listener.accept()
        threading.Thread(target=_answer, args=(context, raw), daemon=True).start()


def _report_cpu(parent: multiprocessing.connection.Connection) -> None:
    try:
        while True:
            parent.recv()
            parent.send(time.process_time())
    except (EOFError, OSError):
        os._exit(0)  # the benchmark is done with this server


def _answer(context: ssl.SSLContext, raw: socket.socket) -> None:
    """Reads requests as they come and writes one reply per whole request, together if they came together."""
    sockets.tune(raw)
    with context.wrap_socket(raw, server_side=True) as tls:
        buffer = bytearray(64 * 1024)
        pending = 0
        while n := tls.recv_into(buffer):
            whole, pending = divmod(pending + n, len(REQUEST))
            if whole:
                tls.sendall(REPLY * whole)
