"""list() yields every item of every page; `limit` is the page size sent on each request."""
import pytest

import browserfleet
from sdk_mock import error, ok, session_json


def page(ids, cursor):
    return ok({"data": [session_json(id=i) for i in ids], "next_cursor": cursor})


def test_iterating_follows_every_cursor(server):
    server.answer(page(["a", "b"], "c1"), page(["c", "d"], "c2"), page(["e"], None))
    sessions = server.client().sessions.list(status="running", limit=2)

    assert [s.id for s in sessions] == ["a", "b", "c", "d", "e"]
    assert all(isinstance(s, browserfleet.Session) for s in sessions.data)
    params = [dict(r.url.params) for r in server.requests]
    assert params == [{"status": "running", "limit": "2"}, {"status": "running", "limit": "2", "cursor": "c1"},
                      {"status": "running", "limit": "2", "cursor": "c2"}]


def test_the_first_page_is_fetched_at_once_and_the_rest_only_when_iterated(server):
    server.answer(page(["a"], "c1"), page(["b"], None))
    sessions = server.client().sessions.list()
    assert len(server.requests) == 1 and [s.id for s in sessions.data] == ["a"] and sessions.next_cursor == "c1"
    assert dict(server.requests[0].url.params) == {}
    assert [len(p.data) for p in sessions.iter_pages()] == [1, 1]


def test_a_bad_key_raises_at_the_call(server):
    server.answer(error(401, "unauthorized"))
    with pytest.raises(browserfleet.AuthenticationError):
        server.client().sessions.list()


def test_a_cursor_that_comes_back_stops_with_an_error_not_a_loop(server):
    server.answer(page(["a"], "same"), page(["b"], "same"))
    with pytest.raises(browserfleet.BrowserfleetError, match="twice"):
        list(server.client().sessions.list())


def test_profiles_list_follows_cursors(server):
    profile = {"created_at": "2026-12-01T09:00:00Z", "updated_at": "2026-12-01T09:00:00Z", "size_bytes": 10}
    server.answer(ok({"data": [{**profile, "id": "p1", "name": "shop"}], "next_cursor": "n"}),
                  ok({"data": [{**profile, "id": "p2"}]}))
    assert [p.id for p in server.client().profiles.list()] == ["p1", "p2"]


async def test_async_iteration_follows_cursors(server):
    server.answer(page(["a", "b"], "c1"), page(["c"], None))
    async with server.async_client() as bf:
        ids = [s.id async for s in bf.sessions.list(limit=2)]
    assert ids == ["a", "b", "c"]
    assert [r.url.params.get("cursor") for r in server.requests] == [None, "c1"]


async def test_awaiting_the_async_list_gives_the_first_page(server):
    server.answer(page(["a"], "c1"))
    async with server.async_client() as bf:
        first = await bf.sessions.list(status="completed")
    assert [s.id for s in first.data] == ["a"] and first.next_cursor == "c1"
