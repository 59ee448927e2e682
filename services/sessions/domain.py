"""Pure rules of sessions: secrets, URLs, limits, close codes, the public view of a session."""
import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from shared import money as shared_money

API_KEY_PREFIX = "bf_live_"
LIVE = ("starting", "running")
END_REASONS = ("client", "timeout", "idle", "disconnected", "browser_crashed", "canceled")
IDEMPOTENCY_TTL_S = 24 * 3600
CRASHED_LEASE_TTL_S = 3600  # a crashed lease no session recorded running is remembered this long


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_session_token() -> str:
    return secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    """Hash for a high-entropy secret (API key, session token, idempotency key) stored at rest."""
    return hashlib.sha256(secret.encode()).digest()


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(digest(secret), bytes(stored_hash))


def _pad(idempotency_key: str, session_id: UUID, length: int) -> bytes:
    pad = b""
    counter = 0
    while len(pad) < length:
        pad += hmac.new(idempotency_key.encode(), f"cdp-token:{session_id}:{counter}".encode(),
                        hashlib.sha256).digest()
        counter += 1
    return pad[:length]


def mask_token(token: str, *, idempotency_key: str, session_id: UUID) -> bytes:
    """Reversible only by whoever holds the idempotency key (the client that sent it)."""
    raw = token.encode()
    return bytes(a ^ b for a, b in zip(raw, _pad(idempotency_key, session_id, len(raw))))


def unmask_token(masked: bytes, *, idempotency_key: str, session_id: UUID) -> str:
    masked = bytes(masked)
    return bytes(a ^ b for a, b in zip(masked, _pad(idempotency_key, session_id, len(masked)))).decode(errors="replace")


def request_fingerprint(body: dict) -> bytes:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).digest()


class NotFound(Exception):
    """Not there, or not the caller's: the two look the same to the caller."""


class Refused(Exception):
    """Not done, for a reason the caller is told: `code` as in the error shape (http.py maps each
    code to its status), `retry_after` seconds when a retry may succeed."""

    def __init__(self, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


def refuse_admission(*, status: str | None, provisioned: bool, live_sessions: int,
                     max_concurrent: int) -> Refused | None:
    """Why a tenant may not start a session now (credits are checked by the atomic debit)."""
    if status != "active":
        return Refused("subscription_inactive", "the subscription is not active")
    if not provisioned:
        return Refused("subscription_inactive", "the tenant is still being provisioned, retry shortly")
    if live_sessions >= max_concurrent:
        return Refused("concurrency_limit", f"at most {max_concurrent} concurrent sessions on this plan",
                       retry_after=5)
    return None


def profile_refusal(lease_error: str) -> Exception | None:
    """What the caller is told when the lease refused the profile named (the credit is refunded)."""
    if lease_error == "profile_not_found":
        return NotFound("profile not found")
    if lease_error == "profile_in_use":
        return Refused("profile_in_use", "another persisting session of this profile is running")
    if lease_error == "profiles_unavailable":
        return Refused("profiles_unavailable", "profiles are not available on this deployment")
    return None


def ws_base(public_url: str) -> str:
    if public_url.startswith("https://"):
        return "wss://" + public_url[len("https://"):].rstrip("/")
    if public_url.startswith("http://"):
        return "ws://" + public_url[len("http://"):].rstrip("/")
    return public_url.rstrip("/")


def cdp_url(public_url: str, session_id: UUID, token: str) -> str:
    return f"{ws_base(public_url)}/v1/sessions/{session_id}/cdp?token={token}"


def effective_timeout(requested_s: int, plan_max_s: int) -> int:
    return max(1, min(requested_s, plan_max_s))


def close_code(end_reason: str) -> int:
    """Websocket close code telling CDP clients why their session ended (4000 + reason)."""
    return 4001 + END_REASONS.index(end_reason) if end_reason in END_REASONS else 4000


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    id: UUID

    def encode(self) -> str:
        raw = f"{self.created_at.isoformat()}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> "Cursor":
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        created_at, _, session_id = raw.partition("|")
        return cls(datetime.fromisoformat(created_at), UUID(session_id))


def money(amount: Decimal) -> str:
    """The one money format (shared/money.py): 0.01 → "0.010000"."""
    return shared_money.to_str(amount)


def session_view(row) -> dict:
    """The public JSON of a session row (no browser URL, no token)."""
    return {
        "id": str(row["id"]),
        "status": row["status"],
        "browser": row["browser"],
        "isolation": row["isolation"],
        "warm": row["warm"],
        "keep_alive": row["keep_alive"],
        "timeout_s": row["timeout_s"],
        "idle_timeout_s": row["idle_timeout_s"],
        "created_at": row["created_at"].isoformat(),
        "started_at": row["started_at"].isoformat() if row["started_at"] else None,
        "expires_at": row["expires_at"].isoformat() if row["expires_at"] else None,
        "ended_at": row["ended_at"].isoformat() if row["ended_at"] else None,
        "duration_ms": row["duration_ms"],
        "cost": money(row["cost"]) if row["cost"] is not None else None,
        "end_reason": row["end_reason"],
        "profile": profile_view(row),
    }


def profile_view(row) -> dict | None:
    """The session's profile and what became of its save ("pending" until warm_pool says)."""
    if row.get("profile_id") is None:
        return None
    view = {"id": str(row["profile_id"]), "persist": bool(row["profile_persist"]), "save": row["profile_save"]}
    if row.get("profile_save_message"):
        view["message"] = row["profile_save_message"]
    return view
