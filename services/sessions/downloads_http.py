"""`/v1/sessions/{id}/downloads`: the files a session's browser downloaded, kept by warm_pool when
the session ends (adapters/downloads.py asks for them), always within the caller's tenant."""
from datetime import datetime
from typing import Awaitable, Callable
from urllib.parse import quote
from uuid import UUID

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from services.sessions import views
from services.sessions.domain import NotFound, Refused
from shared.http import error_responses
from shared.messages import DOWNLOAD_CHUNK_BYTES

MAX_NAME_BYTES = 255


class DownloadOut(BaseModel):
    name: str
    size_bytes: int
    created_at: datetime


class DownloadList(BaseModel):
    data: list[DownloadOut]


def plain_name(name: str) -> bool:
    """Only a plain file name can be a stored one (the rest is a 404 without asking)."""
    return (0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES and name not in (".", "..")
            and not any(c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7f for c in name))


def content_disposition(name: str) -> str:
    """`attachment` with an ASCII fallback name and the exact one (RFC 6266 / 5987)."""
    fallback = "".join(c if 0x20 <= ord(c) < 0x7f and c not in '"\\;' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def unavailable(*_, **__):
    raise Refused("unavailable", "downloads are not available on this deployment")


def router(*, uow, downloads, tenant: Callable[..., Awaitable[UUID]]) -> APIRouter:
    r = APIRouter(tags=["sessions"])

    @r.get("/v1/sessions/{session_id}/downloads", response_model=DownloadList, responses=error_responses(404, 503))
    async def list_downloads(session_id: UUID, tenant_id: UUID = Depends(tenant)):
        """The files the session's browser downloaded. They are collected when the session ends
        (until then the list is empty) and kept `DOWNLOADS_RETENTION_S` (24 h) after that."""
        await views.get_session(uow=uow, tenant_id=tenant_id, session_id=session_id)  # 404: not the tenant's
        reply = await downloads("list", tenant_id, session_id)
        return {"data": [f.model_dump(mode="json") for f in reply.files or []]}

    @r.get("/v1/sessions/{session_id}/downloads/{name}", response_class=StreamingResponse,
           responses={200: {"content": {"application/octet-stream": {}}}, **error_responses(404, 503)})
    async def get_download(session_id: UUID, name: str, tenant_id: UUID = Depends(tenant)):
        """One of them, by its exact listed name (anything else is a 404)."""
        if not plain_name(name):
            raise NotFound("download not found")
        await views.get_session(uow=uow, tenant_id=tenant_id, session_id=session_id)
        first = await downloads("read", tenant_id, session_id, name=name, offset=0, length=DOWNLOAD_CHUNK_BYTES)
        size = first.size_bytes or 0

        async def body():
            data, offset = first.data or b"", 0
            while data:
                yield data
                offset += len(data)
                if offset >= size:
                    return
                data = (await downloads("read", tenant_id, session_id, name=name, offset=offset,
                                        length=DOWNLOAD_CHUNK_BYTES)).data

        return StreamingResponse(body(), media_type="application/octet-stream", headers={
            "Content-Disposition": content_disposition(name), "Content-Length": str(size),
            "X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store"})

    return r
