"""Pure rules of the dashboard: sign-in links and credentials, the daily usage series."""
import secrets
from datetime import date, timedelta

# Credentials with this prefix are dashboard sign-ins, not API keys; links have their own.
PREFIX = "bfd_"
LINK_PREFIX = "bfl_"
LINK_TTL_S = 15 * 60
SESSION_TTL_S = 8 * 3600
# last_used_at of a sign-in is written at most this often.
TOUCH_EVERY_S = 60
MAX_TOKEN_CHARS = 512


def new_link() -> str:
    """A link's secret: random (not signed), known to the server only by its hash, used once."""
    return LINK_PREFIX + secrets.token_urlsafe(32)


def new_sign_in() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def is_sign_in(credential: str | None) -> bool:
    return bool(credential) and credential.startswith(PREFIX)


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
