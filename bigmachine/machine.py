"""A machine: its state, and calls to its services.

Machine states proceed monotonically (UNSTARTED < STARTING < RUNNING < STOPPED). Sync
calls use a blocking socket per thread and never hop to the event loop; async calls
run on the session's loop (``acall`` from another loop hops once). Once a machine
stops, its pools are closed, which fails every pending call at once.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .rpc import blocking, calls
from .rpc.calls import Request, deadline_after, remaining
from .errors import Cancelled, Error, MachineStopped, RemoteError, Unavailable
from .futures import CallFuture, PendingCall, settle
from . import relayed
from .liveness import held_stacks
from .rpc.stats import CallStats, atimed
from .rpc import wire
from .rpc.budget import ConnectionBudget
from .rpc.client import AsyncPool, SyncPool
from .state import RUNNING, STARTING, STOPPED, UNSTARTED, State
from .rpc.streams import SourceError as _SourceError
from .streaming import SyncOverAsync as _SyncOverAsync

if TYPE_CHECKING:
    from .session import B
    from .systems.base import Instance

__all__ = ["Machine"]

logger = logging.getLogger(__name__)

_STOP_GRACE = 0.5  # after a broken connection, how long to wait for the machine to be found dead
_PROGRESS_EVERY = 10.0
_CONTROL = "Supervisor."  # calls of the machine's own service go on the control connections
CONTROL_CONNECTIONS = 4  # status, profiles and the like: apart from the data connections


class _Stopped(ConnectionAbortedError):
    """Closes a stopped machine's connections; mapped to MachineStopped by the caller."""


class Machine:
    """A machine in a session; call its services with ``call``, ``submit``, ``acall``."""

    def __init__(self, session: B, addr: str | None = None, *, owned: bool, name: str = "") -> None:
        self._session = session
        self.owned = owned
        self.name = name
        self.addr = ""
        self.hostname = ""
        self.maxprocs = 1
        self.info: dict[str, Any] = {}
        self._state = UNSTARTED
        self._err: BaseException | None = None
        self._cond = threading.Condition()
        self._async_waiters: list[tuple[State, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._sync: SyncPool | None = None  # data connections: users' calls
        self._pool: AsyncPool | None = None
        self._sync_control: SyncPool | None = None  # the control plane: Supervisor methods
        self._control: AsyncPool | None = None
        self._lifeline: AsyncPool | None = None  # keepalives and pings alone, one connection
        self._instance: Instance | None = None
        self._last_used = 0.0
        self._watching = False
        self._host_header = b""
        self._target: blocking.Target | None = None  # what blocking calls need, once the address is known
        self._relay: relayed.Target | None = None  # and what calls relayed for other threads need
        self._reply_times: collections.deque[float] = collections.deque(maxlen=10)
        self._next_keepalive = 0.0
        self.rpc_stats = CallStats()  # calls made to this machine, per method (bigmachine.metrics)
        self.started = time.time()
        self.stopped: float | None = None
        self.on_stop: list[Any] = []
        if addr is not None:
            self._bind(addr)

    def __repr__(self) -> str:
        return f"<Machine {self.addr or self.name} {self._state.name}>"

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> State:
        return self._state

    @property
    def err(self) -> BaseException | None:
        return self._err

    def _bind(self, addr: str, unix_socket: str | None = None) -> None:
        """Sets the address once known, and the connection pools to it (or to ``unix_socket``, on this host)."""
        parts = urlsplit(addr)
        if parts.scheme != "https" or not parts.hostname or not parts.port:
            raise ValueError(f"machine address must look like https://host:port/, not {addr!r}")
        self.addr = f"https://{parts.netloc}/"
        self.hostname = parts.hostname
        self._host_header = parts.netloc.encode()
        self._target = blocking.Target(self, self.addr, self._host_header, self._sync_error, self._call_streaming)
        self._relay = relayed.Target(self, self.addr, self._async_error, self._async_stream)
        server = (parts.hostname, parts.port, self._session.client_context, parts.hostname)
        data = ConnectionBudget(self._session.max_connections)
        self._sync = SyncPool(*server, data, unix_socket=unix_socket)
        self._pool = AsyncPool(*server, data, unix_socket=unix_socket)
        control = ConnectionBudget(CONTROL_CONNECTIONS)
        self._sync_control = SyncPool(*server, control, unix_socket=unix_socket)
        self._control = AsyncPool(*server, control, unix_socket=unix_socket)
        self._lifeline = AsyncPool(*server, ConnectionBudget(1), unix_socket=unix_socket)

    def _pools(self) -> list[Any]:
        return [p for p in (self._sync, self._pool, self._sync_control, self._control, self._lifeline) if p is not None]

    def close_idle(self, idle_for: float) -> None:
        """Closes this machine's connections that have been idle ``idle_for`` seconds (on the session loop)."""
        for pool in self._pools():
            pool.close_idle(idle_for)

    def connections(self) -> dict[str, int]:
        """Connections open to this machine now, by path."""
        data = [p.open for p in (self._sync, self._pool) if p is not None]
        control = [p.open for p in (self._sync_control, self._control, self._lifeline) if p is not None]
        return {"data": sum(data), "control": sum(control)}

    def _set_state(self, state: State, err: BaseException | None = None) -> bool:
        """Moves the state forward (never back); wakes waiters. Safe from any thread."""
        with self._cond:
            if state <= self._state:
                return False
            self._state = state
            if err is not None:
                self._err = err
            self._cond.notify_all()
            ready = [w for w in self._async_waiters if w[0] <= state]
            self._async_waiters = [w for w in self._async_waiters if w[0] > state]
        for _, loop, future in ready:
            loop.call_soon_threadsafe(_resolve, future)
        return True

    def stop(self, err: BaseException) -> None:
        """Stops the machine with ``err`` as its error: pending and later calls fail with MachineStopped.

        What the session and systems use (a dead process, a lapsed keepalive, shutdown); ``cancel`` is
        ``stop(Cancelled(...))``. An owned machine's instance is then ended too. Idempotent."""
        if not self._set_state(STOPPED, err):
            return
        self.stopped = time.time()
        reason = _Stopped(str(err))
        for pool in self._pools():
            if isinstance(pool, SyncPool):
                pool.close(reason)  # thread-safe: shuts sockets down, waking blocked callers
                continue
            session = self._session
            if session.on_loop_thread():
                pool.close(reason)
            elif not session.loop.is_closed():  # transports belong to the loop's thread
                session.loop.call_soon_threadsafe(pool.close, reason)
        for hook in self.on_stop:
            hook(self)

    def stopped_error(self) -> MachineStopped:
        """A fresh MachineStopped (or OutOfMemory) whose cause is the machine's error."""
        err = self._err
        kind = type(err) if isinstance(err, MachineStopped) else MachineStopped
        exc = kind(f"machine {self.addr or self.name} is stopped: {err}", machine=self.addr)
        exc.__cause__ = err
        return exc

    def wait(self, state: State, timeout: float | None = None) -> State:
        """Blocks until the state is at least ``state``; returns the state; TimeoutError past ``timeout``."""
        deadline = deadline_after(timeout)
        begun = time.monotonic()
        with self._cond:
            while self._state < state:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"machine {self.addr or self.name} is still {self._state.name} after {timeout} s "
                        f"(waited for {state.name})"
                    )
                if not self._cond.wait(min(left, _PROGRESS_EVERY)) and left > _PROGRESS_EVERY:
                    logger.info("waiting for %s to be %s: %s for %.0f s", self.addr or self.name,
                                state.name, self._state.name, time.monotonic() - begun)
            return self._state

    async def await_state(self, state: State, timeout: float | None = None) -> State:
        """The async twin of ``wait``, usable from any event loop."""
        with self._cond:
            if self._state >= state:
                return self._state
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self._async_waiters.append((state, loop, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"machine {self.addr or self.name} is still {self._state.name} after {timeout} s "
                f"(waited for {state.name})"
            ) from None
        return self._state

    def _check_running(self) -> bool:
        """Whether the machine is RUNNING (MachineStopped if STOPPED); a dialled one is watched while used."""
        state = self._state
        if state == STOPPED:
            raise self.stopped_error()
        self._used(state)
        return state == RUNNING

    def _used(self, state: State) -> None:
        """Notes a call made in ``state``: the idle sweep and the dial watch go by it."""
        self._last_used = time.monotonic()
        if not self.owned and not self._watching and state == RUNNING:
            self._watching = True
            self._session.call_soon(self._start_watch)

    def _wait_running(self, deadline: float) -> None:
        """Waits for a machine that is not RUNNING yet (``_check_running`` said so) to be."""
        if self._session.on_loop_thread():
            return  # blocking the loop would stop the machine from ever starting; try the call
        try:
            self.wait(RUNNING, remaining(deadline))
        except TimeoutError:
            raise TimeoutError(f"machine {self.addr or self.name} did not become RUNNING in time") from None
        self._check_running()

    async def _await_running(self, deadline: float) -> None:
        if not self._check_running():
            await self.await_state(RUNNING, remaining(deadline))
            self._check_running()

    # ------------------------------------------------------------------ errors

    def _map_error(self, exc: BaseException, method: str, timeout: float | None) -> BaseException:
        """Translates a transport error into the library's, once: most specific first."""
        if isinstance(exc, (Error, asyncio.CancelledError)) and not isinstance(exc, _Stopped):
            return exc
        if self._state == STOPPED:
            return self.stopped_error()
        if isinstance(exc, TimeoutError):
            return TimeoutError(f"{self.addr} {method}: no reply within {timeout} s")
        err = Unavailable(f"{self.addr} {method}: {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        return err

    def _is_transport_error(self, exc: BaseException) -> bool:
        return not isinstance(exc, (Error, TimeoutError, asyncio.CancelledError))

    def _sync_error(self, exc: BaseException, method: str, timeout: float | None) -> BaseException:
        """The error a sync caller sees; a broken connection first gives the machine a moment to be found dead."""
        if isinstance(exc, _SourceError):
            return exc.__cause__  # type: ignore[return-value]  # the caller's own stream argument failed
        if self._is_transport_error(exc):
            with self._cond:
                self._cond.wait_for(lambda: self._state == STOPPED, _STOP_GRACE)
        return self._map_error(exc, method, timeout)

    async def _async_error(self, exc: BaseException, method: str, timeout: float | None) -> BaseException:
        """The async twin of ``_sync_error``."""
        if isinstance(exc, _SourceError):
            return exc.__cause__  # type: ignore[return-value]
        if self._is_transport_error(exc) and self._state != STOPPED:
            try:
                await self.await_state(STOPPED, _STOP_GRACE)
            except TimeoutError:
                pass
        return self._map_error(exc, method, timeout)

    # ------------------------------------------------------------------ sync calls

    def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Calls ``"Service.method"`` and returns its result (an iterator of bytes if streamed)."""
        if not self._check_running():
            self._wait_running(deadline_after(timeout))
        control = isinstance(method, str) and method.startswith(_CONTROL)
        pool, target = (self._sync_control if control else self._sync), self._target
        assert pool is not None and target is not None
        return blocking.call(pool, target, method, args, kwargs, timeout)

    def _call_streaming(self, request: Request, deadline: float, timeout: float | None) -> Any:
        """A blocking call whose argument streams: the loop sends it while the reply streams back."""
        if self._session.on_loop_thread():
            raise Error(f"{request.method}: a call with a streamed argument cannot block the session's event loop "
                        "thread; use `await m.acall(...)` there")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        pending = PendingCall(self._session.loop)
        self._session.call_soon(self._start, request, deadline, timeout, functools.partial(self._deliver, future),
                                pending)
        try:
            return future.result()
        except BaseException:
            pending.cancel()  # interrupted (Ctrl-C): the call ends too; a no-op once it is over
            raise

    def submit(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Starts a call on the session's loop; returns a future of its result.

        Cancelling the future cancels the call on the machine; its done-callbacks run in
        callback threads, never on the session's loop (bigmachine/futures.py).
        """
        session = self._session
        pending = PendingCall(session.loop)
        future = CallFuture(pending, session.callbacks, session.on_loop_thread)
        deadline = deadline_after(timeout)
        try:
            if self._state == STOPPED:
                raise self.stopped_error()
            request = calls.encode_call(self._host_header, method, args, kwargs)
        except BaseException as exc:
            future.set_exception(exc)
            return future
        session.call_soon(self._start, request, deadline, timeout, functools.partial(self._deliver, future), pending)
        return future

    def _deliver(self, future: concurrent.futures.Future[Any], ok: bool, value: Any) -> None:
        """Settles a thread's future with a call's outcome; a streamed reply is read from that thread."""
        if ok and isinstance(value, collections.abc.AsyncIterator):
            value = _SyncOverAsync(value, self._session.loop)
        if not settle(future, ok, value) and isinstance(value, _SyncOverAsync):
            value.close()  # cancelled meanwhile: nobody reads it

    def _start(self, request: Request, deadline: float, timeout: float | None,
               deliver: Callable[[bool, Any], None], pending: PendingCall) -> None:
        """Starts a call on the session's loop for another thread or loop; ``deliver(ok, value)`` its outcome.
        Sent at once and carried by callbacks if a connection is at hand (``relayed``), else run as a task."""
        if pending.cancelled:
            return
        if request.stream is None and self._state == RUNNING and self._relay is not None and \
                time.monotonic() < deadline:  # past it, the task's way gives the TimeoutError without sending
            pool = self._pool_for(request.method)
            sent = pool.start(request.data, request.method)
            if sent is not None:
                self._used(RUNNING)
                pending.handle = relayed.RelayedCall(self._relay, pool, request, deadline, timeout, deliver, pending,
                                                     sent)
                return
        task = pending.handle = self._session.loop.create_task(self._acall_running(request, deadline, timeout))

        def done(task: asyncio.Task[Any]) -> None:
            if task.cancelled():
                deliver(False, relayed.cancelled(self.addr, request.method))
            elif (exc := task.exception()) is not None:
                deliver(False, exc)
            else:
                deliver(True, task.result())

        task.add_done_callback(done)

    def retry_call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Like ``call``, retrying temporary errors with capped, jittered backoff until ``timeout``."""
        deadline = deadline_after(timeout)
        attempt = 0
        while True:
            try:
                return self.call(method, *args, timeout=remaining(deadline), **kwargs)
            except Error as exc:
                if not exc.temporary or isinstance(exc.__cause__, RemoteError):  # the method itself raised it
                    raise
                delay = min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)
                if time.monotonic() + delay >= deadline:
                    raise
                attempt += 1
                logger.debug("%s %s: %s; retrying (%d)", self.addr, method, exc, attempt)
                time.sleep(delay)

    # ------------------------------------------------------------------ async calls

    async def acall(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """The async twin of ``call``, from any event loop; a streamed reply is an async iterator."""
        loop = self._session.loop
        if self._session.on_loop_thread():  # so the running loop is the session's
            deadline = deadline_after(timeout)
            await self._await_running(deadline)
            request = calls.encode_call(self._host_header, method, args, kwargs)
            return await self._acall(request, deadline, timeout)
        # Another loop (driver code under asyncio.run, say): one hop there and back, the call
        # pickled here; results share wake-ups of this loop through its inbox.
        if self._state == STOPPED:
            raise self.stopped_error()
        deadline = deadline_after(timeout)
        request = calls.encode_call(self._host_header, method, args, kwargs)
        future = asyncio.get_running_loop().create_future()
        inbox = self._session.inbox()
        pending = PendingCall(loop)
        self._session.call_soon(self._start, request, deadline, timeout, functools.partial(inbox.put, future), pending)
        try:
            result = await future
        except asyncio.CancelledError:
            pending.cancel()  # this task was cancelled: so is the call, on the machine too
            raise
        if isinstance(result, collections.abc.AsyncIterator):
            return _SyncOverAsync(result, loop).foreign()
        return result

    async def _acall_running(self, request: Request, deadline: float, timeout: float | None) -> Any:
        await self._await_running(deadline)
        return await self._acall(request, deadline, timeout)

    @atimed
    async def _acall(self, request: Request, deadline: float, timeout: float | None) -> Any:
        """Sends a call whatever the state (boot calls need that)."""
        pool = self._pool_for(request.method)
        try:
            response, conn = await pool.call(request, deadline)
        except BaseException as exc:
            raise await self._async_error(exc, request.method, timeout)
        if response.content_type == wire.STREAM:
            return self._async_stream(conn, deadline, request.method, timeout)
        return calls.decode_reply(response, request.method, self.addr)

    def _pool_for(self, method: str) -> AsyncPool:
        """The async pool a call of ``method`` goes on: the control connections for ``Supervisor.*``."""
        pool = self._control if method.startswith(_CONTROL) else self._pool
        assert pool is not None
        return pool

    async def _async_stream(self, conn: Any, deadline: float, method: str, timeout: float | None) -> AsyncIterator[bytes]:
        frames = conn.reply_stream.frames(deadline)
        try:
            while True:
                try:
                    kind, payload = await frames.__anext__()
                except StopAsyncIteration:
                    return
                except (Error, TimeoutError, OSError, _SourceError) as exc:
                    raise await self._async_error(exc, method, timeout)
                chunk = calls.decode_frame(kind, payload, self.addr)
                if chunk is None:
                    return
                yield chunk
        finally:
            await frames.aclose()

    # ------------------------------------------------------------------ control and info

    def cancel(self) -> None:
        """Stops the machine; its error becomes ``Cancelled``. A dialled machine is only forgotten."""
        self.stop(Cancelled(f"machine {self.addr or self.name} was cancelled"))

    def mem_info(self, timeout: float | None = 10.0) -> dict[str, Any]:
        """psutil memory figures of the machine's process and host."""
        return self.call("Supervisor.mem_info", timeout=timeout)  # type: ignore[no-any-return]

    def load_info(self, timeout: float | None = 10.0) -> dict[str, Any]:
        """psutil CPU load figures of the machine's process and host."""
        return self.call("Supervisor.load_info", timeout=timeout)  # type: ignore[no-any-return]

    def disk_info(self, timeout: float | None = 10.0) -> dict[str, Any]:
        """psutil disk figures of the machine's working directory."""
        return self.call("Supervisor.disk_info", timeout=timeout)  # type: ignore[no-any-return]

    def keepalive_reply_times(self) -> list[float]:
        """Seconds each recent keepalive took, newest first (at most 10)."""
        return list(reversed(self._reply_times))

    def next_keepalive(self) -> float:
        """The ``time.time()`` instant the next keepalive is due to be sent."""
        return self._next_keepalive

    # ------------------------------------------------------------------ lifecycle (on the session loop)

    async def boot(self, instance: Instance, blobs: dict[str, bytes], progress: Any) -> None:
        """Brings a launched machine to RUNNING: its address, services installed, keepalives started."""
        self._instance = instance
        system = self._session.system
        timeout = system.start_timeout
        deadline = calls.deadline_after(timeout)
        try:
            async with asyncio.timeout(timeout):
                # Also the sign that it serves, when the address was known before.
                self.bind(await instance.address(), instance.unix_socket())
                request = calls.encode_call(self._host_header, "Supervisor.register",
                                              (blobs, system.liveness.timeout), {})
                info = await self._acall(request, deadline, timeout)
        except BaseException as exc:
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"machine {self.addr or self.name} did not start within {timeout} s")
            self.stop(exc)
            if not self._session.is_shut_down:
                progress.failed(self, exc)
            return
        self._running(info)
        if self._state == RUNNING:
            progress.running(self)
            await self._keep_alive()

    async def probe(self) -> None:
        """Brings a dialled machine to RUNNING once it answers; STOPPED if it does not in time."""
        timeout = self._session.liveness.rpc_timeout
        try:
            info = await self._lifeline_call("Supervisor.info", timeout=timeout)
        except Exception as exc:
            self.stop(exc if isinstance(exc, Error) else MachineStopped(
                f"{self.addr}: no answer within {timeout:g} s: {type(exc).__name__}: {exc}", machine=self.addr))
            return
        self._running(info)

    async def watch_exit(self, instance: Instance) -> None:
        """Stops the machine with its instance's account of how it ended, once it has."""
        err = await instance.wait_exit()
        if self._state != STOPPED:
            logger.error("machine %s: %s", self.addr or self.name, err)
        self.stop(err)

    def bind(self, addr: str, unix_socket: str | None = None) -> None:
        """Sets the machine's address, once known (a system may know it at launch), and the Unix socket this
        driver's connections take instead, if the machine has one on this host."""
        if not self.addr:
            self._bind(addr, unix_socket)

    def starting(self) -> None:
        self._set_state(STARTING)

    def _running(self, info: dict[str, Any]) -> None:
        self.info = info
        self.hostname = self.hostname or info["hostname"]
        self.maxprocs = info["maxprocs"]
        self._set_state(RUNNING)

    async def _lifeline_call(self, method: str, *args: Any, timeout: float) -> Any:
        """A call on the lifeline: the one connection only keepalives and pings use."""
        pool = self._lifeline
        assert pool is not None
        request = calls.encode_call(self._host_header, method, args, {})
        async with asyncio.timeout(timeout):
            response, _ = await pool.request(request.data)
        return calls.decode_reply(response, method, self.addr)

    async def _keep_alive(self) -> None:
        """Renews an owned machine's lease every period; stops it once renewals fail for the timeout."""
        live = self._session.liveness
        last_ok = time.monotonic()
        while self._state == RUNNING:
            self._next_keepalive = time.time() + live.period
            await asyncio.sleep(live.period)
            if self._state != RUNNING:
                return
            begun = time.monotonic()
            try:
                await self._lifeline_call("Supervisor.keepalive", live.timeout, timeout=live.rpc_timeout)
            except Exception as exc:
                if self._unanswered("keepalive", last_ok, exc):
                    return
                continue
            last_ok = time.monotonic()
            self._reply_times.append(last_ok - begun)

    def _start_watch(self) -> None:
        self._session._spawn(self._watch())

    async def _watch(self) -> None:
        """Pings a dialled machine while it is in use; stops it once pings fail for the timeout."""
        live = self._session.liveness
        last_ok = time.monotonic()
        try:
            while self._state == RUNNING and self._in_use(live.timeout):
                await asyncio.sleep(live.period)
                try:
                    await self._lifeline_call("Supervisor.ping", timeout=live.rpc_timeout)
                except Exception as exc:
                    if self._unanswered("ping", last_ok, exc):
                        return
                    continue
                last_ok = time.monotonic()
        finally:
            self._watching = False
        if self._state == RUNNING and self._in_use(live.timeout):  # a call began as we were leaving
            self._watching = True
            self._start_watch()

    def _in_use(self, within: float) -> bool:
        """Whether calls are in flight, or one began in the last ``within`` seconds."""
        busy = sum(p.busy for p in (self._sync, self._pool) if p is not None)
        return busy > 0 or time.monotonic() - self._last_used < within

    def _unanswered(self, what: str, last_ok: float, exc: BaseException) -> bool:
        """Notes a failed keepalive or ping; stops the machine (True) once none has answered for the timeout."""
        lapsed = time.monotonic() - last_ok
        timeout = self._session.liveness.timeout
        if lapsed < timeout:
            logger.warning("%s: %s failed (%.1f s since the last reply): %s", self.addr, what, lapsed, exc)
            return False
        message = f"no {what} reply for {lapsed:.1f} s (last error: {type(exc).__name__}: {exc})"
        output = self._instance.output if self._instance is not None else None
        if stacks := held_stacks(output or (), time.time() - lapsed):
            message += f"; its threads, dumped while it was held:\n{stacks}"
        self.stop(MachineStopped(message, machine=self.addr))
        return True

    def _repr_html_(self) -> str:
        from .notebook import machine_html  # Jupyter's rich view: state pill, address, uptime, calls
        return machine_html(self)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


for _name in __all__:
    globals()[_name].__module__ = "bigmachine"
