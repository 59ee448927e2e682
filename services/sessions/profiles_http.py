"""`/v1/profiles`: the public profile API. warm_pool owns profiles; each route is one request of the
warm_pool.profiles RPC (adapters/profiles.py), always within the caller's tenant."""
from datetime import datetime
from typing import Awaitable, Callable
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from shared import http
from services.sessions.domain import Refused
from shared.http import error_responses
from shared.messages import ProfileInfo


class CreateProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)


class ProfileOut(BaseModel):
    id: UUID
    name: str | None
    created_at: datetime
    updated_at: datetime
    size_bytes: int
    last_session_id: UUID | None  # the last session that used it


class ProfilePage(BaseModel):
    data: list[ProfileOut]
    next_cursor: str | None


async def unavailable(*_, **__):
    raise Refused("profiles_unavailable", "profiles are not available on this deployment")


def view(profile: ProfileInfo) -> dict:
    return profile.model_dump(mode="json")


def router(*, app, profiles, tenant: Callable[..., Awaitable[UUID]]) -> APIRouter:
    r = APIRouter(tags=["profiles"])

    @r.post("/v1/profiles", status_code=201, response_model=ProfileOut, responses=error_responses(503),
            openapi_extra=http.json_body_openapi(app, CreateProfile, required=False))
    async def create_profile(tenant_id: UUID = Depends(tenant),
                             body: CreateProfile | None = Depends(http.json_body(CreateProfile, required=False))):
        reply = await profiles("create", tenant_id, name=(body or CreateProfile()).name)
        return view(reply.profile)

    @r.get("/v1/profiles", response_model=ProfilePage, responses=error_responses(503))
    async def list_profiles(tenant_id: UUID = Depends(tenant), limit: int = Query(50, ge=1, le=200),
                            cursor: str | None = Query(None, max_length=200)):
        """Newest first; follow `next_cursor` for the next page."""
        reply = await profiles("list", tenant_id, limit=limit, cursor=cursor)
        return {"data": [view(p) for p in reply.profiles], "next_cursor": reply.next_cursor}

    @r.get("/v1/profiles/{profile_id}", response_model=ProfileOut, responses=error_responses(404, 503))
    async def get_profile(profile_id: UUID, tenant_id: UUID = Depends(tenant)):
        return view((await profiles("get", tenant_id, profile_id=profile_id)).profile)

    @r.delete("/v1/profiles/{profile_id}", status_code=204, responses=error_responses(404, 409, 503))
    async def delete_profile(profile_id: UUID, tenant_id: UUID = Depends(tenant)):
        """Deletes the profile and every saved version. 409 `profile_in_use` while a persisting
        session of it runs (end that session first)."""
        await profiles("delete", tenant_id, profile_id=profile_id)
        return Response(status_code=204)

    return r
