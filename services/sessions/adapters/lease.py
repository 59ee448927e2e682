"""Lease a browser from warm_pool over the lease RPC queue."""
import time
from uuid import UUID

from services.sessions.metrics import LEASE_SECONDS
from shared.messages import LEASE_QUEUE, LeaseReply, LeaseRequest
from shared.rpc import RpcClient


class LeaseClient:
    def __init__(self, url: str, *, timeout_s: float):
        self.rpc = RpcClient(url)
        self.timeout_s = timeout_s

    async def __call__(self, tenant_id: UUID, session_id: UUID, *, isolation: str = "browser",
                       profile_id: UUID | None = None, persist: bool = False, ahead: bool = False) -> LeaseReply:
        started, outcome = time.perf_counter(), "error"
        try:
            request = LeaseRequest(tenant_id=tenant_id, session_id=session_id, isolation=isolation,
                                   profile_id=profile_id, persist=persist, ahead=ahead)
            reply = await self.rpc.ask(LEASE_QUEUE, request, LeaseReply, timeout=self.timeout_s)
            outcome = "ok" if reply.ok else (reply.error or "error")
            return reply
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            LEASE_SECONDS.labels(outcome).observe(time.perf_counter() - started)

    async def close(self) -> None:
        await self.rpc.close()
