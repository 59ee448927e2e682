"""A session's kept downloads, asked of warm_pool (which keeps them) over request/reply."""
from uuid import UUID

from services.sessions.domain import NotFound, Refused
from shared.messages import DOWNLOADS_QUEUE, DownloadsReply, DownloadsRequest
from shared.rpc import RpcClient, RpcTimeout, RpcUnroutable


class DownloadsClient:
    def __init__(self, url: str, *, timeout_s: float):
        self.rpc = RpcClient(url)
        self.timeout_s = timeout_s

    async def __call__(self, op: str, tenant_id: UUID, session_id: UUID, **fields) -> DownloadsReply:
        """The reply of a successful request; domain.NotFound or domain.Refused otherwise."""
        request = DownloadsRequest(op=op, tenant_id=tenant_id, session_id=session_id, **fields)
        try:
            reply = await self.rpc.ask(DOWNLOADS_QUEUE, request, DownloadsReply, timeout=self.timeout_s)
        except (RpcTimeout, RpcUnroutable, OSError, ConnectionError):
            raise Refused("unavailable", "the downloads store did not answer, retry later") from None
        if not reply.ok:
            if reply.error == "not_found":
                raise NotFound("download not found")
            raise Refused("unavailable", "reading the download failed, retry later")
        return reply

    async def close(self) -> None:
        await self.rpc.close()
