"""Dashboard rules: link and sign-in secrets, the daily usage series, page rendering."""
from datetime import date

from services.sessions.dashboard import domain
from services.sessions.dashboard.routes import render


def test_links_and_sign_ins_are_random_and_told_apart_by_prefix():
    links, sign_ins = {domain.new_link() for _ in range(50)}, {domain.new_sign_in() for _ in range(50)}
    assert len(links) == 50 and len(sign_ins) == 50
    assert all(link.startswith(domain.LINK_PREFIX) and not domain.is_sign_in(link) for link in links)
    assert all(domain.is_sign_in(s) and len(s) <= domain.MAX_TOKEN_CHARS for s in sign_ins)
    for other in (None, "", "bf_live_abc"):
        assert not domain.is_sign_in(other)


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
