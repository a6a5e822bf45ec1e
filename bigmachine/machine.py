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

from . import calling
from .calling import Request, deadline_after, remaining
from .errors import Cancelled, Error, MachineStopped, RemoteError, Unavailable
from .futures import CallbackThreads, CallFuture, PendingCall, settle
from .metrics import CallStats, atimed, timed
from .rpc import wire
from .rpc.client import AsyncPool, SyncConnection, SyncPool
from .streaming import SourceError as _SourceError
from .streaming import SyncOverAsync as _SyncOverAsync
from .streaming import send_streamed
from .state import RUNNING, STOPPED, UNSTARTED, State

if TYPE_CHECKING:
    from .session import B

__all__ = ["Machine"]

logger = logging.getLogger(__name__)

_STOP_GRACE = 0.5  # after a broken connection, how long to wait for the machine to be found dead
_PROGRESS_EVERY = 10.0


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
        self._sync: SyncPool | None = None
        self._pool: AsyncPool | None = None
        self._host_header = b""
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

    def _bind(self, addr: str) -> None:
        """Sets the address once known, and the connection pools to it."""
        parts = urlsplit(addr)
        if parts.scheme != "https" or not parts.hostname or not parts.port:
            raise ValueError(f"machine address must look like https://host:port/, not {addr!r}")
        self.addr = f"https://{parts.netloc}/"
        self.hostname = parts.hostname
        self._host_header = parts.netloc.encode()
        session = self._session
        self._sync = SyncPool(parts.hostname, parts.port, session.client_context, parts.hostname)
        self._pool = AsyncPool(parts.hostname, parts.port, session.client_context, parts.hostname)

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

    def _stop(self, err: BaseException) -> None:
        """Stops the machine with ``err``: pending and later calls fail with MachineStopped."""
        if not self._set_state(STOPPED, err):
            return
        self.stopped = time.time()
        reason = _Stopped(str(err))
        if self._sync is not None:
            self._sync.close(reason)  # thread-safe: shuts sockets down, waking blocked callers
        if self._pool is not None:
            session = self._session
            if session.on_loop_thread():
                self._pool.close(reason)
            elif not session.loop.is_closed():  # transports belong to the loop's thread
                session.loop.call_soon_threadsafe(self._pool.close, reason)
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
        state = self._state
        if state == STOPPED:
            raise self.stopped_error()
        return state == RUNNING

    def _wait_running(self, deadline: float) -> None:
        if self._check_running():
            return
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
        deadline = deadline_after(timeout)
        self._wait_running(deadline)
        request = calling.encode_call(self._host_header, method, args, kwargs)
        return self._call_sync(request, deadline, timeout)

    def _call_sync(self, request: Request, deadline: float, timeout: float | None) -> Any:
        """A blocking call; one with a streamed argument goes through the loop, which sends it while the reply streams back."""
        if request.stream is None:
            return self._call_blocking(request, deadline, timeout)
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

    @timed
    def _call_blocking(self, request: Request, deadline: float, timeout: float | None) -> Any:
        pool = self._sync
        assert pool is not None
        try:
            conn = _clean_connection(pool, deadline)
            try:
                response = conn.request(request.data, deadline)
            except BaseException:
                conn.broken = True
                pool.release(conn)
                raise
        except BaseException as exc:
            raise self._sync_error(exc, request.method, timeout)
        if response.content_type == wire.STREAM:
            return self._sync_stream(conn, deadline, request.method, timeout)
        pool.release(conn)
        return calling.decode_reply(response, request.method, self.addr)

    def _sync_stream(self, conn: Any, deadline: float, method: str, timeout: float | None) -> Iterator[bytes]:
        pool = self._sync
        assert pool is not None
        frames = conn.frames(deadline)
        try:
            while True:
                try:
                    kind, payload = next(frames)
                except StopIteration:
                    return
                except BaseException as exc:
                    raise self._sync_error(exc, method, timeout)
                chunk = calling.decode_frame(kind, payload, self.addr)
                if chunk is None:
                    return
                yield chunk
        finally:
            frames.close()
            pool.release(conn)

    def submit(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Starts a call on the session's loop; returns a future of its result.

        Cancelling the future cancels the call on the machine; its done-callbacks run in
        callback threads, never on the session's loop (bigmachine/futures.py).
        """
        session = self._session
        pending = PendingCall(session.loop)
        future = CallFuture(pending, functools.partial(_callback_threads, session), session.on_loop_thread)
        deadline = deadline_after(timeout)
        try:
            if self._state == STOPPED:
                raise self.stopped_error()
            request = calling.encode_call(self._host_header, method, args, kwargs)
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
        """Starts a call on the session's loop for another thread or loop; ``deliver(ok, value)`` its outcome."""
        if pending.cancelled:
            return
        task = pending.task = self._session.loop.create_task(self._acall_running(request, deadline, timeout))

        def done(task: asyncio.Task[Any]) -> None:
            if task.cancelled():
                deliver(False, Cancelled(f"{self.addr} {request.method}: the call was cancelled"))
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
        if asyncio.get_running_loop() is loop:
            deadline = deadline_after(timeout)
            await self._await_running(deadline)
            request = calling.encode_call(self._host_header, method, args, kwargs)
            return await self._acall(request, deadline, timeout)
        # Another loop (driver code under asyncio.run, say): one hop there and back, the call
        # pickled here; results share wake-ups of this loop through its inbox.
        if self._state == STOPPED:
            raise self.stopped_error()
        deadline = deadline_after(timeout)
        request = calling.encode_call(self._host_header, method, args, kwargs)
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
        """Sends a call whatever the state (boot and keepalive calls need that)."""
        pool = self._pool
        assert pool is not None
        try:
            async with asyncio.timeout(remaining(deadline)):
                if request.stream is None:
                    response, conn = await pool.request(request.data)
                else:
                    conn = await pool.acquire()
                    response = await send_streamed(conn, request)
        except BaseException as exc:
            raise await self._async_error(exc, request.method, timeout)
        if response.content_type == wire.STREAM:
            return self._async_stream(conn, deadline, request.method, timeout)
        return calling.decode_reply(response, request.method, self.addr)

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
                chunk = calling.decode_frame(kind, payload, self.addr)
                if chunk is None:
                    return
                yield chunk
        finally:
            await frames.aclose()

    # ------------------------------------------------------------------ control and info

    def cancel(self) -> None:
        """Stops the machine; its error becomes ``Cancelled``. A dialled machine is only forgotten."""
        self._stop(Cancelled(f"machine {self.addr or self.name} was cancelled"))

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

    async def keepalive_loop(self, period: float, timeout: float, rpc_timeout: float) -> None:
        """Renews the machine's lease every ``period``; stops it once renewal fails for ``timeout``."""
        last_ok = time.monotonic()
        while self._state == RUNNING:
            self._next_keepalive = time.time() + period
            await asyncio.sleep(period)
            if self._state != RUNNING:
                return
            begun = time.monotonic()
            try:
                await self._acall(
                    calling.encode_call(self._host_header, "Supervisor.keepalive", (timeout,), {}),
                    deadline_after(rpc_timeout), rpc_timeout,
                )
            except Exception as exc:
                lapsed = time.monotonic() - last_ok
                logger.warning("%s: keepalive failed (%.1f s since the last good one): %s", self.addr, lapsed, exc)
                if lapsed >= timeout:
                    self._stop(MachineStopped(f"no keepalive reply for {lapsed:.1f} s: {exc}", machine=self.addr))
                continue
            last_ok = time.monotonic()
            self._reply_times.append(last_ok - begun)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _clean_connection(pool: SyncPool, deadline: float) -> SyncConnection:
    """A pooled connection with nothing unread on it: one with stray bytes or an EOF is closed, never used."""
    while True:
        conn = pool.acquire(deadline)
        if not conn.stale():
            return conn
        pool.release(conn)  # stale() marked it broken: release closes it


def _callback_threads(session: B) -> CallbackThreads:
    """The session's callback threads, made on first use; they end at ``b.shutdown()``."""
    threads: CallbackThreads | None = getattr(session, "_callback_threads", None)
    if threads is None:
        with session._lock:
            threads = getattr(session, "_callback_threads", None)
            if threads is None:
                threads = CallbackThreads("bigmachine-callback")
                session._callback_threads = threads  # type: ignore[attr-defined]
                session._closers.append(threads.close)
    return threads


for _name in __all__:
    globals()[_name].__module__ = "bigmachine"
