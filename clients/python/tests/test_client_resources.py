"""Each resource method: the method, path, query and body it sends, and the typed model it returns."""
from datetime import datetime, timezone
from decimal import Decimal
from uuid import UUID

import httpx
import pytest

import browserfleet
from sdk_mock import created_json, ok, session_json

PROFILE = {"id": "p1", "name": "shop", "created_at": "2026-12-01T09:00:00Z", "updated_at": "2026-12-01T09:10:00Z",
           "size_bytes": 2048}
USAGE = {"plan": "professional", "status": "active", "period_start": "2026-12-01T00:00:00Z",
         "period_end": "2026-12-31T00:00:00Z", "credits_granted": 5000, "credits_used": 3, "credits_remaining": 4997,
         "sessions_running": 1}


def sent(server, index=-1):
    r = server.requests[index]
    return r.method, r.url.path


def test_sessions_create_sends_only_the_options_given(server):
    server.answer(ok(created_json(isolation="context"), 201))
    s = server.client().sessions.create(timeout_s=300, isolation="context", profile={"id": "p1", "persist": True})
    assert sent(server) == ("POST", "/v1/sessions")
    assert server.body() == {"timeout_s": 300, "isolation": "context", "profile": {"id": "p1", "persist": True}}
    assert isinstance(s, browserfleet.SessionCreated) and s.isolation == "context" and s.warm is True
    assert s.created_at == datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


def test_sessions_create_with_no_options_sends_an_empty_object(server):
    server.answer(ok(created_json(), 201))
    server.client().sessions.create()
    assert server.body() == {} and server.requests[0].headers["content-type"] == "application/json"


def test_sessions_retrieve_and_end(server):
    done = session_json(status="completed", ended_at="2026-12-01T09:01:00Z", duration_ms=60000, cost="0.0100",
                        end_reason="client")
    server.answer(ok(session_json()), ok(done))
    bf = server.client()
    sid = UUID("6f1c2f0e-8d7a-4c1b-9f0e-2a3b4c5d6e7f")
    assert bf.sessions.retrieve(sid).status == "running"
    assert sent(server) == ("GET", f"/v1/sessions/{sid}")
    ended = bf.sessions.end(str(sid))
    assert sent(server) == ("POST", f"/v1/sessions/{sid}/end")
    assert ended.cost == Decimal("0.0100") and isinstance(ended.cost, Decimal) and ended.duration_ms == 60000


def test_an_id_cannot_escape_its_path_segment(server):
    server.answer(ok(session_json()))
    server.client().sessions.retrieve("../usage?x=1")
    assert server.requests[0].url.raw_path == b"/v1/sessions/..%2Fusage%3Fx%3D1"
    with pytest.raises(ValueError):
        server.client().sessions.retrieve("..")
    with pytest.raises(ValueError):
        server.client().sessions.downloads.get("s1", "")


def test_usage_retrieve(server):
    server.answer(ok(USAGE))
    usage = server.client().usage.retrieve()
    assert sent(server) == ("GET", "/v1/usage")
    assert isinstance(usage, browserfleet.Usage) and usage.credits_remaining == 4997


def test_downloads_list_and_get(server):
    server.answer(ok({"data": [{"name": "report.pdf", "size_bytes": 3, "created_at": "2026-12-01T09:00:00Z"}]}),
                  httpx.Response(200, content=b"%PD", headers={"content-type": "application/pdf"}))
    bf = server.client()
    files = bf.sessions.downloads.list("s1")
    assert sent(server) == ("GET", "/v1/sessions/s1/downloads")
    assert [(f.name, f.size_bytes) for f in files] == [("report.pdf", 3)]
    assert bf.sessions.downloads.get("s1", "report 1.pdf") == b"%PD"
    assert server.requests[-1].url.raw_path == b"/v1/sessions/s1/downloads/report%201.pdf"


def test_profiles_create_retrieve_list_delete(server):
    server.answer(ok(PROFILE, 201), ok(PROFILE), ok({"data": [PROFILE], "next_cursor": None}),
                  httpx.Response(204))
    bf = server.client()
    created = bf.profiles.create(name="shop")
    assert sent(server, 0) == ("POST", "/v1/profiles") and server.body(0) == {"name": "shop"}
    assert "idempotency-key" in server.requests[0].headers
    assert isinstance(created, browserfleet.Profile) and created.size_bytes == 2048
    assert bf.profiles.retrieve("p1").name == "shop" and sent(server) == ("GET", "/v1/profiles/p1")
    assert [p.id for p in bf.profiles.list()] == ["p1"] and sent(server) == ("GET", "/v1/profiles")
    assert bf.profiles.delete("p1") is None and sent(server) == ("DELETE", "/v1/profiles/p1")


def test_unknown_fields_from_a_newer_server_are_kept(server):
    server.answer(ok(session_json(region="eu-west")))
    assert server.client().sessions.retrieve("s1").region == "eu-west"


async def test_async_resources(server):
    server.answer(ok(USAGE), ok(PROFILE, 201), ok(PROFILE), httpx.Response(204),
                  ok({"data": []}), httpx.Response(200, content=b"bytes"), ok(session_json()),
                  ok(session_json(status="completed")))
    async with server.async_client() as bf:
        assert (await bf.usage.retrieve()).plan == "professional"
        assert (await bf.profiles.create()).id == "p1" and server.body(1) == {}
        assert (await bf.profiles.retrieve("p1")).id == "p1"
        assert await bf.profiles.delete("p1") is None
        assert await bf.sessions.downloads.list("s1") == []
        assert await bf.sessions.downloads.get("s1", "a.txt") == b"bytes"
        assert (await bf.sessions.retrieve("s1")).status == "running"
        assert (await bf.sessions.end("s1")).status == "completed"
    assert [(r.method, r.url.path) for r in server.requests] == [
        ("GET", "/v1/usage"), ("POST", "/v1/profiles"), ("GET", "/v1/profiles/p1"), ("DELETE", "/v1/profiles/p1"),
        ("GET", "/v1/sessions/s1/downloads"), ("GET", "/v1/sessions/s1/downloads/a.txt"),
        ("GET", "/v1/sessions/s1"), ("POST", "/v1/sessions/s1/end")]
