"""Pure rules of the dashboard: signed sign-in links and credentials, the daily usage series."""
import base64
import hashlib
import hmac
import json
from datetime import date, timedelta
from uuid import UUID

# Credentials with this prefix are dashboard sign-ins, not API keys.
PREFIX = "bfd_"
LINK_TTL_S = 15 * 60
SESSION_TTL_S = 8 * 3600


def signing_key(admin_token: str) -> bytes:
    """Derived from the admin token: rotating that token invalidates every link and sign-in."""
    return hmac.new(admin_token.encode(), b"browserfleet dashboard v1", hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(*, key: bytes, tenant_id: UUID, purpose: str, expires_at: int) -> str:
    body = _b64(json.dumps({"t": str(tenant_id), "p": purpose, "e": expires_at}, separators=(",", ":")).encode())
    mac = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    return f"{PREFIX}{body}.{mac}"


def verify(token: str | None, *, key: bytes, purpose: str, now: float) -> UUID | None:
    """The tenant a token was signed for, or None if it is forged, expired or for another purpose."""
    if not token or not token.startswith(PREFIX) or len(token) > 512:
        return None
    body, _, mac = token[len(PREFIX):].partition(".")
    expected = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        return None
    try:
        claims = json.loads(_unb64(body))
        tenant_id, expires_at = UUID(claims["t"]), int(claims["e"])
    except (ValueError, KeyError, TypeError):
        return None
    if claims.get("p") != purpose or expires_at <= now:
        return None
    return tenant_id


def daily_series(rows: list[dict], *, first: date, last: date) -> list[dict]:
    """One entry per day from first to last (inclusive), zero where nothing ran."""
    by_day = {row["day"]: row for row in rows}
    days, day = [], first
    while day <= last:
        row = by_day.get(day)
        duration_ms = int(row["duration_ms"]) if row else 0
        days.append({"date": day.isoformat(), "sessions": int(row["sessions"]) if row else 0,
                     "minutes": round(duration_ms / 60_000, 1)})
        day += timedelta(days=1)
    return days
