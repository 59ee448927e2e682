"""A session's kept downloads, asked of warm_pool (which keeps them) over request/reply."""
import asyncio
from uuid import UUID

from shared.http import APIError
from shared.messages import DOWNLOADS_QUEUE, DownloadsReply, DownloadsRequest
from shared.rpc import RpcClient, RpcTimeout, RpcUnroutable


class DownloadsClient:
    def __init__(self, url: str, *, timeout_s: float):
        self.rpc = RpcClient(url)
        self.timeout_s = timeout_s
        self._connected = False
        self._lock = asyncio.Lock()

    async def _ensure(self) -> None:
        if not self._connected:
            async with self._lock:
                if not self._connected:
                    await self.rpc.connect()
                    self._connected = True

    async def __call__(self, op: str, tenant_id: UUID, session_id: UUID, **fields) -> DownloadsReply:
        """The reply of a successful request; an APIError in the error shape otherwise."""
        body = DownloadsRequest(op=op, tenant_id=tenant_id, session_id=session_id, **fields).model_dump_json().encode()
        try:
            await self._ensure()
            raw = await self.rpc.call(DOWNLOADS_QUEUE, body, timeout=self.timeout_s)
            reply = DownloadsReply.model_validate_json(raw)
        except (RpcTimeout, RpcUnroutable, OSError, ConnectionError):
            raise APIError(503, "unavailable", "the downloads store did not answer, retry later") from None
        if not reply.ok:
            if reply.error == "not_found":
                raise APIError(404, "not_found", "download not found")
            raise APIError(503, "unavailable", "reading the download failed, retry later")
        return reply

    async def close(self) -> None:
        if self._connected:
            await self.rpc.close()
