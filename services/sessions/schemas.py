"""The public API's response bodies (the OpenAPI document is generated from them)."""
from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel

from shared.money import Money


class SessionProfile(BaseModel):
    id: UUID
    persist: bool
    # pending until the persisting session's end is saved; not_saved: read-only use, a crashed
    # browser, or a deleted profile; failed: see message (the previous version is kept).
    save: Literal["pending", "saved", "failed", "not_saved"]
    message: str | None = None


class SessionOut(BaseModel):
    id: UUID
    status: Literal["starting", "running", "completed", "failed"]
    browser: str
    isolation: Literal["browser", "context"]
    warm: bool | None
    keep_alive: bool
    timeout_s: int
    idle_timeout_s: int
    created_at: datetime
    started_at: datetime | None
    expires_at: datetime | None
    ended_at: datetime | None
    duration_ms: int | None
    cost: Money | None
    end_reason: str | None
    profile: SessionProfile | None = None


class SessionCreated(SessionOut):
    cdp_url: str
    remaining_credits: int


class SessionPage(BaseModel):
    data: list[SessionOut]
    next_cursor: str | None


class Usage(BaseModel):
    plan: str
    status: str
    period_start: datetime | None
    period_end: datetime | None
    credits_granted: int
    credits_used: int
    credits_remaining: int
    sessions_running: int


class TenantOut(BaseModel):
    tenant_id: UUID
    plan: str
    status: str
    provisioned: bool
    max_concurrent_sessions: int
    max_session_seconds: int
    period_start: datetime | None
    period_end: datetime | None
    credits_granted: int
    credits_used: int
    credits_remaining: int
    sessions_running: int
    api_keys: int


class TenantList(BaseModel):
    data: list[TenantOut]


class AdminSessionOut(SessionOut):
    tenant_id: UUID


class AdminSessionList(BaseModel):
    data: list[AdminSessionOut]
