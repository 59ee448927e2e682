"""Dashboard rules: signed links and sign-ins, the daily usage series, page rendering."""
from datetime import date
from uuid import uuid4

from services.sessions.dashboard import domain
from services.sessions.dashboard.routes import render

KEY = domain.signing_key("admin-token")
TENANT = uuid4()


def test_a_signed_token_names_its_tenant_until_it_expires():
    token = domain.sign(key=KEY, tenant_id=TENANT, purpose="link", expires_at=1000)
    assert token.startswith(domain.PREFIX)
    assert domain.verify(token, key=KEY, purpose="link", now=999) == TENANT
    assert domain.verify(token, key=KEY, purpose="link", now=1000) is None


def test_a_link_is_not_a_sign_in_and_a_forged_or_foreign_token_is_refused():
    link = domain.sign(key=KEY, tenant_id=TENANT, purpose="link", expires_at=1000)
    assert domain.verify(link, key=KEY, purpose="session", now=0) is None
    assert domain.verify(link, key=domain.signing_key("another admin token"), purpose="link", now=0) is None
    body, mac = link.split(".")
    other = domain.sign(key=KEY, tenant_id=uuid4(), purpose="link", expires_at=1000)
    assert domain.verify(other.split(".")[0] + "." + mac, key=KEY, purpose="link", now=0) is None
    assert domain.verify(body + "." + mac[:-2] + "AA", key=KEY, purpose="link", now=0) is None
    for junk in (None, "", "bf_live_abc", domain.PREFIX, domain.PREFIX + "x.y", domain.PREFIX + "." * 600):
        assert domain.verify(junk, key=KEY, purpose="link", now=0) is None


def test_daily_series_fills_the_days_without_sessions():
    rows = [{"day": date(2026, 11, 2), "sessions": 3, "duration_ms": 150_000}]
    assert domain.daily_series(rows, first=date(2026, 11, 1), last=date(2026, 11, 3)) == [
        {"date": "2026-11-01", "sessions": 0, "minutes": 0.0},
        {"date": "2026-11-02", "sessions": 3, "minutes": 2.5},
        {"date": "2026-11-03", "sessions": 0, "minutes": 0.0},
    ]


def test_pages_have_the_public_url_filled_in_and_escaped():
    page = render("quickstart", "https://browsers.example.com/")
    assert 'BASE_URL = &quot;https://browsers.example.com&quot;' in page
    assert "curl -s -X POST https://browsers.example.com/v1/sessions" in page
    assert "{{" not in page
    hostile = render("signin", 'https://x.example/"><script>alert(1)</script>')
    assert "<script>alert(1)" not in hostile
