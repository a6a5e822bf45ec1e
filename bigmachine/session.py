"""B, a bigmachine session: starts, dials and shuts down machines; owns the event loop thread.

In the driver, ``B`` holds the session's certificate authority, a private temp dir for
key material and an event loop in a daemon thread. Inside a machine, services get a
``B`` bound to the machine's own loop and certificate, with which they dial others.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import weakref
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import tls
from .errors import Error, MachineStopped, SerializationError
from .futures import CallbackThreads
from .liveness import Liveness
from .machine import Machine
from .params import Param, merge_params
from .rpc import wire
from .rpc.client import IDLE_TIMEOUT
from .rpc.limits import DEFAULT_MAX_CONNECTIONS
from .rpc.handoff import Inbox, LoopQueue
from .state import STOPPED

from .systems.base import RemoteSystem
from .systems.janitor import Janitor

if TYPE_CHECKING:
    import starlette.applications

    from .systems.base import Instance, System

__all__ = ["B"]

logger = logging.getLogger(__name__)

_SHUTDOWN_TIMEOUT = 30.0
_EXECUTOR_GRACE = 5.0  # how long shutdown waits for the loop's executor threads to end


class B:
    """A bigmachine session."""

    def __init__(self, system: System, *, name: str | None = None) -> None:
        self._init_state(system, f"{name or 'bigmachine'}-{secrets.token_hex(4)}", is_driver=True,
                         liveness=system.liveness, max_connections=system.max_connections)
        self.janitor = Janitor()  # from now on, a killed driver leaves no temp dir and no machine behind
        try:
            self.tmpdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))  # 0700
        except BaseException:
            self.janitor.close()
            raise
        self.janitor.watch_dir(str(self.tmpdir))
        initialized = False  # the system's init ran: a failure after it shuts the system down too
        try:
            self.loop = new_loop()
            self._soon = LoopQueue(self.loop)
            self._thread = threading.Thread(target=self._run_loop, name="bigmachine-loop", daemon=True)
            self._thread.start()
            self.loop.call_soon_threadsafe(self._spawn, self._sweep_idle())
            system.init(self)  # before the certificates: what it starts (Local's fork server) boots meanwhile
            initialized = True
            self.authority = tls.Authority(self.name)
            hosts = ["127.0.0.1", "localhost", socket.gethostname()]
            self.authority.issue(hosts, common_name="driver").write(self.tmpdir / "driver")
            self.client_context = tls.client_context(self.tmpdir / "driver")
            atexit.register(self.shutdown)  # a driver that forgets shutdown still leaves nothing behind
        except BaseException:
            if getattr(self, "_thread", None) is not None and self._thread.is_alive():
                if initialized:
                    asyncio.run_coroutine_threadsafe(system.shutdown(), self.loop).result(_EXECUTOR_GRACE)
                asyncio.run_coroutine_threadsafe(_cancel_other_tasks(), self.loop).result(_EXECUTOR_GRACE)
            self._stop_loop()
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.janitor.close()
            raise
        logger.debug("session %s started on %r", self.name, system)

    def _init_state(self, system: System, name: str, *, is_driver: bool, liveness: Liveness,
                    max_connections: int) -> None:
        """The state every session has, in the driver and in a machine."""
        self.system = system
        self.name = name
        self.is_driver = is_driver
        self.liveness = liveness  # how machines this session starts or dials are kept alive and watched
        self.max_connections = max_connections  # to each machine, data calls; more calls wait their turn
        self.debug_url: str | None = None
        self._machines: dict[str, Machine] = {}
        self._all: list[Machine] = []
        self._instances: dict[Machine, Instance] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._launching: set[asyncio.Future[Any]] = set()  # b.start calls under way: shutdown waits for them
        self._count = 0
        self._lock = threading.Lock()
        self._shutdown = False
        self._closers: list[Any] = []  # called first by shutdown, newest first (the debug server)
        self.callbacks = CallbackThreads("bigmachine-callback")  # users' done-callbacks: never on the loop
        self._inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Inbox] = weakref.WeakKeyDictionary()

    @classmethod
    def _for_machine(cls, name: str, system: str, tls_dir: str, liveness: Liveness) -> B:
        """The session services see inside a machine: it dials, it doesn't start machines.

        ``system`` is the name of the system the machine runs on: the driver's object stays there,
        and ``b.system`` here is a ``RemoteSystem`` of that name.
        """
        b = cls.__new__(cls)
        b._init_state(RemoteSystem(system, liveness), name, is_driver=False, liveness=liveness, max_connections=DEFAULT_MAX_CONNECTIONS)
        b.client_context = tls.client_context(tls_dir)
        return b

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Binds a machine's session to the machine's loop (running in its own thread)."""
        self.loop = loop
        self._soon = LoopQueue(loop)
        self._loop_thread = threading.get_ident()
        self._spawn(self._sweep_idle())

    @property
    def is_shut_down(self) -> bool:
        """Whether ``shutdown`` has begun."""
        return self._shutdown

    async def _sweep_idle(self) -> None:
        """Closes connections to any machine that have been idle for a while."""
        while True:
            await asyncio.sleep(IDLE_TIMEOUT / 2)
            for machine in self.machines():
                machine.close_idle(IDLE_TIMEOUT)

    def _run_loop(self) -> None:
        self._loop_thread = threading.get_ident()
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def on_loop_thread(self) -> bool:
        """Whether the caller runs on this session's event loop thread."""
        return threading.get_ident() == getattr(self, "_loop_thread", None)

    def call_soon(self, fn: Any, *args: Any) -> None:
        """Runs ``fn(*args)`` on the session's loop, from any thread; calls queued while the loop is busy
        share one wake-up (``rpc.handoff.LoopQueue``)."""
        self._soon.call_soon(fn, *args)

    def inbox(self) -> Inbox:
        """The inbox of the running event loop (one per loop), for results handed over from our loop."""
        loop = asyncio.get_running_loop()
        inbox = self._inboxes.get(loop)
        if inbox is None:
            inbox = self._inboxes[loop] = Inbox(loop)
        return inbox

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        """Runs a coroutine on the session's loop and waits for it (rare paths only)."""
        if self.on_loop_thread():
            coro.close()
            raise Error("this blocking call cannot run on the session's own event loop thread; use the async API")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Starts a background task on the loop, kept until it ends (loop thread only)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ----------------------------------------------------------------- machines

    def start(self, n: int, *params: Param) -> list[Machine]:
        """Launches up to ``n`` machines with the given services; they may still be STARTING."""
        if not self.is_driver:
            raise Error("b.start works only in the driver; a service can b.dial other machines")
        if self._shutdown:
            raise Error(f"session {self.name} is shut down; start a new session with bigmachine.start()")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"b.start(n, ...) needs n >= 1 machines, not {n!r}")
        services, environ = merge_params(params)
        if not services:
            raise ValueError("b.start needs at least one bigmachine.Services(...) param: the services to install")
        blobs = {name: _pickle_service(name, obj) for name, obj in services.items()}
        with self._lock:
            machines = [Machine(self, owned=True, name=f"m{self._count + i}") for i in range(n)]
            self._count += n
            self._all.extend(machines)
        return self._run(self._start(machines, blobs, environ))  # type: ignore[no-any-return]

    async def _start(self, machines: list[Machine], blobs: dict[str, bytes], environ: dict[str, str]) -> list[Machine]:
        launching = asyncio.current_task()
        assert launching is not None
        self._launching.add(launching)  # a Ctrl-C in b.start must not orphan what this launches
        try:
            return await self._launch(machines, blobs, environ)
        finally:
            self._launching.discard(launching)

    async def _launch(self, machines: list[Machine], blobs: dict[str, bytes], environ: dict[str, str]) -> list[Machine]:
        for machine in machines:
            machine.starting()
        launched = await self.system.launch(self, machines, environ)
        progress = _Progress(len(machines))
        started = []
        for machine, instance in zip(machines, launched):
            if isinstance(instance, BaseException):
                machine.stop(instance)
                progress.failed(machine, instance)
                continue
            self._instances[machine] = instance
            machine.on_stop.append(self._on_stop)
            if (addr := instance.address_nowait()) is not None:
                machine.bind(addr, instance.unix_socket())  # known at launch: m.addr is set when b.start returns, as in Go
            self._spawn(machine.watch_exit(instance))
            self._spawn(machine.boot(instance, blobs, progress))
            started.append(machine)
        if not started:
            errors = "; ".join(f"{m.name}: {m.err}" for m in machines)
            raise Error(f"no machine could be launched on {self.system!r}: {errors}")
        return started

    def _on_stop(self, machine: Machine) -> None:
        """A machine stopped (any thread): make sure its instance is gone too."""
        instance = self._instances.get(machine)
        if instance is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(lambda: self._spawn(instance.kill()))

    def dial(self, addr: str) -> Machine:
        """The machine at ``addr`` (the same object while it is not STOPPED); not owned, no keepalive."""
        if self._shutdown:
            raise Error(f"session {self.name} is shut down; dial from a session that is running")
        probe = Machine(self, addr, owned=False)
        with self._lock:
            machine = self._machines.get(probe.addr) or next(
                (m for m in self._all if m.owned and m.addr == probe.addr), None)
            if machine is not None and machine.state != STOPPED:
                return machine
            machine = self._machines[probe.addr] = probe  # a stopped or cancelled one is replaced
            self._all.append(machine)
        machine.starting()
        self.loop.call_soon_threadsafe(lambda: self._spawn(machine.probe()))
        return machine

    def instance(self, machine: Machine) -> Instance | None:
        """How ``machine``'s system sees it (its process, instance or job), if this session launched it."""
        return self._instances.get(machine)

    def on_shutdown(self, close: Callable[[], None]) -> None:
        """Has ``b.shutdown()`` call ``close()`` first, before machines stop (newest first): a debug server, say."""
        self._closers.append(close)

    def machines(self) -> list[Machine]:
        """Every machine this session started or dialled, in any state."""
        with self._lock:
            return list(self._all)

    def debug_app(self) -> starlette.applications.Starlette:
        """The debug application (Starlette) of this session: mount it in your own server."""
        from .web.app import create_app  # lazily: machines never load starlette or jinja2

        return create_app(self)

    # ----------------------------------------------------------------- shutdown

    def shutdown(self) -> None:
        """Stops every owned machine and frees what the session holds. Idempotent."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        if not self.is_driver:
            self._close_pools()
            self.callbacks.close()
            return
        for close in reversed(self._closers):
            close()
        atexit.unregister(self.shutdown)
        with _ctrl_c_held_back(self.name):
            try:
                self._run(self._ashutdown(), _SHUTDOWN_TIMEOUT)
            except concurrent.futures.TimeoutError:
                logger.error("session %s: shutdown did not finish within %s s", self.name, _SHUTDOWN_TIMEOUT)
            finally:
                shutil.rmtree(self.tmpdir, ignore_errors=True)  # first: nothing below may keep the keys on disk
                self.janitor.close()  # killing any machine's process group still watched
                self._stop_loop()
                self.callbacks.close()  # callbacks still running finish in their threads; idle ones end now

    async def _ashutdown(self) -> None:
        if self._launching:  # b.start interrupted (Ctrl-C): what it launched must be known to be killed
            await asyncio.wait(list(self._launching), timeout=_SHUTDOWN_TIMEOUT / 2)
        for machine in self.machines():
            machine.stop(MachineStopped(f"session {self.name} was shut down", machine=machine.addr))
        await asyncio.gather(*(i.kill() for i in self._instances.values()), return_exceptions=True)
        try:
            await self.system.shutdown()
        finally:  # a system that fails to shut down is reported once the session's own ends are freed too
            await _cancel_other_tasks()
            try:  # the loop's default executor (asyncio.to_thread: streamed arguments read off the loop)
                await asyncio.wait_for(asyncio.get_running_loop().shutdown_default_executor(), _EXECUTOR_GRACE)
            except TimeoutError:
                logger.warning("session %s: a thread of its event loop's executor is still busy; leaving it",
                               self.name)

    def _close_pools(self) -> None:
        for machine in self.machines():
            machine.stop(MachineStopped(f"session {self.name} was shut down", machine=machine.addr))

    def _stop_loop(self) -> None:
        loop = getattr(self, "loop", None)
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        if self._thread.is_alive():  # something holds the loop (a user's code run on it): leave it, don't hang
            logger.error("session %s: its event loop did not stop within 10 s; leaving it to end with the process",
                         self.name)
            return
        loop.close()

    def __enter__(self) -> B:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<B {self.name} on {self.system!r}>"

    def executor(self, **options: Any) -> concurrent.futures.Executor:
        """A ``bigmachine.Executor`` running plain functions on this session's machines (options: its keywords)."""
        from .executor import Executor
        return Executor(self, **options)

    def _repr_html_(self) -> str:
        from .notebook import session_html  # Jupyter's rich view: machines, states, debug link
        return session_html(self)


def _pickle_service(name: str, service: Any) -> bytes:
    try:
        return wire.dumps(service)
    except Exception as exc:
        raise SerializationError(
            f"service {name!r} of type {type(service).__qualname__} cannot be pickled: {exc}; "
            "keep unpicklable state (locks, sockets, files) out of the object, or create it in init(self, b)"
        ) from exc


async def _cancel_other_tasks() -> None:
    """Cancels every task of the running loop but this one, and waits for them."""
    for _ in range(3):  # cancelled tasks may have started others (an instance's kill, say)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def new_loop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop (asyncio's where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Progress:
    """Logs machines coming up: k of n running, and which failed and why."""

    def __init__(self, n: int) -> None:
        self.n, self.up, self.down = n, 0, 0

    def running(self, machine: Machine) -> None:
        self.up += 1
        logger.info("machine %s is running (%d of %d)", machine.addr, self.up, self.n)

    def failed(self, machine: Machine, err: BaseException) -> None:
        self.down += 1
        logger.warning("machine %s failed to start (%d of %d failed): %s", machine.addr or machine.name,
                       self.down, self.n, err)


B.__module__ = "bigmachine"


@contextlib.contextmanager
def _ctrl_c_held_back(session: str) -> Iterator[None]:
    """Holds a Ctrl-C back until the block is done, then raises it: cut short, a shutdown would leave machines
    stopping, the loop's tasks pending and the temp dir half removed. A second Ctrl-C raises at once. Only
    where Python's own handler is in place, on the main thread: any other is the program's business."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    interrupts: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        interrupts.append(signum)
        if len(interrupts) > 1:
            raise KeyboardInterrupt
        logger.warning("session %s: interrupted while shutting down; stopping its machines first "
                       "(interrupt again to stop waiting)", session)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupts:
        raise KeyboardInterrupt
