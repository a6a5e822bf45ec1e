"""The wire never goes out of step (issue 9): names are checked before sending, stray bytes close a connection.

Before: a method name holding CR LF was written raw into the request line, and the pooled
connection then handed every later call the previous call's result. A Unicode service or
method name was accepted, then refused by the server with HTTP 400.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services import Calc

import bigmachine
from bigmachine import RUNNING, tls
from bigmachine.rpc import calls as calling
from bigmachine.rpc import wire
from bigmachine.rpc.client import AsyncPool, SyncPool
from bigmachine.systems import Testing

pytestmark = pytest.mark.timeout(120)

MALFORMED = [
    "Calc.add\r\nX: y", "Calc.add HTTP/1.1\r\n\r\nPOST /rpc/Calc.add", "Calc.a dd", "Calc/add", "Calc.add?x=1",
    "Calc.add#x", "Calc.%61dd", "Calc.add\x00", "Calc.", ".add", "", ".", "Calc.add.more", "Calc..add",
    "1Calc.add", "Calc.1add", "add", "Calc.add\n", "Calc.ad-d", 5, None, b"Calc.add", ("Calc", "add"),
]


@pytest.fixture
def calc(testing_session: bigmachine.B) -> bigmachine.Machine:
    (m,) = testing_session.start(1, bigmachine.Services({"Calc": Calc(), "Über": Calc()}))
    assert m.wait(RUNNING, timeout=10) == RUNNING
    return m


@pytest.fixture
def calm_calc() -> Iterator[bigmachine.Machine]:
    """For load tests: keepalive bounds far from the load, so only the wire is under test (not liveness)."""
    with bigmachine.start(Testing(keepalive_period=0.5, keepalive_timeout=30, keepalive_rpc_timeout=15)) as b:
        (m,) = b.start(1, bigmachine.Services(Calc=Calc()))
        assert m.wait(RUNNING, timeout=10) == RUNNING
        yield m


def through(m: bigmachine.Machine, twin: str, method: Any, *args: Any) -> Any:
    if twin == "call":
        return m.call(method, *args, timeout=10)
    if twin == "submit":
        return m.submit(method, *args, timeout=10).result(10)
    return asyncio.run(m.acall(method, *args, timeout=10))


@pytest.mark.parametrize("twin", ["call", "submit", "acall"])
def test_malformed_names_are_refused_before_sending_and_later_calls_get_their_own_results(
        calc: bigmachine.Machine, twin: str) -> None:
    for name in MALFORMED:
        with pytest.raises(ValueError, match="Python identifiers") as info:
            through(calc, twin, name, 1, 2)
        assert repr(name) in str(info.value)  # names what was wrong
    served = calc.call("Supervisor.stats", timeout=10)
    assert set(served) <= {"Supervisor.register", "Supervisor.keepalive", "Supervisor.stats"}, served  # none sent
    rng = random.Random(9)
    pairs = [(rng.randrange(10**6), rng.randrange(10**6)) for _ in range(100)]

    async def mixed() -> list[int]:
        results = []
        for i, (a, b) in enumerate(pairs):
            if i % 3 == 0:
                results.append(calc.call("Calc.add", a, b, timeout=10))
            elif i % 3 == 1:
                results.append(await calc.acall("Calc.aadd", a, b, timeout=10))
            else:
                results.append(calc.submit("Calc.add", a, b, timeout=10).result(10))
        return results

    assert asyncio.run(mixed()) == [a + b for a, b in pairs]


def test_unicode_service_and_method_names_work(calc: bigmachine.Machine) -> None:
    assert calc.call("Über.añadir", 2, 3, timeout=10) == 5
    assert asyncio.run(calc.acall("Über.añadir", 4, 5, timeout=10)) == 9
    assert calc.submit("Calc.añadir", 6, 7).result(10) == 13
    assert "Über.añadir" in calc.call("Supervisor.stats", timeout=10)


def test_services_refuse_a_name_that_is_not_a_public_identifier() -> None:
    """Checked when ``Services`` is made, before anything is pickled or launched."""
    bigmachine.Services({"Über": Calc()})
    for bad in ["", "a.b", "a b", "1a", "a\r\n", "a/b", "_private", None, 3]:
        with pytest.raises(ValueError, match="is not valid: use a public Python identifier") as info:
            bigmachine.Services({bad: Calc()})
        assert repr(bad) in str(info.value)


# ------------------------------------------------------------------ a server that answers out of turn


class LyingServer:
    """A TLS server that answers every request twice: the second answer is unexpected bytes."""

    def __init__(self, directory: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(directory / tls.CERT_FILE, directory / tls.KEY_FILE)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, name="lying-server")
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn = self.context.wrap_socket(raw, server_side=True)
            self.clients.append(conn)
            threading.Thread(target=self._answer, args=(conn, self.accepted), name="lying-server-conn").start()

    def _answer(self, conn: socket.socket, n: int) -> None:
        buffer = b""
        try:
            while data := conn.recv(65536):
                buffer += data
                while b"\r\n\r\n" in buffer:
                    head, _, rest = buffer.partition(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    if len(rest) < length:
                        break
                    buffer = rest[length:]
                    conn.sendall(reply(wire.dumps(n)))
                    time.sleep(0.05)  # the client has its answer: this one finds the connection idle
                    conn.sendall(reply(wire.dumps(-1)))  # one answer too many
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        except OSError:
            pass
        self.sock.close()
        for conn in self.clients:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join()


def reply(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + wire.RESULT + b"\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


@pytest.fixture
def lying(tmp_path: Path) -> Iterator[tuple[LyingServer, ssl.SSLContext]]:
    authority = tls.Authority("lying")
    server = LyingServer(authority.issue(["127.0.0.1"], common_name="server").write(tmp_path / "server"))
    client = tls.client_context(authority.issue(["127.0.0.1"], common_name="client").write(tmp_path / "client"))
    try:
        yield server, client
    finally:
        server.close()
        for thread in threading.enumerate():
            if thread.name == "lying-server-conn":
                thread.join(5)


def request() -> bytes:
    return calling.encode_call(b"127.0.0.1", "Calc.add", (1, 2), {}).data  # type: ignore[return-value]


def test_sync_connection_with_unexpected_bytes_is_closed_never_reused(
        lying: tuple[LyingServer, ssl.SSLContext]) -> None:
    server, context = lying
    pool = SyncPool("127.0.0.1", server.port, context, "127.0.0.1")
    try:
        answers = []
        for _ in range(3):
            conn = pool.clean_connection(calling.deadline_after(5))
            answers.append(wire.loads(conn.request(request(), calling.deadline_after(5)).body))
            pool.release(conn)
            for _ in range(50):  # let the second answer arrive on the idle connection
                if conn.broken or conn.sock.pending() or conn._poll.poll(10):
                    break
        assert answers == [1, 2, 3]  # each call its own connection's first answer: never the stray -1
        assert server.accepted == 3
    finally:
        pool.close(ConnectionAbortedError("test over"))


def test_async_connection_with_unexpected_bytes_is_closed_never_reused(
        lying: tuple[LyingServer, ssl.SSLContext]) -> None:
    server, context = lying

    async def main() -> list[Any]:
        pool = AsyncPool("127.0.0.1", server.port, context, "127.0.0.1")
        answers = []
        try:
            for _ in range(3):
                response, conn = await pool.request(request())
                answers.append(wire.loads(response.body))
                for _ in range(100):
                    if conn.lost is not None:
                        break
                    await asyncio.sleep(0.01)
                assert conn.lost is not None
        finally:
            pool.close(ConnectionAbortedError("test over"))
            await asyncio.sleep(0.05)
        return answers

    assert asyncio.run(main()) == [1, 2, 3]
    assert server.accepted == 3


# ------------------------------------------------------------------ results over the whole-message cap


@pytest.mark.parametrize("twin", ["call", "submit", "acall"])
def test_result_over_the_cap_is_refused_on_the_machine_with_advice_to_stream(
        calc: bigmachine.Machine, monkeypatch: pytest.MonkeyPatch, twin: str) -> None:
    monkeypatch.setattr(wire, "MAX_REQUEST", 1 << 20)  # Testing machines run in this process: the cap is theirs too
    with pytest.raises(bigmachine.SerializationError) as info:
        through(calc, twin, "Calc.blob", 3 << 20)
    message = str(info.value)
    assert "Calc.blob" in message and "3 MiB" in message and "over the 1 MiB" in message, message
    assert "iterator of bytes" in message, message
    assert calc.state == RUNNING and through(calc, twin, "Calc.blob", 10) == bytes(10)


def test_under_load_malformed_names_never_disturb_other_calls(calm_calc: bigmachine.Machine) -> None:
    """8 threads and a loop call at once, each slipping malformed names between good calls: every answer is its own."""
    problems: list[str] = []

    def worker(k: int) -> None:
        rng = random.Random(k)
        for i in range(60):
            a, b = rng.randrange(10**6), rng.randrange(10**6)
            twin = ("call", "submit")[i % 2]
            try:
                through(calm_calc, twin, rng.choice(MALFORMED), a, b)
                problems.append(f"{k}/{i}: a malformed name was accepted")
            except ValueError:
                pass
            got = through(calm_calc, twin, "Calc.add", a, b)
            if got != a + b:
                problems.append(f"{k}/{i}: {twin} Calc.add({a}, {b}) -> {got}")

    async def tasks() -> None:
        async def one(i: int) -> None:
            with pytest.raises(ValueError):
                await calm_calc.acall(MALFORMED[i % len(MALFORMED)], i, i)
            got = await calm_calc.acall("Calc.aadd", i, 7, timeout=10)
            if got != i + 7:
                problems.append(f"acall {i}: {got}")
        await asyncio.gather(*(one(i) for i in range(200)))

    threads = [threading.Thread(target=worker, args=(k,), name=f"load-{k}") for k in range(8)]
    for thread in threads:
        thread.start()
    asyncio.run(tasks())
    for thread in threads:
        thread.join()
    assert not problems, problems[:10]
