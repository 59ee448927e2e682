"""Every error answer becomes the exception of its status, carrying the API's code and message."""
import socket

import httpx
import pytest

import browserfleet
from sdk_mock import error, ok


@pytest.mark.parametrize("status,cls,code", [
    (401, browserfleet.AuthenticationError, "unauthorized"),
    (402, browserfleet.InsufficientCreditsError, "insufficient_credits"),
    (403, browserfleet.PermissionDeniedError, "subscription_inactive"),
    (404, browserfleet.NotFoundError, "not_found"),
    (409, browserfleet.ConflictError, "profile_in_use"),
    (413, browserfleet.PayloadTooLargeError, "payload_too_large"),
    (422, browserfleet.UnprocessableEntityError, "invalid_request"),
    (429, browserfleet.RateLimitError, "concurrency_limit"),
    (503, browserfleet.ServiceUnavailableError, "no_capacity"),
])
def test_status_maps_to_its_exception(server, status, cls, code):
    server.answer(error(status, code, f"message for {status}", headers={"x-request-id": "req-1"}))
    with pytest.raises(cls) as caught:
        server.client(max_retries=0).sessions.create()
    err = caught.value
    assert isinstance(err, browserfleet.APIStatusError) and isinstance(err, browserfleet.BrowserfleetError)
    assert (err.status_code, err.code, err.message, err.request_id) == (status, code, f"message for {status}", "req-1")
    assert str(err) == f"{status} {code}: message for {status}"


def test_rate_limit_carries_retry_after(server):
    server.answer(error(429, "concurrency_limit", headers={"Retry-After": "5"}))
    with pytest.raises(browserfleet.RateLimitError) as caught:
        server.client(max_retries=0).sessions.create()
    assert caught.value.retry_after == 5.0


def test_rate_limit_without_retry_after(server):
    server.answer(error(429, "concurrency_limit"))
    with pytest.raises(browserfleet.RateLimitError) as caught:
        server.client(max_retries=0).sessions.create()
    assert caught.value.retry_after is None


def test_an_unlisted_status_is_the_base_class(server):
    server.answer(error(400, "bad_request", "no"))
    with pytest.raises(browserfleet.APIStatusError) as caught:
        server.client().usage.retrieve()
    assert type(caught.value) is browserfleet.APIStatusError and caught.value.code == "bad_request"


def test_an_error_without_the_json_shape_still_has_a_message(server):
    server.answer(httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(browserfleet.APIStatusError) as caught:
        server.client(max_retries=0).usage.retrieve()
    assert caught.value.status_code == 502 and caught.value.code is None
    assert "Bad Gateway" in caught.value.message


def test_an_unexpected_success_body_is_a_validation_error(server):
    server.answer(ok({"plan": "starter"}))
    with pytest.raises(browserfleet.APIResponseValidationError) as caught:
        server.client().usage.retrieve()
    assert caught.value.status_code == 200


def test_a_port_nobody_listens_on_is_an_api_connection_error():
    with socket.socket() as s:  # a loopback port that was free a moment ago, and is closed now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bf = browserfleet.Browserfleet(api_key="k", base_url=f"http://127.0.0.1:{port}", max_retries=1,
                                   _sleep=lambda s: None)
    with pytest.raises(browserfleet.APIConnectionError) as caught:
        bf.sessions.list()
    assert "could not reach" in str(caught.value)


def test_the_api_key_is_not_in_an_error_or_the_client_repr(server):
    server.answer(error(401, "unauthorized", "invalid API key"))
    bf = server.client(api_key="bf_secret_value")
    with pytest.raises(browserfleet.AuthenticationError) as caught:
        bf.usage.retrieve()
    assert "bf_secret_value" not in str(caught.value) + repr(caught.value) + repr(bf)
