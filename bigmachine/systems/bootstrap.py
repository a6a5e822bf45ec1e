"""The driver's side of bootstrapping a machine through an agent (``bigmachine.systems.agent``).

Two authorities are at work. The session's (``bigmachine.tls.Authority``) signs the
machines' working certificates; its key never leaves the driver. A separate
``BootstrapAuthority`` signs only what agents start with: a short-lived certificate
good for serving one bootstrap (server auth only, so it cannot call any machine, and
from an authority no machine trusts) and the driver's client certificate towards
agents. Whoever reads an agent's credentials (EC2 user-data is readable on the
instance and through the EC2 API) can at most pretend to be that one agent, for
minutes, to a driver that connects to its address; the agent serves one driver's
session (a connection per machine, up to its ``--machines``), and each machine's key
is generated on the host and only its CSR travels.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import ssl
import sys
import tempfile
import time
from dataclasses import astuple
from typing import TYPE_CHECKING, Any

from .. import tls
from ..errors import Error, MachineStopped, OutOfMemory
from . import agent as agent_protocol  # its messages and names (not rpc.wire: a protocol of its own)
from . import output
from .base import Instance
from ..runtime.spec import EXIT_OUT_OF_MEMORY
from .output import Forwarder
from .shipping import Shipment, environment

if TYPE_CHECKING:
    from ..machine import Machine
    from ..session import B

__all__ = ["AgentInstance", "BootstrapAuthority", "probe", "sign_request"]

logger = logging.getLogger(__name__)

_PYTHON = ".".join(map(str, sys.version_info[:3]))
_CONNECT_TIMEOUT = 5.0
_RETRY_EVERY = 2.0
_OUTPUT_GRACE = 1.0  # seconds a stopped machine's last output gets to be written


class BootstrapAuthority:
    """Signs agents' one-bootstrap certificates and the driver's certificate towards agents.

    An authority of its own, apart from the session's: no machine trusts it, so a bootstrap
    credential read from an instance's user-data can't call anything.
    """

    def __init__(self, *, lifetime: float = 900.0) -> None:
        self.lifetime = lifetime
        self._authority = tls.Authority("bigmachine bootstrap")
        self.ca_pem = self._authority.ca_pem.decode()
        self._client: ssl.SSLContext | None = None

    def credentials(self, name: str, *, lifetime: float | None = None) -> dict[str, Any]:
        """What the agent called ``name`` starts with (JSON-ready): good for serving one bootstrap, briefly."""
        life = self.lifetime if lifetime is None else lifetime
        cert, key = self._issue(agent_protocol.agent_name(name), "server", life)
        return {"version": 1, "name": name, "ca": self.ca_pem, "cert": cert, "key": key, "expires": time.time() + life}

    def client_context(self) -> ssl.SSLContext:
        """The driver's TLS context towards agents: presents the driver certificate, trusts only this authority."""
        if self._client is None:
            identity = self._authority.issue([], common_name=agent_protocol.DRIVER_NAME, usages=("client",),
                                             lifetime=datetime.timedelta(days=7))
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.check_hostname = False  # an agent's address is unknown when its certificate is made: the name is checked
            ctx.load_verify_locations(cadata=self.ca_pem)
            with tempfile.TemporaryDirectory(prefix="bigmachine-bootstrap-") as tmp:  # ssl loads keys from files only
                path = identity.write(tmp)
                ctx.load_cert_chain(path / tls.CERT_FILE, path / tls.KEY_FILE)
            self._client = ctx
        return self._client

    def _issue(self, common_name: str, usage: str, lifetime: float) -> tuple[str, str]:
        identity = self._authority.issue([], common_name=common_name, usages=(usage,),
                                         lifetime=datetime.timedelta(seconds=lifetime))
        return identity.cert_pem.decode(), identity.key_pem.decode()


def sign_request(authority: tls.Authority, csr_pem: str, hosts: list[str], *, common_name: str) -> bytes:
    """A working certificate from the session's authority for the key of a signing request.

    The driver decides the names (``hosts``); the request only contributes its public key.
    """
    return authority.sign_request(csr_pem.encode(), hosts, common_name=common_name)


class AgentInstance(Instance):
    """A machine started through an agent: bootstraps it, then relays its output until it ends.

    Subclasses say where the agent is (``_locate``) and may watch for more ways to end
    (``_suspect`` is called when the agent's pings stop or its connection breaks).
    """

    def __init__(self, session: B, machine: Machine, authority: BootstrapAuthority, agent: str,
                 shipment: Shipment, environ: dict[str, str], *, system: str, ping: float) -> None:
        self.machine = machine
        self.agent = agent  # the name the agent's credentials were issued for
        self._forwarder = Forwarder(machine.name)
        self.output = self._forwarder.recent
        self.facts: dict[str, Any] = {}
        self.last_heard = 0.0
        self._session, self._authority, self._shipment = session, authority, shipment
        self._environ, self._system, self._ping = environ, system, ping
        self._host = ""
        self._writer: asyncio.StreamWriter | None = None
        loop = asyncio.get_running_loop()
        self._address: asyncio.Future[str] = loop.create_future()
        self._exit: asyncio.Future[BaseException] = loop.create_future()
        self._killing: asyncio.Future[None] | None = None
        self._task = loop.create_task(self._run())

    # ------------------------------------------------------------------ Instance

    async def address(self) -> str:
        return await asyncio.shield(self._address)

    async def wait_exit(self) -> BaseException:
        return await asyncio.shield(self._exit)

    async def kill(self) -> None:
        if self._killing is None:
            self._killing = asyncio.get_running_loop().create_future()
            try:
                await self._stop()
                await output.drained(_OUTPUT_GRACE)
            finally:
                self._killing.set_result(None)
        await asyncio.shield(self._killing)

    @property
    def prefix(self) -> str:
        """What each forwarded line of this machine starts with: its ``host:port`` once known."""
        return self._forwarder.prefix

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {k: self.facts[k] for k in ("hostname", "python", "cpus", "pid") if k in self.facts}
        return {"agent": self.agent, **({"host": self._host} if self._host else {}), **facts}

    # ------------------------------------------------------------------ hooks

    async def _locate(self) -> tuple[str, int]:
        """The agent's host and port, once it can be reached."""
        raise NotImplementedError

    def _maxprocs(self, hello: dict[str, Any]) -> int:
        """Processors the machine may use: by default all the agent's host reported."""
        return int(hello.get("cpus") or 1)

    def _memory_limit(self, hello: dict[str, Any]) -> int | None:
        """Bytes of memory the machine may use (None: no limit of its own)."""
        return None

    async def _waiting(self) -> None:
        """Called between attempts to reach the agent; raises to give up (the host is gone)."""

    def _suspect(self, why: str) -> None:
        """The agent went quiet (its pings stopped, or its connection broke)."""
        logger.info("%s: %s", self.prefix, why)

    async def _stop(self) -> None:
        """Stops the machine: asks the agent to end it, waits a little, hangs up."""
        if self._writer is not None and not self._exit.done():
            try:
                await asyncio.wait_for(agent_protocol.send(self._writer, "kill"), 2.0)
                await asyncio.wait_for(asyncio.shield(self._exit), 5.0)
            except (TimeoutError, ConnectionError, OSError, RuntimeError):
                pass
        await self._hang_up(MachineStopped(f"machine {self.machine.addr or self.machine.name} was stopped by the "
                                           "driver", machine=self.machine.addr))

    async def _hang_up(self, err: BaseException) -> None:
        """Ends the link (its task included) and resolves the exit with ``err`` unless it already ended."""
        self._end(err)
        if self._task is not asyncio.current_task():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close()

    def _end(self, err: BaseException) -> None:
        self._forwarder.close()
        if not self._address.done():
            self._address.set_exception(err)
            self._address.exception()  # retrieved: the session may never ask
        if not self._exit.done():
            self._exit.set_result(err)

    # ------------------------------------------------------------------ the link

    async def _run(self) -> None:
        try:
            host, port = await self._locate()
            self._host = host
            reader, self._writer = await self._connect(host, port)
            addr = await self._bootstrap(reader, self._writer, host)
            self._forwarder.prefix = addr.removeprefix("https://").rstrip("/")
            self._address.set_result(addr)
            await self._follow(reader)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure ends the machine, with its reason
            if not isinstance(exc, Error):
                exc = MachineStopped(f"machine {self.machine.name} (agent {self.agent}): {type(exc).__name__}: {exc}",
                                     machine=self.machine.addr)
            self._end(exc)
        finally:
            await self._close()

    async def _close(self) -> None:
        """Closes the link to the agent, waiting (briefly) until it is closed."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        await _shut(writer)

    async def _connect(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connects to the agent, retrying while it isn't up yet; checks it is the agent expected."""
        context = self._authority.client_context()
        attempts = 0
        while True:
            try:
                reader, writer = await asyncio.wait_for(self._open(host, port, context), _CONNECT_TIMEOUT)
                break
            except ssl.SSLCertVerificationError as exc:
                raise Error(f"the agent at {host}:{port} presented a certificate the bootstrap authority did not "
                            f"sign: {exc.verify_message}") from exc
            except (OSError, TimeoutError) as exc:
                attempts += 1
                if attempts == 1 or attempts % 15 == 0:
                    logger.info("%s: waiting for the agent at %s:%d (%s)", self.prefix, host, port,
                                exc or type(exc).__name__)
                await asyncio.sleep(_RETRY_EVERY)
                await self._waiting()
        subject = dict(x[0] for x in (writer.get_extra_info("peercert") or {}).get("subject", ()))
        if subject.get("commonName") != agent_protocol.agent_name(self.agent):
            await _shut(writer)
            raise Error(f"the agent at {host}:{port} is {subject.get('commonName')!r}, not "
                        f"{agent_protocol.agent_name(self.agent)!r}")
        return reader, writer

    async def _open(self, host: str, port: int,
                    context: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(host, port, ssl=context, server_hostname=None)

    async def _bootstrap(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> str:
        session, machine, shipment = self._session, self.machine, self._shipment
        await agent_protocol.send(writer, "hello", python=_PYTHON, session=session.name, machine=machine.name, ping=self._ping)
        hello = await self._reply(reader, "hello")
        self.facts = hello
        hosts = [host, *(a for a in hello.get("addresses", []) if _is_ip(a))]
        cert = sign_request(session.authority, hello["csr"], hosts, common_name=machine.name)
        await agent_protocol.send(writer, "code", shipment.archive, requirements=shipment.requirements)
        system = session.system
        worker = {"session": session.name, "lease": system.initial_lease(), "maxprocs": self._maxprocs(hello),
                  "system": self._system, "argv": sys.argv, "service_threads": system.service_threads,
                  "keepalive": astuple(system.liveness)}
        await agent_protocol.send(writer, "start", ca=session.authority.ca_pem.decode(), cert=cert.decode(), worker=worker,
                        main=shipment.main, environ=environment(self._environ), memory_limit=self._memory_limit(hello))
        ready = await self._reply(reader, "ready")
        return f"https://{'[' + host + ']' if ':' in host else host}:{int(ready['port'])}/"

    async def _reply(self, reader: asyncio.StreamReader, kind: str) -> dict[str, Any]:
        """The next message of ``kind``, relaying output on the way; the agent's error or exit fails it."""
        while True:
            header, _ = await agent_protocol.receive(reader)
            self.last_heard = time.monotonic()
            if header["type"] == kind:
                return header
            if header["type"] == "error":
                raise MachineStopped(f"machine {self.machine.name}: the agent {self.agent} refused: "
                                     f"{header.get('message')}", machine="")
            if header["type"] == "exit":
                raise MachineStopped(f"machine {self.machine.name}: its process on {self.agent} "
                                     f"{header.get('reason')} before serving; its output above says why", machine="")
            self._handle(header)

    async def _follow(self, reader: asyncio.StreamReader) -> None:
        """Relays the agent's messages until the machine ends; silence or a broken link is suspect."""
        quiet = max(3 * self._ping, 5.0)
        while True:
            try:
                header, _ = await asyncio.wait_for(agent_protocol.receive(reader), quiet)
            except TimeoutError:
                self._suspect(f"no word from the agent {self.agent} for {time.monotonic() - self.last_heard:.0f} s")
                continue
            except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError) as exc:
                self._suspect(f"lost the connection to the agent {self.agent}: {type(exc).__name__}: {exc}")
                return
            self.last_heard = time.monotonic()
            if header["type"] == "exit":
                kind = OutOfMemory if header.get("status") == EXIT_OUT_OF_MEMORY else MachineStopped
                self._end(kind(f"machine {self.machine.addr} process on {self._host or self.agent} "
                               f"{header.get('reason')}", machine=self.machine.addr))
                return
            self._handle(header)

    def _handle(self, header: dict[str, Any]) -> None:
        if header["type"] == "out":
            stream = "stderr" if header.get("stream") == "stderr" else "stdout"
            self._forwarder.line(stream, str(header.get("line", "")))


async def probe(authority: BootstrapAuthority, host: str, port: int) -> dict[str, Any]:
    """The facts (``cpus``, ``memory``, ...) of the agent at ``host:port``, without starting a machine there."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=authority.client_context(), server_hostname=None), _CONNECT_TIMEOUT)
    try:
        await agent_protocol.send(writer, "hello", probe=True)
        header, _ = await asyncio.wait_for(agent_protocol.receive(reader), _CONNECT_TIMEOUT)
    finally:
        await _shut(writer)
    return header


async def _shut(writer: asyncio.StreamWriter) -> None:
    """Closes a connection and waits (briefly) until it is: a loop must not close with it open."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except (TimeoutError, ConnectionError, OSError, ssl.SSLError):
        writer.transport.abort()
    except BaseException:  # cancelled (the session shuts down): still leave nothing open
        writer.transport.abort()
        raise


def _is_ip(text: Any) -> bool:
    try:
        ipaddress.ip_address(str(text))
    except ValueError:
        return False
    return True


