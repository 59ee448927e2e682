"""The host-port relay's copying (relays.py): what goes in comes out, both ways and in bulk, and a
connection with no traffic for IDLE_TIMEOUT_S is closed while a busy one is not."""
import asyncio
import os


from services.warm_pool.adapters import relays


async def _echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _relay_to_echo():
    upstream = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    relay = await asyncio.start_server(relays._Gate(4).wrap(relays._forwarder("127.0.0.1", port)), "127.0.0.1", 0)
    return upstream, relay, relay.sockets[0].getsockname()[1]


async def test_bulk_data_crosses_the_relay_both_ways_unchanged():
    upstream, relay, port = await _relay_to_echo()
    payload = os.urandom(5 * 2**20)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send():
        for i in range(0, len(payload), 100_000):
            writer.write(payload[i:i + 100_000])
            await writer.drain()
        writer.write_eof()
    sending = asyncio.ensure_future(send())
    received = await asyncio.wait_for(reader.read(-1), 60)
    await sending
    assert received == payload
    writer.close()
    relay.close()
    upstream.close()


async def test_an_idle_connection_is_closed_and_a_busy_one_is_not(monkeypatch):
    monkeypatch.setattr(relays, "IDLE_TIMEOUT_S", 0.5)
    upstream, relay, port = await _relay_to_echo()
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
    closed = asyncio.ensure_future(idle_reader.read())

    async def ping():
        busy_writer.write(b"ping")
        assert await asyncio.wait_for(busy_reader.readexactly(4), 10) == b"ping"
        await asyncio.sleep(0.1)
    # Busy for as long as the idle one lasts, and an idle period more: each message still comes back.
    for _ in range(100):
        if closed.done():
            break
        await ping()
    for _ in range(6):
        await ping()
    assert await asyncio.wait_for(closed, 10) == b""  # closed by the relay, never answered
    busy_writer.write(b"pong")
    assert await asyncio.wait_for(busy_reader.readexactly(4), 10) == b"pong"
    for writer in (idle_writer, busy_writer):
        writer.close()
    relay.close()
    upstream.close()


