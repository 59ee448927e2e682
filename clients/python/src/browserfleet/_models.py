"""Typed answers of the API. Field for field the OpenAPI document's schemas (docs/openapi/sessions.json;
tests/unit/test_sdk_openapi.py fails on any drift). Unknown fields the server adds later are kept,
not refused."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict

SessionStatus = Literal["starting", "running", "completed", "failed"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class SessionProfile(_Model):
    """The profile a session started from, and whether its state was saved back (`persist`)."""
    id: str
    persist: bool
    save: Literal["pending", "saved", "failed", "not_saved"]
    message: Optional[str] = None


class Session(_Model):
    """`SessionOut`: a session as `retrieve`, `list` and `end` return it."""
    id: str
    status: SessionStatus
    browser: str
    warm: Optional[bool]
    keep_alive: bool
    timeout_s: int
    idle_timeout_s: int
    created_at: datetime
    started_at: Optional[datetime]
    expires_at: Optional[datetime]
    ended_at: Optional[datetime]
    duration_ms: Optional[int]
    cost: Optional[Decimal]  # a decimal string in JSON: money is never a float
    end_reason: Optional[str]
    isolation: Literal["browser", "context"] = "browser"  # absent from a server older than isolation
    profile: Optional[SessionProfile] = None


class SessionCreated(Session):
    """`SessionCreated`: what `create` returns, with the CDP URL to connect to."""
    cdp_url: str
    remaining_credits: int


class SessionPage(_Model):
    data: list[Session]
    next_cursor: Optional[str]


class Usage(_Model):
    plan: str
    status: str
    period_start: Optional[datetime]
    period_end: Optional[datetime]
    credits_granted: int
    credits_used: int
    credits_remaining: int
    sessions_running: int


class Profile(_Model):
    """Browser state that outlives a session (DESIGN.md, "Profiles")."""
    id: str
    name: Optional[str] = None
    created_at: datetime
    updated_at: datetime
    size_bytes: int
    last_session_id: Optional[str] = None  # the last session that used it


class ProfilePage(_Model):
    data: list[Profile]
    next_cursor: Optional[str] = None


class Download(_Model):
    """A file the session's browser downloaded (DESIGN.md, `GET /v1/sessions/{id}/downloads`)."""
    name: str
    size_bytes: int
    created_at: datetime


class DownloadList(_Model):
    data: list[Download]


class ErrorDetail(_Model):
    code: str
    message: str


class ErrorBody(_Model):
    error: ErrorDetail
