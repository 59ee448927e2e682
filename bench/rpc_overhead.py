"""Lease request/reply round trip, the platform's RPC client against a FastStream subscriber and
against a bare aio-pika consumer, each server in a process of its own, nothing else running.

    python -m bench.rpc_overhead [--calls 500] [--rounds 3]
"""
import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid

import aio_pika
from faststream import AckPolicy
from faststream.rabbit import RabbitQueue

from bench.stats import pct
from shared.broker import make_broker
from shared.messages import LeaseReply, LeaseRequest
from shared.rpc import RpcClient

URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _reply() -> LeaseReply:
    return LeaseReply(ok=True, browser_id=uuid.uuid4(), cdp_ws_url="ws://127.0.0.1:9/devtools/none", warm=True)


async def serve_bare(queue_name: str) -> None:
    connection = await aio_pika.connect_robust(URL)
    channel = await connection.channel()
    queue = await channel.declare_queue(queue_name, auto_delete=True)

    async def on_request(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        LeaseRequest.model_validate_json(message.body)
        await channel.default_exchange.publish(
            aio_pika.Message(_reply().model_dump_json().encode(), correlation_id=message.correlation_id),
            routing_key=message.reply_to)
    await queue.consume(on_request, no_ack=True)
    await asyncio.Event().wait()


async def serve_faststream(queue_name: str) -> None:
    broker = make_broker(URL)

    @broker.subscriber(RabbitQueue(queue_name, auto_delete=True), ack_policy=AckPolicy.ACK_FIRST)
    async def lease(request: LeaseRequest) -> LeaseReply:
        return _reply()
    await broker.start()
    await asyncio.Event().wait()


async def measure(queue_name: str, calls: int) -> float:
    client = RpcClient(URL)
    await client.connect()
    body = LeaseRequest(tenant_id=uuid.uuid4(), session_id=uuid.uuid4()).model_dump_json().encode()
    try:
        for _ in range(50):  # warm-up
            await client.call(queue_name, body, timeout=5)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            await client.call(queue_name, body, timeout=5)
            times.append((time.perf_counter() - started) * 1000)
        return pct(times, 50)
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", choices=("bare", "faststream"), help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run((serve_bare if args.serve == "bare" else serve_faststream)(args.queue))
        return
    results: dict[str, list[float]] = {"bare": [], "faststream": []}
    for _ in range(args.rounds):
        for kind in results:
            queue_name = f"bench.rpc.{kind}.{uuid.uuid4().hex[:8]}"
            server = subprocess.Popen([sys.executable, "-m", "bench.rpc_overhead", "--serve", kind,
                                       "--queue", queue_name])
            try:
                time.sleep(2)  # the server declares its queue
                results[kind].append(asyncio.run(measure(queue_name, args.calls)))
            finally:
                server.terminate()
                server.wait()
    for kind, p50s in results.items():
        print(f"{kind:>10} server: round-trip p50 per round " + ", ".join(f"{v:.2f}" for v in p50s) + " ms")


if __name__ == "__main__":
    main()
