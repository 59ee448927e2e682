"""sessions.connect: create, connect over CDP, and end the session on every way out of the block.
Playwright is a stand-in here (its real use is in tests/e2e/test_sdk.py)."""
import pytest

import browserfleet
from sdk_mock import created_json, error, ok, session_json

CDP_URL = created_json()["cdp_url"]


class FakeBrowser:
    def __init__(self, log):
        self.log = log

    def close(self):
        self.log.append("browser.close")


class FakePlaywright:
    def __init__(self, fail=None):
        self.log, self.fail = [], fail
        self.chromium = self

    def connect_over_cdp(self, url):
        self.log.append(("connect_over_cdp", url))
        if self.fail:
            raise self.fail
        return FakeBrowser(self.log)


class AsyncFakeBrowser(FakeBrowser):
    async def close(self):
        self.log.append("browser.close")


class AsyncFakePlaywright(FakePlaywright):
    async def connect_over_cdp(self, url):
        self.log.append(("connect_over_cdp", url))
        if self.fail:
            raise self.fail
        return AsyncFakeBrowser(self.log)


def paths(server):
    return [(r.method, r.url.path) for r in server.requests]


def test_the_block_gets_a_browser_and_the_session_ends_after_it(server):
    server.answer(ok(created_json(), 201), ok(session_json(status="completed")))
    pw = FakePlaywright()
    connection = server.client().sessions.connect(pw, isolation="context", timeout_s=60)
    with connection as browser:
        assert isinstance(browser, FakeBrowser) and connection.session.cdp_url == CDP_URL
        assert paths(server) == [("POST", "/v1/sessions")]
    assert server.body(0) == {"isolation": "context", "timeout_s": 60}
    assert pw.log == [("connect_over_cdp", CDP_URL), "browser.close"]
    assert paths(server)[-1] == ("POST", f"/v1/sessions/{connection.session.id}/end")


def test_the_session_ends_when_the_block_raises(server):
    server.answer(ok(created_json(), 201), ok(session_json(status="completed")))
    with pytest.raises(ZeroDivisionError):
        with server.client().sessions.connect(FakePlaywright()):
            1 / 0
    assert paths(server)[-1][1].endswith("/end")


def test_the_session_ends_when_connecting_fails(server):
    server.answer(ok(created_json(), 201), ok(session_json(status="completed")))
    with pytest.raises(ConnectionError):
        with server.client().sessions.connect(FakePlaywright(fail=ConnectionError("ws refused"))):
            pytest.fail("the block must not run")
    assert [m for m, _ in paths(server)] == ["POST", "POST"] and paths(server)[-1][1].endswith("/end")


def test_a_refused_create_raises_and_connects_nothing(server):
    server.answer(error(402, "insufficient_credits", "no credits left"))
    pw = FakePlaywright()
    with pytest.raises(browserfleet.InsufficientCreditsError):
        with server.client().sessions.connect(pw):
            pytest.fail("the block must not run")
    assert pw.log == [] and len(server.requests) == 1


def test_a_failing_end_does_not_hide_the_blocks_own_error(server):
    server.answer(ok(created_json(), 201), error(404, "not_found"))
    with pytest.warns(RuntimeWarning, match="could not end the session"):
        with pytest.raises(KeyError):
            with server.client().sessions.connect(FakePlaywright()):
                raise KeyError("the user's error")


def test_a_failing_end_after_a_clean_block_is_raised(server):
    server.answer(ok(created_json(), 201), error(404, "not_found"))
    with pytest.raises(browserfleet.NotFoundError):
        with server.client().sessions.connect(FakePlaywright()):
            pass


async def test_async_twin_ends_the_session_on_an_exception(server):
    server.answer(ok(created_json(), 201), ok(session_json(status="completed")))
    pw = AsyncFakePlaywright()
    async with server.async_client() as bf:
        with pytest.raises(RuntimeError):
            async with bf.sessions.connect(pw, keep_alive=False) as browser:
                assert isinstance(browser, AsyncFakeBrowser)
                raise RuntimeError("boom")
    assert pw.log == [("connect_over_cdp", CDP_URL), "browser.close"]
    assert paths(server)[-1][1].endswith("/end") and server.body(0) == {"keep_alive": False}


async def test_async_twin_ends_the_session_when_connecting_fails(server):
    server.answer(ok(created_json(), 201), ok(session_json(status="completed")))
    async with server.async_client() as bf:
        with pytest.raises(TimeoutError):
            async with bf.sessions.connect(AsyncFakePlaywright(fail=TimeoutError())):
                pytest.fail("the block must not run")
    assert paths(server)[-1][1].endswith("/end")
