"""The bootstrap agent: turns a host into bigmachine machines for one driver, over mutual TLS.

    python -m bigmachine.systems.agent --listen 0.0.0.0:9443 --credentials bootstrap.json \\
        [--machines N] [--workdir DIR] [--poweroff 'sudo shutdown -h now'] [--pip 'python -m pip install']

The agent starts with a short-lived bootstrap identity (``--credentials``: its own
certificate and key and the bootstrap authority's certificate, made by the driver's
``BootstrapAuthority``; EC2 passes it in user-data). It accepts one driver whose client
certificate that authority signed, once per machine of that driver's session (up to
``--machines``), then, over each such connection:

1. ``hello``: the driver names its Python; another major.minor fails at once, naming
   both. The agent answers with host facts and a certificate signing request for a key
   it generated itself: the machine's private key never travels.
2. ``code``: a zip of the driver's ``__main__`` file and local modules, unpacked into
   the machine's directory, and a requirements list, of which what this Python lacks is
   pip-installed.
3. ``start``: the machine's certificate, signed by the session's authority, and its
   memory limit. The agent starts the machine (``bigmachine.runtime``) on a port of its own (the
   agent's port plus 1, 2, ...: the machine port range; any free port where the agent
   listens on port 0) in a memory cgroup of its own where the host allows one, relays
   its output, reports its port and pings every few seconds until the machine ends.

A ``hello`` with ``probe`` set only asks for the host's facts (CPUs, memory). When a
machine ends, for any reason (its lease lapsed, it crashed, ran out of memory, the
driver stopped it), the agent tells the driver; its neighbours run on. When the last
one has ended, the agent runs its power-off command and exits: one agent, one driver,
one host's machines. It also ends, powering off, if no driver has bootstrapped it
before its credentials expire. SIGTERM ends it too: it ends its machines first, telling
the driver why, then removes its temp dir and powers off, however many signals come.
The wire format is frames of a 4-byte length, a JSON header and, when the header has a
``size``, that many raw bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..runtime.spec import ENVIRONMENT_VARIABLE, EXIT_OUT_OF_MEMORY, LaunchSpec, describe_exit
from .janitor import kill_group
from .memory import MemoryCgroup
from .output import LineSplitter

__all__ = ["DRIVER_NAME", "Agent", "agent_name", "main", "python_mismatch", "receive", "send"]

logger = logging.getLogger("bigmachine.agent")

DRIVER_NAME = "bigmachine bootstrap driver"  # the common name of the only client an agent accepts
_MAX_HEADER = 1 << 20
_MAX_PAYLOAD = 1 << 30
_KILL_GRACE = 5.0
# How the agent starts a machine: the interpreter's own flags (-I, -S) and the spec's path first,
# so a machine imports what the agent does, plus the code the driver shipped.
_MACHINE_BOOT = (f"import json, os, sys; sys.path[:0] = json.loads(os.environ[{ENVIRONMENT_VARIABLE!r}])['path']; "
                 "from bigmachine.runtime.process import main; main()")


def agent_name(name: str) -> str:
    """The common name of the agent certificate issued for ``name``."""
    return f"bigmachine agent {name}"


def python_mismatch(driver: str, here: str, where: str) -> str | None:
    """Why a machine on Python ``here`` can't serve a driver on ``driver`` (None if it can)."""
    if driver.split(".")[:2] == here.split(".")[:2]:
        return None
    return (f"Python version mismatch: the driver runs Python {driver} but {where} runs Python {here}; "
            "pickled services need the same major.minor version on both sides")


async def send(writer: asyncio.StreamWriter, kind: str, payload: bytes = b"", **fields: Any) -> None:
    """Writes one frame: a JSON header (``type`` = ``kind``) and an optional payload."""
    header = {"type": kind, **fields}
    if payload:
        header["size"] = len(payload)
    data = json.dumps(header).encode()
    writer.write(len(data).to_bytes(4, "big") + data + payload)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    """Reads one frame; ``asyncio.IncompleteReadError`` at end of stream."""
    size = int.from_bytes(await reader.readexactly(4), "big")
    if size > _MAX_HEADER:
        raise ValueError(f"frame header of {size} bytes is over the {_MAX_HEADER} limit")
    header = json.loads(await reader.readexactly(size))
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ValueError(f"malformed frame header: {header!r:.200}")
    n = int(header.get("size", 0))
    if not 0 <= n <= _MAX_PAYLOAD:
        raise ValueError(f"frame payload of {n} bytes is over the {_MAX_PAYLOAD} limit")
    return header, (await reader.readexactly(n) if n else b"")


class _Refused(Exception):
    """The bootstrap can't go on; the message goes to the driver."""


class Agent:
    """Serves one driver's bootstraps on ``host:port``; ``run`` returns once its last machine has ended."""

    def __init__(self, host: str, port: int, credentials: dict[str, Any], workdir: Path,
                 *, poweroff: Sequence[str] = (), pip: Sequence[str] = (), machines: int | None = None) -> None:
        self.host, self.port = host, port
        self.machines = machines  # at most this many bootstraps (None: as many as the driver asks for)
        self._any_port = port == 0  # then each machine takes any free port too
        self.credentials = credentials
        self.workdir = workdir
        self.poweroff = list(poweroff)
        self.pip = list(pip) or [sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                                 "--quiet"]
        self.session: str | None = None  # the one driver's session, once it has come
        self._claimed = 0  # bootstraps accepted
        self._ports: set[int] = set()  # the machine ports in use
        self._done = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._bootstraps: set[asyncio.Task[Any]] = set()  # the connections being served (probes too)
        self.outcome = "no driver came"
        self.stopped: str | None = None  # why ``stop`` was asked, if it was
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> str:
        """Serves until the machine ends (or the credentials expire, or ``stop``); returns how it ended."""
        self._loop = asyncio.get_running_loop()
        if self.stopped is not None:
            return self.stopped
        self._server = await asyncio.start_server(self._accept, self.host, self.port, ssl=self._context(),
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("agent %s listening on %s:%d", self.credentials.get("name"), self.host, self.port)
        print(f"listening on {self.host}:{self.port}", file=sys.stderr, flush=True)
        left = float(self.credentials.get("expires", time.time() + 3600)) - time.time()
        try:
            await asyncio.wait_for(self._done.wait(), max(left, 0.0))
        except TimeoutError:
            if not self._claimed:
                self._close_server()
                return f"no driver bootstrapped this agent before its credentials expired ({left:.0f} s)"
            await self._done.wait()
        finally:
            self._close_server()
            for task in self._bootstraps:  # left only by ``stop``: each ends its machine as it goes
                task.cancel()
            await asyncio.gather(*self._bootstraps, return_exceptions=True)
        return self.stopped or self.outcome

    def stop(self, reason: str) -> None:
        """Ends ``run``, and with it every machine, for ``reason``.

        Safe from a signal handler, before, during or after ``run``: it never raises, so no
        clean-up it lands in is cut short.
        """
        self.stopped = reason
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._done.set)

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self.credentials["ca"])
        with tempfile.TemporaryDirectory(prefix="bigmachine-agent-") as tmp:  # ssl loads keys from files only
            cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert.write_text(self.credentials["cert"])
            fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.credentials["key"])
            ctx.load_cert_chain(cert, key)
        return ctx

    def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()  # hands the port over to the machine; live connections stay
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        subject = dict(x[0] for x in (writer.get_extra_info("peercert") or {}).get("subject", ()))
        full = self.machines is not None and self._claimed >= self.machines
        if full or self._done.is_set() or subject.get("commonName") != DRIVER_NAME:
            logger.warning("agent: refused %s (%s)", peer, "all machines claimed" if full else subject)
            writer.close()
            return
        logger.info("agent: driver connected from %s", peer)
        task = asyncio.current_task()
        assert task is not None
        self._bootstraps.add(task)
        outcome: str | None = "bootstrap failed"
        try:
            outcome = await _Bootstrap(self, reader, writer).run()
        except asyncio.CancelledError:  # by ``stop``; a connection's task ending cancelled makes 3.11's streams log
            outcome = self.stopped
        except Exception as exc:  # noqa: BLE001 - whatever happened, this machine ends
            logger.exception("agent: bootstrap failed")
            outcome = f"bootstrap failed: {exc}"
        finally:
            writer.close()
            self._bootstraps.discard(task)
            if outcome is not None:
                self.outcome = outcome
            if self._claimed and not self._bootstraps:  # the last machine ended: so does the agent
                self._done.set()

    def claim(self) -> None:
        """Counts a bootstrap (a probe is none); the server closes once ``machines`` are claimed."""
        self._claimed += 1
        if self.machines is not None and self._claimed >= self.machines:
            self._close_server()

    def take_port(self) -> int:
        """A machine's port: the lowest free one above the agent's (0, any, where the agent took any)."""
        if self._any_port:
            return 0
        port = next(p for p in itertools.count(self.port + 1) if p not in self._ports)
        self._ports.add(port)
        return port

    def free_port(self, port: int) -> None:
        self._ports.discard(port)


class _Bootstrap:
    """One driver's session with the agent: hello, code, start, then relay until the machine ends."""

    def __init__(self, agent: Agent, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.agent, self.reader, self.writer = agent, reader, writer
        self.connected = True
        self.process: asyncio.subprocess.Process | None = None

    async def run(self) -> str | None:
        """How the machine ended; None after a probe, which starts none."""
        try:
            hello = await self._hello()
            if hello is None:
                return None
            self.agent.claim()
            key, csr = _key_and_request(str(hello.get("machine", "machine")))
            await self._say("hello", **self._facts(), csr=csr)
            machine_dir = await self._code(hello)
            return await self._start(hello, key, machine_dir)
        except _Refused as exc:
            await self._say("error", message=str(exc))
            return f"refused: {exc}"

    async def _say(self, kind: str, payload: bytes = b"", **fields: Any) -> None:
        """Sends to the driver while it listens; a gone driver is no error (the lease decides)."""
        if not self.connected:
            return
        try:
            await send(self.writer, kind, payload, **fields)
        except (ConnectionError, OSError, RuntimeError):
            self.connected = False

    async def _expect(self, kind: str) -> tuple[dict[str, Any], bytes]:
        header, payload = await receive(self.reader)
        if header["type"] != kind:
            raise _Refused(f"expected a {kind!r} message, got {header['type']!r}")
        return header, payload

    async def _hello(self) -> dict[str, Any] | None:
        """The driver's hello, checked; None (after answering with the host's facts) when it only probes."""
        hello, _ = await self._expect("hello")
        if hello.get("probe"):
            await self._say("hello", **self._facts())
            return None
        session = str(hello.get("session"))
        if self.agent.session not in (None, session):  # one driver: the session that came first
            raise _Refused(f"this agent serves session {self.agent.session}, not {session}")
        self.agent.session = session
        here = ".".join(map(str, sys.version_info[:3]))
        problem = python_mismatch(str(hello.get("python")), here, f"the machine {socket.gethostname()}")
        if problem:
            self.agent.claim()
            raise _Refused(problem)
        return hello

    def _facts(self) -> dict[str, Any]:
        """What the driver learns of this host."""
        import psutil

        local = self.writer.get_extra_info("sockname")[0]
        return {"python": ".".join(map(str, sys.version_info[:3])), "hostname": socket.gethostname(),
                "addresses": _addresses(local), "cpus": len(os.sched_getaffinity(0)), "pid": os.getpid(),
                "memory": psutil.virtual_memory().total}

    async def _code(self, hello: dict[str, Any]) -> Path:
        header, archive = await self._expect("code")
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{hello.get('session')}-{hello.get('machine')}")
        machine_dir = self.agent.workdir / name
        code_dir = machine_dir / "code"
        code_dir.mkdir(parents=True, exist_ok=True)
        _unpack(archive, code_dir)
        missing = [r for r in header.get("requirements", []) if not _satisfied(r)]
        if missing:
            await self._pip(missing, machine_dir)
        return machine_dir

    async def _pip(self, requirements: list[str], machine_dir: Path) -> None:
        listing = machine_dir / "requirements.txt"
        listing.write_text("".join(r + "\n" for r in requirements))
        command = [*self.agent.pip, "-r", str(listing)]
        await self._say("out", stream="stderr", line=f"agent: installing {len(requirements)} requirements: "
                                                       f"{' '.join(requirements)}")
        process = await asyncio.create_subprocess_exec(*command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                       stderr=subprocess.STDOUT)
        assert process.stdout is not None
        tail: list[str] = []
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            tail = (tail + [line])[-20:]
            await self._say("out", stream="stderr", line=f"pip: {line}")
        if await process.wait() != 0:
            raise _Refused(f"installing the requirements failed ({shlex.join(command)} exited with status "
                           f"{process.returncode}): " + " | ".join(tail[-5:]))

    async def _start(self, hello: dict[str, Any], key: Any, machine_dir: Path) -> str:
        start, _ = await self._expect("start")
        tls_dir = _write_identity(machine_dir / "tls", start["ca"], start["cert"], key)
        code_dir = machine_dir / "code"
        worker = dict(start["worker"])
        argv = list(worker.pop("argv", None) or [""])
        if start.get("main"):
            argv[0] = str(code_dir / start["main"])
        port = self.agent.take_port()
        try:
            return await self._serve(hello, worker, argv, tls_dir, machine_dir, port, start.get("memory_limit"),
                                     start.get("environ", {}))
        finally:
            self.agent.free_port(port)

    async def _serve(self, hello: dict[str, Any], worker: dict[str, Any], argv: list[str], tls_dir: Path,
                     machine_dir: Path, port: int, memory_limit: int | None, environ: dict[str, str]) -> str:
        """Runs the machine process until it ends, in a memory cgroup of its own where one can be made."""
        read_fd, write_fd = os.pipe()
        spec = LaunchSpec(**worker, tls_dir=str(tls_dir), host=self.agent.host, port=port,
                          parent=os.getpid(), report_fd=write_fd, argv=argv,
                          path=[str(machine_dir / "code"), *(p for p in sys.path if p)])
        cgroup = MemoryCgroup.create(f"bigmachine-{os.getpid()}-{machine_dir.name}", memory_limit) if memory_limit \
            else None
        if memory_limit:
            spec.memory_limit = memory_limit
            spec.cgroup_procs = cgroup.procs_file if cgroup else None
        env = {**os.environ, **environ, "PYTHONUNBUFFERED": "1", **spec.to_environment()}
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, *subprocess._args_from_interpreter_flags(), "-c", _MACHINE_BOOT,  # type: ignore[attr-defined]
                env=env, cwd=machine_dir, pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # its own group: see below
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise
        finally:
            os.close(write_fd)
        relays = [asyncio.create_task(self._relay(self.process.stdout, "stdout")),
                  asyncio.create_task(self._relay(self.process.stderr, "stderr"))]
        listener = asyncio.create_task(self._listen())
        pinger = asyncio.create_task(self._ping(float(hello.get("ping", 5.0))))
        oom = False
        try:
            served = await _read_port(read_fd)
            if served is not None:
                await self._say("ready", port=served)
            await self.process.wait()
            await asyncio.gather(*relays)  # the last lines say why it ended
        except asyncio.CancelledError:
            if self.agent.stopped is None:
                raise  # otherwise: the machine ends below, and the driver hears why
        finally:
            for task in (listener, pinger, *relays):
                task.cancel()
            await asyncio.gather(listener, pinger, *relays, return_exceptions=True)
            await self._stop_process()
            kill_group(self.process.pid)  # what its services started ends with it
            if cgroup is not None:
                cgroup.kill()
                oom = cgroup.oom_kills() > 0
                await asyncio.to_thread(cgroup.remove)
        code = self.process.returncode
        assert code is not None
        reason = describe_exit(code) + (f" (its agent was {self.agent.stopped})" if self.agent.stopped else "")
        if oom and code < 0:
            code, reason = EXIT_OUT_OF_MEMORY, f"ran out of memory: the kernel's OOM killer ended it at its limit " \
                                               f"of {int(memory_limit or 0) >> 20} MiB"
        await self._say("exit", status=code, reason=reason)
        return f"the machine process {reason}"

    async def _relay(self, stream: asyncio.StreamReader | None, name: str) -> None:
        """Relays the machine's output line by line: long lines in pieces, a ``\\r`` progress bar's latest state."""
        assert stream is not None
        splitter = LineSplitter()
        data = b"more"
        while data:
            try:
                data = await asyncio.wait_for(stream.read(65536), splitter.progress_due(time.monotonic()))
                lines = splitter.feed(data, time.monotonic()) if data else splitter.close()
            except TimeoutError:  # a rewritten line's state is due, though no more output came
                lines = splitter.progress(time.monotonic())
            for raw in lines:
                line = raw.decode(errors="replace")
                if self.connected:
                    await self._say("out", stream=name, line=line)
                else:  # nobody listens: keep it in the agent's own log
                    print(f"machine: {line}", file=sys.stderr, flush=True)

    async def _listen(self) -> None:
        """Follows the driver's requests (``kill``) until it goes away."""
        try:
            while True:
                header, _ = await receive(self.reader)
                if header["type"] == "kill" and self.process is not None and self.process.returncode is None:
                    logger.info("agent: the driver stops the machine")
                    self.process.terminate()
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            self.connected = False
            logger.info("agent: the driver went away; the machine runs while its lease lasts")

    async def _ping(self, period: float) -> None:
        while self.connected:
            await asyncio.sleep(period)
            await self._say("ping", time=time.time())

    async def _stop_process(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), _KILL_GRACE)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _read_port(fd: int) -> int | None:
    """The port in the address the machine reports on ``fd`` (None if it ended first)."""
    def read() -> bytes:
        with os.fdopen(fd, "rb") as f:
            return f.readline()

    line = (await asyncio.to_thread(read)).decode().strip()
    return int(line.rstrip("/").rsplit(":", 1)[1]) if line else None


def _key_and_request(common_name: str) -> tuple[Any, str]:
    """A new P-256 key, kept here, and a signing request for it (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def _write_identity(directory: Path, ca: str, cert: str, key: Any) -> Path:
    from cryptography.hazmat.primitives import serialization as ser

    from .. import tls

    key_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    return tls.Identity(ca.encode(), cert.encode(), key_pem).write(directory)


def _addresses(local: str) -> list[str]:
    """This host's IP addresses, the one the driver reached first."""
    found = [local]
    try:
        import psutil

        for addrs in psutil.net_if_addrs().values():
            found += [a.address for a in addrs if a.family == socket.AF_INET and not a.address.startswith("127.")]
    except ImportError:  # pragma: no cover - psutil is a dependency
        pass
    return list(dict.fromkeys(found))


def _unpack(archive: bytes, into: Path) -> None:
    """Extracts the driver's code, refusing names that would land outside ``into``."""
    if not archive:
        return
    root = into.resolve()
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for name in zf.namelist():
            target = (root / name).resolve()
            if not target.is_relative_to(root):
                raise _Refused(f"the code archive holds {name!r}, outside the code directory")
        zf.extractall(root)


def _satisfied(requirement: str) -> bool:
    """Whether a ``name==version`` requirement is installed already (anything else goes to pip)."""
    from importlib import metadata

    name, sep, version = requirement.partition("==")
    if not sep or any(c in name for c in "<>=!~;@ ["):
        return False
    try:
        return metadata.version(name.strip()) == version.strip()
    except metadata.PackageNotFoundError:
        return False


def _power_off(command: Sequence[str], reason: str) -> None:
    if not command:
        return
    logger.warning("agent: powering off (%s): %s", reason, shlex.join(command))
    try:
        subprocess.run(list(command), env={**os.environ, "BIGMACHINE_POWEROFF_REASON": reason}, timeout=120,
                       stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.error("agent: power-off command failed: %s", exc)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bigmachine.systems.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to serve on (the machine's)")
    parser.add_argument("--credentials", required=True, metavar="FILE",
                        help="the bootstrap identity (JSON from BootstrapAuthority.credentials)")
    parser.add_argument("--machines", type=int, metavar="N",
                        help="serve at most N machines (default: as many as the driver starts here)")
    parser.add_argument("--workdir", metavar="DIR", help="where machines keep code and keys (default: a temp dir)")
    parser.add_argument("--poweroff", default="", metavar="CMD", help="run when the machine ends, e.g. 'sudo poweroff'")
    parser.add_argument("--pip", default="", metavar="CMD",
                        help="installs requirements, given -r FILE (default: this Python's pip install)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    host, _, port = args.listen.rpartition(":")
    credentials = json.loads(Path(args.credentials).read_text())
    # SIGTERM (Slurm's scancel, systemd, a driver's kill) waits until the agent can take it as a
    # stop: raising SystemExit wherever it landed once cut short the removal of the workdir.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bigmachine-agent-"))
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    agent = Agent(host.strip("[]") or "0.0.0.0", int(port), credentials, workdir,
                  poweroff=shlex.split(args.poweroff), pip=shlex.split(args.pip), machines=args.machines)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop("stopped by a signal"))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    reason = "the agent failed"
    try:
        reason = asyncio.run(agent.run())
    finally:
        logger.info("agent: done: %s", reason)
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        _power_off(agent.poweroff, reason)
    if agent.stopped is not None:
        sys.exit(128 + signal.SIGTERM)  # as a shell reports a process SIGTERM ended


if __name__ == "__main__":
    main()
