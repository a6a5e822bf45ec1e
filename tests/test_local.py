"""The runtime core on real local processes: calls, errors, streams, output, environment."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import threading
import time

import psutil
import pytest
from services import Echo, Failing, Peer, Streams

import bigmachine
from bigmachine import RUNNING, STOPPED

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def machines(local_session: bigmachine.B) -> list[bigmachine.Machine]:
    started = local_session.start(
        2,
        bigmachine.Services(Echo=Echo(), Failing=Failing(), Streams=Streams(), Peer=Peer()),
        bigmachine.Environ(["BIGMACHINE_TEST_VAR=from-environ"]),
    )
    for machine in started:
        assert machine.wait(RUNNING, timeout=60) == RUNNING
    return started


def test_start_returns_machines_in_starting_or_running(machines: list[bigmachine.Machine]) -> None:
    assert len(machines) == 2
    assert all(m.owned and m.addr.startswith("https://127.0.0.1:") for m in machines)
    assert len({m.addr for m in machines}) == 2
    assert all(m.maxprocs == 1 and m.hostname == "127.0.0.1" for m in machines)


def test_machines_are_separate_processes(machines: list[bigmachine.Machine]) -> None:
    pids = {m.call("Echo.pid") for m in machines}
    assert len(pids) == 2 and os.getpid() not in pids
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    assert pids <= children


def test_call_with_positional_and_keyword_arguments(machines: list[bigmachine.Machine]) -> None:
    m = machines[0]
    assert m.call("Echo.add", 1, 2, c=3) == 6
    assert m.call("Echo.echo", {"nested": [1, (2, 3)]}) == {"nested": [1, (2, 3)]}
    assert m.call("Echo.echo", value=b"\x00" * 100_000) == b"\x00" * 100_000


def test_services_are_stateful(machines: list[bigmachine.Machine]) -> None:
    m = machines[1]
    before = m.call("Echo.count")
    for _ in range(3):
        m.call("Echo.echo", 1)
    assert m.call("Echo.count") == before + 3


def test_plain_methods_run_in_pool_async_methods_on_loop(machines: list[bigmachine.Machine]) -> None:
    assert machines[0].call("Echo.thread_name").startswith("bigmachine-service")
    assert machines[0].call("Echo.loop_thread_name") == "MainThread"


def test_submit_and_acall(machines: list[bigmachine.Machine]) -> None:
    futures = [m.submit("Echo.add", i, 1) for i, m in enumerate(machines * 4)]
    assert [f.result(timeout=10) for f in futures] == [i + 1 for i in range(8)]

    async def main() -> list[int]:
        return await asyncio.gather(*(m.acall("Echo.aecho", i) for i, m in enumerate(machines * 4)))

    assert asyncio.run(main()) == list(range(8))


def test_acall_on_the_session_loop(local_session: bigmachine.B, machines: list[bigmachine.Machine]) -> None:
    async def main() -> list[int]:
        return await asyncio.gather(*(machines[i % 2].acall("Echo.echo", i) for i in range(64)))

    assert asyncio.run_coroutine_threadsafe(main(), local_session.loop).result(10) == list(range(64))


def test_sync_call_inside_a_running_event_loop(machines: list[bigmachine.Machine]) -> None:
    async def main() -> int:
        return machines[0].call("Echo.echo", 5)  # blocks this loop's thread; must not fail

    assert asyncio.run(main()) == 5


def test_calls_from_many_threads(machines: list[bigmachine.Machine]) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        for i in range(50):
            value = machines[(k + i) % 2].call("Echo.echo", k * 1000 + i)
            with lock:
                results.append(value)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted(k * 1000 + i for k in range(8) for i in range(50))


def test_remote_exception_keeps_type_args_and_traceback(machines: list[bigmachine.Machine]) -> None:
    with pytest.raises(ValueError) as info:
        machines[0].call("Failing.raise_value_error", "bad thing")
    assert info.value.args == ("bad thing", 42)
    remote = info.value.__cause__
    assert isinstance(remote, bigmachine.RemoteError)
    assert remote.machine == machines[0].addr
    assert "raise_value_error" in remote.remote_traceback
    assert remote.exc_type == "builtins.ValueError"


def test_async_remote_exception_has_the_same_shape(machines: list[bigmachine.Machine]) -> None:
    async def main() -> None:
        await machines[1].acall("Failing.raise_value_error", "async")

    with pytest.raises(ValueError) as info:
        asyncio.run(main())
    assert isinstance(info.value.__cause__, bigmachine.RemoteError)
    assert info.value.__cause__.machine == machines[1].addr


def test_unknown_service_and_method_are_not_found(machines: list[bigmachine.Machine]) -> None:
    with pytest.raises(bigmachine.NotFound, match=r"no service 'Nope'.*'Echo'"):
        machines[0].call("Nope.echo")
    with pytest.raises(bigmachine.NotFound, match=r"no public method 'nope'.*'add'"):
        machines[0].call("Echo.nope")
    with pytest.raises(bigmachine.NotFound, match="_private"):
        machines[0].call("Echo._private")
    assert machines[0].call("Echo.echo", 1) == 1  # the machine survives


def test_unpicklable_argument_names_method_argument_and_type(machines: list[bigmachine.Machine]) -> None:
    with pytest.raises(bigmachine.SerializationError, match=r"Echo.echo: argument 'value' of type lock"):
        machines[0].call("Echo.echo", value=threading.Lock())
    with pytest.raises(bigmachine.SerializationError, match=r"Echo.add: argument 1 of type lock"):
        machines[0].call("Echo.add", 1, threading.Lock())


def test_unpicklable_result_and_exception(machines: list[bigmachine.Machine]) -> None:
    with pytest.raises(bigmachine.SerializationError, match=r"Failing.unpicklable_result: result of type lock"):
        machines[0].call("Failing.unpicklable_result")
    with pytest.raises(bigmachine.RemoteError, match="holds a lock") as info:
        machines[0].call("Failing.unpicklable_exception")
    assert info.value.exc_type.endswith("WithLock")


def test_wrong_arguments_raise_type_error(machines: list[bigmachine.Machine]) -> None:
    with pytest.raises(TypeError, match="add"):
        machines[0].call("Echo.add", 1, 2, 3, 4)


def test_streamed_reply_arrives_in_chunks(machines: list[bigmachine.Machine]) -> None:
    chunks = list(machines[0].call("Streams.chunks", 20, 100_000))
    assert len(chunks) == 20 and all(c == b"x" * 100_000 for c in chunks)

    async def main() -> list[bytes]:
        stream = await machines[0].acall("Streams.achunks", 5, 10)
        return [chunk async for chunk in stream]

    assert asyncio.run(main()) == [b"y" * 10] * 5


def test_streamed_reply_keeps_memory_bounded(machines: list[bigmachine.Machine]) -> None:
    me = psutil.Process()
    before = me.memory_info().rss
    total = sum(len(c) for c in machines[0].call("Streams.chunks", 256, 1 << 20))  # 256 MiB
    assert total == 256 << 20
    assert me.memory_info().rss - before < 128 << 20


def test_streamed_reply_failing_half_way_raises_to_reader(machines: list[bigmachine.Machine]) -> None:
    stream = machines[0].call("Failing.stream_then_fail", 3)
    got = []
    with pytest.raises(RuntimeError, match="half-way"):
        for chunk in stream:
            got.append(chunk)
    assert got == [b"0", b"1", b"2"]
    assert machines[0].call("Echo.echo", 2) == 2


def test_streamed_arguments(machines: list[bigmachine.Machine]) -> None:
    data = os.urandom(3 << 20)
    assert machines[0].call("Streams.consume", io.BytesIO(data)) == len(data)
    assert machines[0].call("Streams.consume", (b"ab" for _ in range(1000))) == 2000

    async def main() -> tuple[int, str]:
        return await machines[1].acall("Streams.aconsume", io.BytesIO(data), tag="t")

    assert asyncio.run(main()) == (len(data), "t")
    assert asyncio.run_coroutine_threadsafe(
        machines[1].acall("Streams.aconsume", iter([b"x"] * 10)), machines[1]._session.loop).result(10) == (10, "")


def test_output_is_forwarded_with_the_machine_prefix(machines: list[bigmachine.Machine], capfd: pytest.CaptureFixture[str]) -> None:
    machines[0].call("Echo.say", "hello from a machine")
    prefix = machines[0].addr.removeprefix("https://").rstrip("/")
    deadline = time.monotonic() + 5
    out = err = ""
    while time.monotonic() < deadline:
        captured = capfd.readouterr()
        out, err = out + captured.out, err + captured.err
        if "hello from a machine (stderr)" in err and "hello from a machine" in out:
            break
        time.sleep(0.05)
    assert f"{prefix}: hello from a machine\n" in out
    assert f"{prefix}: hello from a machine (stderr)\n" in err


def test_the_driver_picks_the_address_before_the_machine_serves(local_session: bigmachine.B) -> None:
    """Issue 15: the address is known (and connectable) as soon as the process is launched."""
    from bigmachine.machine import Machine

    async def launch() -> tuple[str | None, str]:
        machine = Machine(local_session, owned=True, name="early")
        (instance,) = await local_session.system.launch(local_session, [machine], {})
        assert not isinstance(instance, BaseException)
        early = instance.address_nowait()
        host, port = early.removeprefix("https://").rstrip("/").split(":") if early else ("", "0")
        _, writer = await asyncio.open_connection(host, int(port))  # before it serves: waits in the backlog
        writer.close()
        served = await instance.address()
        await instance.kill()
        return early, served

    early, served = asyncio.run_coroutine_threadsafe(launch(), local_session.loop).result(60)
    assert early is not None and early.startswith("https://127.0.0.1:")
    assert served == early


def test_address_nowait_is_the_machines_address(local_session: bigmachine.B, machines: list[bigmachine.Machine]) -> None:
    assert [local_session._instances[m].address_nowait() for m in machines] == [m.addr for m in machines]


def test_environment_and_argv_reach_machines(machines: list[bigmachine.Machine]) -> None:
    assert machines[0].call("Echo.environ", "BIGMACHINE_TEST_VAR") == "from-environ"
    assert machines[0].call("Echo.argv") == sys.argv


def _thread_policies(pid: int) -> set[int]:
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_machine_threads_run_as_batch_work(machines: list[bigmachine.Machine]) -> None:
    machine = machines[0]
    assert machine.call("Echo.thread_name") != threading.current_thread().name  # a connection's thread exists
    assert _thread_policies(machine.call("Echo.pid")) == {os.SCHED_BATCH}
    assert _thread_policies(os.getpid()) == {os.SCHED_OTHER}  # the driver's are its own business


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_a_machine_can_opt_out_of_batch_scheduling(local_session: bigmachine.B) -> None:
    [machine] = local_session.start(1, bigmachine.Services(Echo=Echo()),
                                    bigmachine.Environ({"BIGMACHINE_SCHEDULING": "normal"}))
    try:
        assert machine.wait(RUNNING, timeout=60) == RUNNING
        assert _thread_policies(machine.call("Echo.pid")) == {os.SCHED_OTHER}
    finally:
        machine.cancel()


def test_services_call_each_other(machines: list[bigmachine.Machine]) -> None:
    first, second = machines
    assert first.call("Peer.driver_flag") is False
    assert first.call("Peer.call_other", second.addr, "Echo.add", 2, 3) == 5

    async def main() -> int:
        return await second.acall("Peer.acall_other", first.addr, "Echo.add", 4, 5)

    assert asyncio.run(main()) == 9


def test_info_calls(machines: list[bigmachine.Machine]) -> None:
    m = machines[0]
    assert m.mem_info()["process"]["rss"] > 0
    assert m.load_info()["host"]["cpus"] >= 1
    assert m.disk_info()["total"] > 0


def test_keepalives_are_recorded(machines: list[bigmachine.Machine]) -> None:
    m = machines[0]
    deadline = time.monotonic() + 10
    while not m.keepalive_reply_times() and time.monotonic() < deadline:
        time.sleep(0.1)
    times = m.keepalive_reply_times()
    assert 1 <= len(times) <= 10 and all(0 < t < 5 for t in times)
    assert m.next_keepalive() > time.time() - 5


def test_dial_gives_the_same_machine_for_the_same_address(local_session: bigmachine.B, machines: list[bigmachine.Machine]) -> None:
    assert local_session.dial(machines[0].addr) is machines[0]
    assert machines[0] in local_session.machines()


def test_timeout_bounds_a_call(machines: list[bigmachine.Machine]) -> None:
    begun = time.monotonic()
    with pytest.raises(TimeoutError):
        machines[0].call("Echo.sleep", 5, timeout=0.3)
    assert time.monotonic() - begun < 2
    assert machines[0].call("Echo.echo", 3, timeout=5) == 3


def test_cancel_stops_the_machine_and_its_process(local_session: bigmachine.B) -> None:
    (m,) = local_session.start(1, bigmachine.Services(Echo=Echo()))
    m.wait(RUNNING, timeout=60)
    pid = m.call("Echo.pid")
    m.cancel()
    assert m.state == STOPPED and isinstance(m.err, bigmachine.Cancelled)
    with pytest.raises(bigmachine.MachineStopped) as info:
        m.call("Echo.echo", 1)
    assert isinstance(info.value.__cause__, bigmachine.Cancelled)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).wait(10) is not None or True
    psutil.wait_procs([psutil.Process(pid)] if psutil.pid_exists(pid) else [], timeout=10)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
