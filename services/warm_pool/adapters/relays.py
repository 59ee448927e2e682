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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from services.warm_pool.adapters.expose import _pipe
from services.warm_pool.adapters.netns import in_netns

log = logging.getLogger(__name__)
MAX_DNS_IN_FLIGHT = 64
DNS_TIMEOUT_S = 5.0

# One thread enters namespaces, so no other work ever runs on a thread that is inside one.
_NS_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netns")


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
    return await asyncio.get_running_loop().run_in_executor(_NS_THREAD, in_netns, netns_path, make)


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
            self._servers.append(await asyncio.start_server(_forwarder(*upstream), sock=socks[1]))
            for sock, port in zip(socks[2:], [p for p in host_ports for _ in (0, 1)]):
                self._servers.append(await asyncio.start_server(_forwarder("127.0.0.1", port), sock=sock))
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


def _forwarder(host: str, port: int):
    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    return forward
