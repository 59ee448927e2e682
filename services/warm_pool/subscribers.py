"""Who takes what: warm_pool's message subscriptions and the lease RPC server."""
import asyncio
import logging
from functools import partial

from faststream import AckPolicy
from faststream.rabbit import RabbitQueue

from services.warm_pool import handlers
from shared.messages import (LEASE_QUEUE, LeaseReply, LeaseRequest, SessionCompleted, SessionStarted,
                             SubscriptionChanged, TenantProvisioned)
from shared.service import Runtime

log = logging.getLogger(__name__)
# A lease request nobody answered within this long is stale: its caller has given up.
LEASE_TTL_MS = 10_000


def lease_queue() -> RabbitQueue:
    return RabbitQueue(LEASE_QUEUE, durable=True, arguments={"x-message-ttl": LEASE_TTL_MS})


def register(runtime: Runtime, *, ports: handlers.PoolPorts) -> None:
    runtime.consumers.on(TenantProvisioned, partial(handlers.tenant_provisioned, ports=ports))
    runtime.consumers.on(SubscriptionChanged, partial(handlers.subscription_changed, ports=ports))
    runtime.consumers.on(SessionStarted, partial(handlers.session_started, ports=ports))
    runtime.consumers.on(SessionCompleted, partial(handlers.session_completed, ports=ports))

    # Competing consumers across replicas; acked on receipt (a lost request times out at the
    # caller), so deliveries run concurrently, bounded here rather than by the prefetch.
    workers = asyncio.Semaphore(ports.settings.lease_workers)

    @runtime.broker.subscriber(lease_queue(), ack_policy=AckPolicy.ACK_FIRST)
    async def lease(request: LeaseRequest) -> LeaseReply:
        async with workers:
            try:
                return await handlers.lease(request, ports=ports)
            except Exception:
                log.exception("lease failed", extra={"tenant_id": str(request.tenant_id)})
                return LeaseReply(ok=False, error="error")
