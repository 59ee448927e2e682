"""Who takes what: warm_pool's message subscriptions and the lease RPC server."""
import asyncio
import logging
from functools import partial

from faststream import AckPolicy
from faststream.rabbit import RabbitQueue

from services.warm_pool import handlers, profiles as profile_ops
from services.warm_pool.downloads import Downloads
from services.warm_pool.handlers_profiles import ProfileSessions
from services.warm_pool.ports import Pool, UnitOfWork
from shared.messages import (DOWNLOADS_QUEUE, LEASE_QUEUE, DownloadsReply, DownloadsRequest, PROFILES_QUEUE, LeaseReleased, LeaseReply, LeaseRequest, ProfileReply, ProfileRequest,
                             SessionCompleted, SessionStarted, SubscriptionChanged, TenantProvisioned)
from shared.service import Runtime

log = logging.getLogger(__name__)
# A lease request nobody answered within this long is stale: its caller has given up.
LEASE_TTL_MS = 10_000


def lease_queue() -> RabbitQueue:
    return RabbitQueue(LEASE_QUEUE, durable=True, arguments={"x-message-ttl": LEASE_TTL_MS})


def profiles_queue() -> RabbitQueue:
    return RabbitQueue(PROFILES_QUEUE, durable=True, arguments={"x-message-ttl": LEASE_TTL_MS})


def downloads_queue() -> RabbitQueue:
    return RabbitQueue(DOWNLOADS_QUEUE, durable=True, arguments={"x-message-ttl": LEASE_TTL_MS})


def register(runtime: Runtime, *, pool: Pool, uow: UnitOfWork, profiles: ProfileSessions | None = None,
             downloads: Downloads | None = None) -> None:
    settings = runtime.settings
    runtime.consumers.on(TenantProvisioned, partial(handlers.tenant_provisioned, pool=pool, uow=uow))
    runtime.consumers.on(SubscriptionChanged, partial(handlers.subscription_changed, pool=pool, uow=uow,
                                                      plans_file=settings.plans_file))
    runtime.consumers.on(SessionStarted, partial(handlers.session_started, uow=uow))
    runtime.consumers.on(LeaseReleased, partial(handlers.lease_released, pool=pool, uow=uow))
    runtime.consumers.on(SessionCompleted, partial(handlers.session_completed, pool=pool, uow=uow,
                                                   profiles=profiles))

    # Competing consumers across replicas; acked on receipt (a lost request times out at the
    # caller), so deliveries run concurrently, bounded here rather than by the prefetch.
    workers = asyncio.Semaphore(settings.lease_workers)

    @runtime.broker.subscriber(lease_queue(), ack_policy=AckPolicy.ACK_FIRST)
    async def lease(request: LeaseRequest) -> LeaseReply:
        async with workers:
            try:
                reply = await handlers.lease(request, pool=pool, uow=uow, profiles=profiles)
                # Unconfirmed for this long, the lease is reclaimed: its holder knows its deadline.
                return reply.model_copy(update={"confirm_within_s": settings.lease_confirm_timeout_s}) if reply.ok else reply
            except Exception:
                log.exception("lease failed", extra={"tenant_id": str(request.tenant_id)})
                return LeaseReply(ok=False, error="error")

    # The public profile API's operations (sessions serves it), answered by any replica.
    @runtime.broker.subscriber(profiles_queue(), ack_policy=AckPolicy.ACK_FIRST)
    async def profile_request(request: ProfileRequest) -> ProfileReply:
        if profiles is None or not profiles.store.available:
            return ProfileReply(ok=False, error="unavailable")
        try:
            return await profile_ops.request(request, uow=uow, store=profiles.store)
        except Exception:
            log.exception("profile request failed", extra={"tenant_id": str(request.tenant_id), "op": request.op})
            return ProfileReply(ok=False, error="error")

    if downloads is None:
        return

    # A session's kept downloads (sessions serves them), answered by any replica sharing DOWNLOADS_ROOT.
    # The reply is encoded here: its bytes travel base64-encoded (DownloadsReply's JSON config).
    @runtime.broker.subscriber(downloads_queue(), ack_policy=AckPolicy.ACK_FIRST)
    async def downloads_request(request: DownloadsRequest) -> bytes:
        async with workers:
            try:
                reply = await downloads.serve(request)
            except Exception:
                log.exception("downloads request failed", extra={"tenant_id": str(request.tenant_id),
                                                                 "op": request.op})
                reply = DownloadsReply(ok=False, error="error")
            return reply.model_dump_json().encode()
