from datetime import datetime, timezone
from pathlib import Path
from uuid import uuid4

from services.sessions import domain
from services.sessions.ws_server import RedactTokens


def test_secrets_are_stored_as_hashes_and_checked():
    key = domain.new_api_key()
    assert key.startswith("bf_live_") and len(key) > 40
    stored = domain.digest(key)
    assert key.encode() not in stored
    assert domain.secret_matches(key, stored)
    assert not domain.secret_matches(key + "x", stored)
    assert domain.new_session_token() != domain.new_session_token()


def test_masked_token_is_recoverable_only_with_the_idempotency_key():
    session_id, token = uuid4(), domain.new_session_token()
    masked = domain.mask_token(token, idempotency_key="k1", session_id=session_id)
    assert token.encode() not in masked
    assert domain.unmask_token(masked, idempotency_key="k1", session_id=session_id) == token
    assert domain.unmask_token(masked, idempotency_key="k2", session_id=session_id) != token


def test_cdp_url_is_the_websocket_form_of_the_public_url():
    sid = uuid4()
    assert domain.cdp_url("http://127.0.0.1:8000", sid, "t") == f"ws://127.0.0.1:8000/v1/sessions/{sid}/cdp?token=t"
    assert domain.cdp_url("https://api.example.com/", sid, "t").startswith("wss://api.example.com/v1/")


def test_timeout_is_the_lower_of_request_and_plan():
    assert domain.effective_timeout(300, 3600) == 300
    assert domain.effective_timeout(7200, 3600) == 3600


PUBLISHED_CLOSE_CODES = {"client": 4001, "timeout": 4002, "idle": 4003, "disconnected": 4004,
                         "browser_crashed": 4005, "canceled": 4006}


def test_close_codes_name_the_end_reason_and_never_change():
    """Clients branch on these codes (the API docs publish them): a reordered END_REASONS must
    not renumber them."""
    assert {reason: domain.close_code(reason) for reason in domain.END_REASONS} == PUBLISHED_CLOSE_CODES
    assert domain.close_code("no such reason") == 4000


def test_the_documented_close_codes_are_the_ones_sent():
    from services.sessions import http
    documented = " ".join((http.__doc__ or "").split()) + " " + " ".join(
        line.strip() for line in Path(http.__file__).read_text().splitlines())
    assert ", ".join(f"{code} {reason}" for reason, code in PUBLISHED_CLOSE_CODES.items()) in documented


def test_cursor_round_trips():
    cursor = domain.Cursor(datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=timezone.utc), uuid4())
    assert domain.Cursor.decode(cursor.encode()) == cursor


def test_request_fingerprint_ignores_key_order():
    assert domain.request_fingerprint({"a": 1, "b": 2}) == domain.request_fingerprint({"b": 2, "a": 1})
    assert domain.request_fingerprint({"a": 1}) != domain.request_fingerprint({"a": 2})


def test_tokens_are_redacted_from_logs():
    import logging
    record = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, '%s - "WebSocket %s" [accepted]',
                               ("127.0.0.1:1", "/v1/sessions/x/cdp?token=SECRET123&a=1"), None)
    RedactTokens().filter(record)
    assert "SECRET123" not in record.getMessage() and "token=[redacted]" in record.getMessage()


def test_money_is_a_decimal_string_with_six_decimals():
    from decimal import Decimal
    assert domain.money(Decimal("0.01")) == "0.010000"  # shared/money.py: one format everywhere
    assert domain.money(Decimal("10")) == "10.000000"
    assert domain.money(Decimal("0.012000")) == "0.012000"


def test_admission_needs_an_active_provisioned_tenant_under_its_limit():
    ok = dict(status="active", provisioned=True, live_sessions=1, max_concurrent=2)
    assert domain.refuse_admission(**ok) is None
    for status in ("past_due", "canceled", None):
        assert domain.refuse_admission(**{**ok, "status": status}).code == "subscription_inactive"
    assert domain.refuse_admission(**{**ok, "provisioned": False}).code == "subscription_inactive"
    busy = domain.refuse_admission(**{**ok, "live_sessions": 2})
    assert (busy.code, busy.retry_after) == ("concurrency_limit", 5)


def test_a_lease_refusing_the_profile_is_told_as_a_missing_profile_or_a_refusal():
    assert isinstance(domain.profile_refusal("profile_not_found"), domain.NotFound)
    assert domain.profile_refusal("profile_in_use").code == "profile_in_use"
    assert domain.profile_refusal("profiles_unavailable").code == "profiles_unavailable"
    assert domain.profile_refusal("no_capacity") is None
