"""Issue 15, item 4 (limits): request bodies are capped before they are parsed, and a request
without valid credentials is refused before its body is read.

Against sessions and billing as processes: a 64 MiB unauthenticated body, declared or chunked,
is refused with 413 while the process's peak RSS barely moves (the unfixed services read and
parsed all of it); the Stripe webhook's own cap answers the same way; a bad key or admin token
is answered 401 before the body is asked for (an `Expect: 100-continue` client sees the 401
instead of `100 Continue`, which uvicorn sends when the app first reads the body).
"""
import asyncio
import json
import signal
from pathlib import Path
from uuid import uuid4

import httpx
import pytest_asyncio

from tests import infra
from tests.integration.sessions_support import ADMIN, LeaseResponder, Platform, bind_event_sink, start_sessions

MiB = 2**20
BODY = 64 * MiB
CAP = MiB  # MAX_REQUEST_BODY_BYTES's default: both services below run with it
# Far below the body: reading it would take at least its 64 MiB.
PEAK_GROWTH_BOUND = 8 * MiB
JSON = {"content-type": "application/json"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def services(module_db, module_mq, artifacts_dir):
    lease = LeaseResponder(module_mq)
    lease.mode = "fake"
    await lease.start()
    await bind_event_sink(module_mq)
    sessions = start_sessions(module_db, module_mq, artifacts_dir, name="sessions-request-limits")
    billing = infra.ServiceProcess("billing", {
        "DATABASE_URL": module_db, "RABBITMQ_URL": module_mq, "HTTP_PORT": str(infra.free_port()),
        "STRIPE_WEBHOOK_SECRET": "whsec_request_limits_test", "ADMIN_TOKEN": "request-limits-admin",
        "STRIPE_API_BASE": "http://127.0.0.1:9", "LOG_FORMAT": "text"}, artifacts_dir)
    billing.log_path = Path(artifacts_dir) / "billing-request-limits.log"
    billing.start()
    platform = Platform(module_mq, [sessions], lease)
    platform.sessions, platform.billing = sessions, billing
    try:
        billing.wait_ready()
        yield platform
    finally:
        await platform.http.aclose()
        billing.stop(signal.SIGTERM)
        sessions.stop(signal.SIGTERM)
        await lease.stop()


def _status(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in lines)
            if k in ("VmRSS", "VmHWM")}


def _reset_peak(pid: int) -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS, and return that."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid)["VmRSS"]


def _declared_body() -> bytes:
    """64 MiB of valid JSON, sent with its Content-Length."""
    head, tail = b'{"timeout_s": 60, "pad": "', b'"}'
    return head + b"x" * (BODY - len(head) - len(tail)) + tail


async def _chunked_body():
    """64 MiB of JSON without a Content-Length (httpx sends an async iterator chunked)."""
    yield b'{"timeout_s": 60, "pad": "'
    for _ in range(BODY // MiB):
        yield b"x" * MiB
    yield b'"}'


def _assert_too_large(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text[:300]
    assert r.json()["error"]["code"] == "payload_too_large"
    assert set(r.json()["error"]) == {"code", "message"}


async def _post_measured(pid: int, url: str, *, content, headers: dict) -> tuple[httpx.Response, int]:
    """POST and return the answer with how far the process's peak RSS rose meanwhile."""
    before = _reset_peak(pid)
    async with httpx.AsyncClient(timeout=120) as client:
        r = await client.post(url, content=content, headers={**JSON, **headers})
    return r, _status(pid)["VmHWM"] - before


async def test_a_64_mib_unauthenticated_body_is_refused_before_it_is_read(services):
    r, growth = await _post_measured(services.sessions.proc.pid, f"{services.url}/v1/sessions",
                                     content=_declared_body(), headers={})
    _assert_too_large(r)
    assert growth < PEAK_GROWTH_BOUND, f"peak RSS grew by {growth / MiB:.1f} MiB for a {BODY // MiB} MiB body"


async def test_a_64_mib_chunked_body_is_refused_as_it_streams_in(services):
    _, auth = await services.tenant()  # authenticated, so the route goes on to read the body
    r, growth = await _post_measured(services.sessions.proc.pid, f"{services.url}/v1/sessions",
                                     content=_chunked_body(), headers=auth)
    _assert_too_large(r)
    assert growth < PEAK_GROWTH_BOUND, f"peak RSS grew by {growth / MiB:.1f} MiB for a {BODY // MiB} MiB body"
    # Within the cap, the same tenant's create goes through on the same service.
    r = await services.http.post("/v1/sessions", content=json.dumps({"timeout_s": 60, "pad": "x" * (CAP // 2)}),
                                 headers={**JSON, **auth})
    assert r.status_code == 422, r.text  # read and parsed: CreateSession forbids unknown fields
    r = await services.http.post("/v1/sessions", json={"timeout_s": 60}, headers=auth)
    assert r.status_code == 201, r.text


async def test_the_webhook_cap_answers_like_every_other(services):
    webhook = f"{services.billing.url}/webhooks/stripe"
    async with httpx.AsyncClient(timeout=120) as client:
        r = await client.post(webhook, content=b"{" + b" " * (2 * CAP) + b"}",
                              headers={**JSON, "stripe-signature": "t=1,v1=00"})
    _assert_too_large(r)
    r, growth = await _post_measured(services.billing.proc.pid, webhook, content=_chunked_body(),
                                     headers={"stripe-signature": "t=1,v1=00"})
    _assert_too_large(r)
    assert growth < PEAK_GROWTH_BOUND, f"peak RSS grew by {growth / MiB:.1f} MiB for a {BODY // MiB} MiB body"


async def _first_answer(url: str, path: str, headers: dict, body: bytes) -> tuple[str, bytes]:
    """Send the headers of a POST with `Expect: 100-continue` and no body yet; return the first
    status line the server answers with, and (after sending the body if it asked) the final one."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        lines = [f"POST {path} HTTP/1.1", f"host: {host}", "content-type: application/json",
                 f"content-length: {len(body)}", "expect: 100-continue", "connection: close",
                 *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        first = (await reader.readline()).decode().strip()
        if first.endswith("100 Continue"):
            await reader.readline()  # the blank line after it
            writer.write(body)
            await writer.drain()
            final = (await reader.readline()).decode().strip()
        else:
            final = first
        await reader.read()  # the rest, until the server closes
        return first, final.encode()
    finally:
        writer.close()


async def test_a_bad_key_is_refused_before_the_body_is_read(services):
    body = json.dumps({"timeout_s": 60}).encode()
    for headers in ({"authorization": "Bearer bf_not_a_key_of_anyone"}, {}):
        first, _ = await _first_answer(services.url, "/v1/sessions", headers, body)
        assert first.startswith("HTTP/1.1 401"), f"{headers}: the server asked for the body first ({first})"

    # An admin route likewise: a wrong admin token is answered before the body is asked for.
    first, _ = await _first_answer(services.url, f"/v1/admin/tenants/{uuid4()}/api-keys",
                                   {"authorization": "Bearer not-the-admin-token"}, b"{}")
    assert first.startswith("HTTP/1.1 401"), first

    # The probe is sound: with a valid key the server does ask for the body, and then creates.
    _, auth = await services.tenant()
    first, final = await _first_answer(services.url, "/v1/sessions", {k.lower(): v for k, v in auth.items()}, body)
    assert first == "HTTP/1.1 100 Continue" and final.startswith(b"HTTP/1.1 201"), (first, final)
    # And an admin with the right token goes through on the same route.
    tenant_id, _ = await services.tenant()
    first, final = await _first_answer(services.url, f"/v1/admin/tenants/{tenant_id}/api-keys",
                                       {k.lower(): v for k, v in ADMIN.items()}, b"{}")
    assert final.startswith(b"HTTP/1.1 201"), (first, final)
