"""What a sandboxed browser may reach of the host, served inside its own network namespace.

For each port in `BROWSER_HOST_PORTS`, a listener on the namespace's 127.0.0.1 and ::1 whose
connections this process carries to the same port on the host's loopback, so `localhost:3000`
in the browser is the developer's `localhost:3000`. And DNS: the browser's resolv.conf names
127.0.0.1, where a relay passes queries to the host's resolvers (which are often on a private
address the browser could never reach itself). Nothing else of the host has a way in.
"""
import asyncio
import contextlib
import logging
import socket
from pathlib import Path

from services.warm_pool.adapters.netns import NS_THREAD, in_netns

log = logging.getLogger(__name__)
MAX_DNS_IN_FLIGHT = 64
DNS_TIMEOUT_S = 5.0
# Per browser: connections at once through its host-port listeners and its DNS-over-TCP one, and
# how long one may sit idle. Each costs this process two descriptors; uncapped, one tenant could
# take them all (and every other tenant's launches with them).
MAX_HOST_PORT_CONNECTIONS = 64
MAX_DNS_TCP_CONNECTIONS = 8
IDLE_TIMEOUT_S = 300.0
RELAY_CHUNK = 256 * 1024
DNS_TCP_IDLE_S = 10.0


def host_resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    servers = []
    with contextlib.suppress(OSError):
        for line in resolv_conf.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                servers.append(parts[1])
    return servers or ["127.0.0.1"]


def _bind(family: int, kind: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


async def _sockets_in(netns_path: str, specs: list[tuple[int, int, str, int]]) -> list[socket.socket]:
    def make():
        made = []
        try:
            for spec in specs:
                made.append(_bind(*spec))
        except BaseException:
            for sock in made:
                sock.close()
            raise
        return made
    return await asyncio.get_running_loop().run_in_executor(NS_THREAD, in_netns, netns_path, make)


class _DnsRelay(asyncio.DatagramProtocol):
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.transport = None
        self.in_flight = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if self.in_flight >= MAX_DNS_IN_FLIGHT or len(data) > 4096:
            return
        self.in_flight += 1
        asyncio.ensure_future(self._ask(data, addr))

    async def _ask(self, query: bytes, addr) -> None:
        loop = asyncio.get_running_loop()
        answer = loop.create_future()

        class Upstream(asyncio.DatagramProtocol):
            def datagram_received(self, data, _):
                if not answer.done():
                    answer.set_result(data)

        transport = None
        try:
            transport, _ = await loop.create_datagram_endpoint(Upstream, remote_addr=self.upstream)
            transport.sendto(query)
            reply = await asyncio.wait_for(answer, DNS_TIMEOUT_S)
            if self.transport is not None and not self.transport.is_closing():
                self.transport.sendto(reply, addr)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            self.in_flight -= 1
            if transport is not None:
                transport.close()


class NamespaceRelays:
    """The listeners of one browser's namespace; `close` ends them and their connections."""

    def __init__(self):
        self._servers: list[asyncio.base_events.Server] = []
        self._transports: list[asyncio.BaseTransport] = []
        self._host_ports = _Gate(MAX_HOST_PORT_CONNECTIONS)
        self._dns_tcp = _Gate(MAX_DNS_TCP_CONNECTIONS)

    async def open(self, netns_path: str, *, host_ports: list[int], resolvers: list[str]) -> None:
        specs = [(socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1", 53),
                 (socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", 53)]
        for port in host_ports:
            specs += [(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", port),
                      (socket.AF_INET6, socket.SOCK_STREAM, "::1", port)]
        socks = await _sockets_in(netns_path, specs)
        loop = asyncio.get_running_loop()
        upstream = (resolvers[0], 53)
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: _DnsRelay(upstream), sock=socks[0])
            self._transports.append(transport)
            self._servers.append(await asyncio.start_server(self._dns_tcp.wrap(_dns_over_tcp(upstream)),
                                                            sock=socks[1]))
            for sock, port in zip(socks[2:], [p for p in host_ports for _ in (0, 1)]):
                self._servers.append(await asyncio.start_server(
                    self._host_ports.wrap(_forwarder("127.0.0.1", port)), sock=sock))
        except BaseException:
            for sock in socks:
                sock.close()
            await self.close()
            raise

    async def close(self) -> None:
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            server.close()
            with contextlib.suppress(AttributeError):  # Python 3.13: end the connections too
                server.close_clients()
        self._servers, self._transports = [], []


class _Gate:
    """At most `limit` connections at once; the one past it is closed at once."""

    def __init__(self, limit: int):
        self.limit, self.open = limit, 0

    def wrap(self, handler):
        async def gated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if self.open >= self.limit:
                writer.close()
                return
            self.open += 1
            try:
                await handler(reader, writer)
            finally:
                self.open -= 1
                writer.close()
        return gated


async def _idle_pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction, until EOF (passed on as a half-close: the answer may still be coming the
    other way) or IDLE_TIMEOUT_S without progress (then the connection ends). One timer for the
    whole pipe, moved on at each chunk (a `wait_for` per read costs a task and a timer each)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(IDLE_TIMEOUT_S) as idle:
            while data := await reader.read(RELAY_CHUNK):
                writer.write(data)
                await writer.drain()
                idle.reschedule(loop.time() + IDLE_TIMEOUT_S)
        if writer.can_write_eof():
            writer.write_eof()
            return
    except (ConnectionError, TimeoutError, asyncio.CancelledError):
        pass
    with contextlib.suppress(Exception):
        writer.close()


def _forwarder(host: str, port: int):
    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            return
        try:
            await asyncio.gather(_idle_pipe(reader, up_writer), _idle_pipe(up_reader, writer))
        finally:
            up_writer.close()
    return forward


def is_dns_query(message: bytes) -> bool:
    """A standard query: a 12-byte header with QR = 0, opcode QUERY, at least one question."""
    return (len(message) >= 12 and not message[2] & 0x80 and (message[2] >> 3) & 0x0F == 0
            and int.from_bytes(message[4:6], "big") >= 1)


def _dns_over_tcp(upstream: tuple[str, int]):
    """DNS over TCP, message by message: anything that is not a DNS query ends the connection,
    so port 53 of the host's resolver is no general-purpose pipe (e.g. for a context's proxy)."""
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_writer = None
        try:
            for _ in range(32):
                size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), DNS_TCP_IDLE_S), "big")
                if not 12 <= size <= 4096:
                    return
                query = await asyncio.wait_for(reader.readexactly(size), DNS_TCP_IDLE_S)
                if not is_dns_query(query):
                    return
                if up_writer is None:
                    up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*upstream), DNS_TIMEOUT_S)
                up_writer.write(size.to_bytes(2, "big") + query)
                await up_writer.drain()
                answer_size = int.from_bytes(await asyncio.wait_for(up_reader.readexactly(2), DNS_TIMEOUT_S), "big")
                answer = await asyncio.wait_for(up_reader.readexactly(answer_size), DNS_TIMEOUT_S)
                writer.write(answer_size.to_bytes(2, "big") + answer)
                await writer.drain()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            if up_writer is not None:
                up_writer.close()
    return relay
