"""Retries: creates only where the server refused (429/503), with one Idempotency-Key for all attempts;
reads and end wherever a repeat is harmless; Retry-After honoured; max_retries bounds it all."""
import email.utils
import time

import httpx
import pytest

import browserfleet
from sdk_mock import created_json, error, ok, session_json


def test_create_retried_after_429_with_the_same_idempotency_key(server):
    server.answer(error(429, "concurrency_limit", "too many sessions", headers={"Retry-After": "3"}),
                  ok(created_json(), 201))
    session = server.client().sessions.create(timeout_s=120)

    assert session.status == "running" and session.remaining_credits == 4999
    first, second = server.requests
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.headers["idempotency-key"].startswith("bf-")
    assert server.body(0) == server.body(1) == {"timeout_s": 120}
    assert server.sleeps == [3.0]


def test_each_create_gets_its_own_key_and_a_given_key_is_used(server):
    server.answer(ok(created_json(), 201), ok(created_json(), 201), ok(created_json(), 201))
    bf = server.client()
    bf.sessions.create()
    bf.sessions.create()
    bf.sessions.create(idempotency_key="order-42")
    keys = [r.headers["idempotency-key"] for r in server.requests]
    assert keys[0] != keys[1] and keys[2] == "order-42"


def test_503_retried_up_to_max_retries_then_raised(server):
    server.answer(*[error(503, "no_capacity", "no browser available right now, retry later")] * 3)
    with pytest.raises(browserfleet.ServiceUnavailableError) as caught:
        server.client(max_retries=2).sessions.create()
    assert caught.value.code == "no_capacity"
    assert len(server.requests) == 3
    assert len({r.headers["idempotency-key"] for r in server.requests}) == 1
    assert len(server.sleeps) == 2


def test_max_retries_zero_raises_the_first_429(server):
    server.answer(error(429, "concurrency_limit", "too many sessions", headers={"Retry-After": "5"}))
    with pytest.raises(browserfleet.RateLimitError) as caught:
        server.client(max_retries=0).sessions.create()
    assert caught.value.retry_after == 5.0 and caught.value.code == "concurrency_limit"
    assert len(server.requests) == 1 and server.sleeps == []


@pytest.mark.parametrize("status,code", [(402, "insufficient_credits"), (403, "subscription_inactive"),
                                         (409, "idempotency_conflict"), (422, "invalid_request"),
                                         (500, "internal_error")])
def test_create_not_retried_where_the_outcome_is_not_a_refusal(server, status, code):
    server.answer(error(status, code))
    with pytest.raises(browserfleet.APIStatusError):
        server.client().sessions.create()
    assert len(server.requests) == 1 and server.sleeps == []


def test_retry_after_as_an_http_date(server):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    server.answer(error(429, "concurrency_limit", headers={"Retry-After": when}), ok(created_json(), 201))
    server.client().sessions.create()
    assert 25 <= server.sleeps[0] <= 31


def test_a_retry_after_beyond_a_minute_is_raised_not_slept(server):
    server.answer(error(429, "concurrency_limit", headers={"Retry-After": "3600"}))
    with pytest.raises(browserfleet.RateLimitError) as caught:
        server.client().sessions.create()
    assert caught.value.retry_after == 3600.0
    assert len(server.requests) == 1 and server.sleeps == []


def test_without_retry_after_the_backoff_grows(server):
    server.answer(error(503, "no_capacity"), error(503, "no_capacity"), ok(created_json(), 201))
    server.client().sessions.create()
    first, second = server.sleeps
    assert 0.375 <= first <= 0.5 and 0.75 <= second <= 1.0


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_reads_retried_on_server_errors(server, status):
    server.answer(error(status, "unavailable"), ok(session_json()))
    assert server.client().sessions.retrieve("abc").status == "running"
    assert len(server.requests) == 2 and "idempotency-key" not in server.requests[0].headers


def test_end_retried_after_a_broken_connection(server):
    server.answer(httpx.ReadError("connection reset"), ok(session_json(status="completed")))
    assert server.client().sessions.end("abc").status == "completed"
    assert [r.url.path for r in server.requests] == ["/v1/sessions/abc/end"] * 2


def test_create_retried_after_a_timeout_with_the_same_key(server):
    # The server may have debited the first attempt: the key makes it answer the repeat with that session.
    server.answer(httpx.ReadTimeout("timed out"), ok(created_json(), 201))
    server.client().sessions.create()
    assert len({r.headers["idempotency-key"] for r in server.requests}) == 1 and len(server.requests) == 2


def test_profile_create_is_repeated_only_when_nothing_was_sent(server):
    server.answer(httpx.ConnectError("refused"), ok({"id": "p1", "name": None, "created_at": "2026-12-01T09:00:00Z",
                                                     "updated_at": "2026-12-01T09:00:00Z", "size_bytes": 0}, 201))
    assert server.client().profiles.create().id == "p1"
    server.answer(httpx.ReadTimeout("timed out"))
    with pytest.raises(browserfleet.APITimeoutError):
        server.client().profiles.create(name="shop")
    assert len(server.requests) == 3


def test_unreachable_after_retries_is_an_api_connection_error(server):
    server.answer(*[httpx.ConnectError("refused")] * 3)
    with pytest.raises(browserfleet.APIConnectionError) as caught:
        server.client().usage.retrieve()
    assert not isinstance(caught.value, browserfleet.APIStatusError)
    assert len(server.requests) == 3


async def test_async_create_retried_after_429_with_the_same_key(server):
    server.answer(error(429, "concurrency_limit", headers={"Retry-After": "2"}), ok(created_json(), 201))
    async with server.async_client() as bf:
        session = await bf.sessions.create(keep_alive=True)
    assert session.cdp_url.startswith("ws://")
    assert len({r.headers["idempotency-key"] for r in server.requests}) == 1
    assert server.sleeps == [2.0] and server.body() == {"keep_alive": True}


async def test_async_max_retries_zero(server):
    server.answer(error(503, "no_capacity", headers={"Retry-After": "1"}))
    async with server.async_client(max_retries=0) as bf:
        with pytest.raises(browserfleet.ServiceUnavailableError) as caught:
            await bf.sessions.create()
    assert caught.value.retry_after == 1.0 and len(server.requests) == 1


def test_with_options_changes_retries_for_one_use(server):
    server.answer(error(503, "no_capacity"))
    bf = server.client(max_retries=2)
    with pytest.raises(browserfleet.ServiceUnavailableError):
        bf.with_options(max_retries=0).sessions.create()
    assert len(server.requests) == 1 and bf.max_retries == 2
