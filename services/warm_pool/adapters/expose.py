"""Expose a browser's DevTools port beyond this host.

Headless Chromium binds DevTools to 127.0.0.1 whatever --remote-debugging-address says, so
when sessions runs in another container (Compose), warm_pool forwards a port on all
interfaces to each browser and advertises that address instead. Only for a trusted private
network: whoever reaches the port controls the browser (the kubernetes backend fences pods
with network policy instead).
"""
import asyncio
import contextlib
from uuid import UUID


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class PortForwarder:
    def __init__(self, bind_host: str = "0.0.0.0"):
        self.bind_host = bind_host
        self._servers: dict[UUID, asyncio.base_events.Server] = {}

    async def open(self, browser_id: UUID, target_port: int, *, host: str = "127.0.0.1") -> int:
        async def forward(client_reader, client_writer):
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(host, target_port)
            except OSError:
                client_writer.close()
                return
            await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

        server = await asyncio.start_server(forward, host=self.bind_host, port=0)
        self._servers[browser_id] = server
        return server.sockets[0].getsockname()[1]

    async def close(self, browser_id: UUID) -> None:
        server = self._servers.pop(browser_id, None)
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)
