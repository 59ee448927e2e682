"""Where the key and URL come from, what every request carries, timeouts."""
import httpx
import pytest

import browserfleet
from sdk_mock import ok, session_json

USAGE = {"plan": "starter", "status": "active", "period_start": None, "period_end": None, "credits_granted": 0,
         "credits_used": 0, "credits_remaining": 0, "sessions_running": 0}


def mock_client(server, **options):
    return browserfleet.Browserfleet(http_client=httpx.Client(transport=httpx.MockTransport(server)), **options)


def test_key_and_url_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("BROWSERFLEET_API_KEY", "bf_env_key")
    monkeypatch.setenv("BROWSERFLEET_BASE_URL", "http://env.test:8000/")
    server.answer(ok(USAGE))
    bf = mock_client(server)
    bf.usage.retrieve()
    assert str(server.requests[0].url) == "http://env.test:8000/v1/usage"
    assert server.requests[0].headers["authorization"] == "Bearer bf_env_key"


def test_arguments_win_over_the_environment(server, monkeypatch):
    monkeypatch.setenv("BROWSERFLEET_API_KEY", "bf_env_key")
    monkeypatch.setenv("BROWSERFLEET_BASE_URL", "http://env.test")
    server.answer(ok(USAGE))
    mock_client(server, api_key="bf_arg_key", base_url="https://arg.test/api").usage.retrieve()
    assert str(server.requests[0].url) == "https://arg.test/api/v1/usage"
    assert server.requests[0].headers["authorization"] == "Bearer bf_arg_key"


def test_the_default_url_is_the_local_platform(monkeypatch):
    monkeypatch.setenv("BROWSERFLEET_API_KEY", "k")
    assert browserfleet.Browserfleet().base_url == "http://127.0.0.1:8000"


def test_no_key_anywhere_is_an_error_at_construction():
    with pytest.raises(browserfleet.BrowserfleetError, match="BROWSERFLEET_API_KEY"):
        browserfleet.Browserfleet()
    with pytest.raises(browserfleet.BrowserfleetError):
        browserfleet.AsyncBrowserfleet()


def test_max_retries_must_be_a_count():
    with pytest.raises(ValueError):
        browserfleet.Browserfleet(api_key="k", max_retries=-1)


def test_user_agent_names_the_sdk_and_its_version(server):
    server.answer(ok(session_json()))
    server.client(default_headers={"x-team": "qa"}).sessions.retrieve("s1")
    headers = server.requests[0].headers
    assert headers["user-agent"].startswith(f"browserfleet-python/{browserfleet.__version__} ")
    assert headers["accept"] == "application/json" and headers["x-team"] == "qa"


def test_default_headers_cannot_replace_the_key(server):
    server.answer(ok(USAGE))
    server.client(default_headers={"Authorization": "Bearer other"}).usage.retrieve()
    assert server.requests[0].headers.get_list("authorization") == ["Bearer bf_test_key"]


def test_timeouts_reach_every_request(server):
    server.answer(ok(USAGE), ok(USAGE))
    bf = server.client(timeout=7.5)
    bf.usage.retrieve()
    assert server.requests[0].extensions["timeout"] == httpx.Timeout(7.5).as_dict()
    bf.with_options(timeout=httpx.Timeout(2.0, connect=1.0)).usage.retrieve()
    assert server.requests[1].extensions["timeout"] == {"connect": 1.0, "read": 2.0, "write": 2.0, "pool": 2.0}


def test_the_default_timeout(server):
    server.answer(ok(USAGE))
    server.client().usage.retrieve()
    assert server.requests[0].extensions["timeout"] == {"connect": 10.0, "read": 60.0, "write": 60.0, "pool": 60.0}


def test_a_client_made_http_client_is_closed_with_the_sdk_client():
    with browserfleet.Browserfleet(api_key="k") as bf:
        http = bf._http
    assert http.is_closed


def test_a_given_http_client_is_left_open(server):
    http = httpx.Client(transport=httpx.MockTransport(server))
    with browserfleet.Browserfleet(api_key="k", http_client=http):
        pass
    assert not http.is_closed


async def test_async_env_defaults_and_close(server, monkeypatch):
    monkeypatch.setenv("BROWSERFLEET_API_KEY", "bf_env_key")
    monkeypatch.setenv("BROWSERFLEET_BASE_URL", "http://env.test")
    async with browserfleet.AsyncBrowserfleet() as bf:
        http = bf._http
        assert bf.base_url == "http://env.test"
    assert http.is_closed
