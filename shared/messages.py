"""Versioned message contracts exchanged over RabbitMQ. Routing key = the message's `type`."""
from datetime import datetime, timezone
from typing import ClassVar, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from shared.money import Money
from shared.plans import Limits


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Event(BaseModel):
    model_config = ConfigDict(extra="ignore")
    TYPE: ClassVar[str] = ""

    message_id: UUID = Field(default_factory=uuid4)
    type: str = ""
    version: int = 1
    occurred_at: datetime = Field(default_factory=utcnow)

    def model_post_init(self, __context) -> None:
        if not self.type:
            self.type = self.TYPE


class PaymentVerified(Event):
    TYPE: ClassVar[str] = "billing.payment_verified"
    tenant_id: UUID
    stripe_customer_id: str | None = None
    subscription_id: str
    plan: str
    period_start: datetime
    period_end: datetime
    credits: int
    limits: Limits


SubscriptionStatus = Literal["active", "past_due", "canceled"]


class SubscriptionChanged(Event):
    TYPE: ClassVar[str] = "billing.subscription_changed"
    tenant_id: UUID
    plan: str
    status: SubscriptionStatus
    limits: Limits | None = None


class TenantProvisioned(Event):
    TYPE: ClassVar[str] = "provisioner.tenant_provisioned"
    tenant_id: UUID
    namespace: str
    plan: str
    limits: Limits


class TenantDeprovisioned(Event):
    TYPE: ClassVar[str] = "provisioner.tenant_deprovisioned"
    tenant_id: UUID
    namespace: str


class SessionStarted(Event):
    TYPE: ClassVar[str] = "sessions.session_started"
    session_id: UUID
    tenant_id: UUID
    browser_id: UUID
    warm: bool
    started_at: datetime


EndReason = Literal["client", "timeout", "idle", "disconnected", "browser_crashed", "canceled"]


class SessionCompleted(Event):
    TYPE: ClassVar[str] = "sessions.session_completed"
    session_id: UUID
    tenant_id: UUID
    browser_id: UUID | None = None
    started_at: datetime
    ended_at: datetime
    duration_ms: int
    end_reason: EndReason
    cost: Money  # what the session cost under the plan it ran under: billing's figure too


class LeaseReleased(Event):
    """A context sessions leased ahead for a tenant's next create and never used: warm_pool
    disposes it (only while no session has confirmed it)."""
    TYPE: ClassVar[str] = "sessions.lease_released"
    session_id: UUID
    tenant_id: UUID
    browser_id: UUID | None = None


class BrowserCrashed(Event):
    TYPE: ClassVar[str] = "warm_pool.browser_crashed"
    browser_id: UUID
    tenant_id: UUID
    session_id: UUID | None = None
    detected_at: datetime


# Lease RPC (request/reply on the lease queue, not an event).
LEASE_QUEUE = "warm_pool.lease"


class LeaseRequest(BaseModel):
    tenant_id: UUID
    session_id: UUID
    # "context": a fresh BrowserContext in a warm browser of this tenant's, shared with its other
    # context sessions; "browser": a browser of the session's own.
    isolation: Literal["browser", "context"] = "browser"
    # A profile of the tenant's to start from; `persist`: saved back at the session's end (one
    # persisting session per profile at a time).
    profile_id: UUID | None = None
    persist: bool = False
    # A context leased ahead of the tenant's next create (sessions' reservations): only in an open
    # host with room, never launching one for it.
    ahead: bool = False


class LeaseReply(BaseModel):
    ok: bool
    browser_id: UUID | None = None
    cdp_ws_url: str | None = None
    warm: bool = False
    error: Literal["no_capacity", "unknown_tenant", "error", "profile_not_found", "profile_in_use",
                   "profiles_unavailable"] | None = None
    message: str | None = None  # why, when the reason is worth telling the client
    # Context leases: the session's BrowserContext in the browser at cdp_ws_url (which the relay
    # confines the client to), and where that context's downloads go inside the browser's sandbox.
    context_id: str | None = None
    downloads_path: str | None = None
    # warm_pool reclaims a lease no session_started confirmed within this long (its
    # LEASE_CONFIRM_TIMEOUT_S): a context leased ahead must be used well before.
    confirm_within_s: float | None = None


# Credential RPC: billing asks sessions which tenant an API key or dashboard sign-in belongs to.
CREDENTIALS_QUEUE = "sessions.credentials"


class CredentialRequest(BaseModel):
    credential: str = Field(max_length=1024)


class CredentialReply(BaseModel):
    tenant_id: UUID | None = None  # set when the credential is live
    error: Literal["unknown", "error"] | None = None


# --- profiles (warm_pool owns them; sessions serves the public API over this RPC) -----------
PROFILES_QUEUE = "warm_pool.profiles"


class ProfileRequest(BaseModel):
    op: Literal["create", "list", "get", "delete"]
    tenant_id: UUID  # every operation is the tenant's own: another tenant's profile is not_found
    profile_id: UUID | None = None
    name: str | None = Field(None, max_length=200)
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, max_length=200)


class ProfileInfo(BaseModel):
    id: UUID
    name: str | None
    created_at: datetime
    updated_at: datetime
    size_bytes: int
    last_session_id: UUID | None


class ProfileReply(BaseModel):
    ok: bool
    error: Literal["not_found", "profile_in_use", "invalid_cursor", "unavailable", "error"] | None = None
    profile: ProfileInfo | None = None
    profiles: list[ProfileInfo] = []
    next_cursor: str | None = None


ProfileSaveOutcome = Literal["saved", "failed", "not_saved"]


class ProfileSaved(Event):
    """A persisting session's end: was its state saved back to the profile?"""
    TYPE: ClassVar[str] = "warm_pool.profile_saved"
    session_id: UUID
    tenant_id: UUID
    profile_id: UUID
    outcome: ProfileSaveOutcome
    version: int | None = None
    size_bytes: int | None = None
    message: str | None = None  # why not, for the session's view


# --- downloads (warm_pool keeps a session's files after it ends; sessions serves them) --------
DOWNLOADS_QUEUE = "warm_pool.downloads"
DOWNLOAD_CHUNK_BYTES = 1024 * 1024  # a read answers at most this much: no file is one huge message


class DownloadsRequest(BaseModel):
    op: Literal["list", "read"]
    tenant_id: UUID  # always the tenant's own: another tenant's session or file is not_found
    session_id: UUID
    name: str | None = Field(None, max_length=1024)  # "read": exactly a stored name, else not_found
    offset: int = Field(0, ge=0)
    length: int = Field(DOWNLOAD_CHUNK_BYTES, ge=1, le=DOWNLOAD_CHUNK_BYTES)


class DownloadInfo(BaseModel):
    name: str
    size_bytes: int
    created_at: datetime


class DownloadsReply(BaseModel):
    # Binary data travels base64-encoded in the JSON body.
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")
    ok: bool
    files: list[DownloadInfo] | None = None  # "list"
    data: bytes | None = None  # "read": the bytes at [offset, offset + length)
    size_bytes: int | None = None  # "read": the whole file's size
    error: Literal["not_found", "error"] | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (PaymentVerified, SubscriptionChanged, TenantProvisioned, TenantDeprovisioned,
                SessionStarted, SessionCompleted, BrowserCrashed, ProfileSaved)
}
