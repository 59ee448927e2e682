"""The operator's view of a running platform: the `browserfleet` CLI, /metrics and the logs.

One platform for the module: a tenant pays (signed webhooks), gets provisioned and a warm pool;
a session runs over CDP and ends. The CLI runs as a subprocess, as an operator would run it.
"""
import json
import os
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests import infra, stripe_fakes
from tests.e2e.platform import ADMIN_TOKEN, WEBHOOK_SECRET, running_platform, scrape, value

pytestmark = pytest.mark.e2e
SERVICE_NAMES = ("billing", "provisioner", "sessions", "warm_pool")


def wait_for(check, *, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def platform(module_db, module_mq, tmp_path_factory):
    with running_platform(module_db, module_mq, tmp_path_factory.mktemp("ops")) as running:
        yield running


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def tenant_id(platform, http) -> str:
    """A professional tenant that has paid, is provisioned and has its 5 browsers pre-warmed."""
    tenant = str(uuid.uuid4())
    customer, subscription = f"cus_{uuid.uuid4().hex[:14]}", f"sub_{uuid.uuid4().hex[:14]}"
    start = datetime.now(timezone.utc).replace(microsecond=0)
    for event in (stripe_fakes.checkout_session_completed(tenant, "professional", customer, subscription),
                  stripe_fakes.invoice_paid(tenant, "professional", customer, subscription,
                                            int(start.timestamp()), int((start + timedelta(days=30)).timestamp()))):
        body = json.dumps(event).encode()
        response = http.post(f"{platform.urls['billing']}/webhooks/stripe", content=body,
                             headers={"stripe-signature": stripe_fakes.sign(body, WEBHOOK_SECRET),
                                      "content-type": "application/json"})
        assert response.status_code == 200, response.text

    def ready():
        known = http.get(f"{platform.urls['sessions']}/v1/admin/tenants/{tenant}", headers=platform.admin)
        pool = http.get(f"{platform.urls['warm_pool']}/v1/pool", headers=platform.admin).json()
        mine = [t for t in pool["tenants"] if t["tenant_id"] == tenant]
        return (known.status_code == 200 and known.json()["provisioned"] and known.json()["credits_remaining"]
                and mine and mine[0]["idle"] == 5)

    wait_for(ready, what="tenant provisioned with a warm pool")
    return tenant


@pytest.fixture(scope="module")
def finished_session(platform, http, tenant_id) -> dict:
    """A session created with an x-request-id, driven over CDP, then ended by the customer."""
    sessions = platform.urls["sessions"]
    key = http.post(f"{sessions}/v1/admin/tenants/{tenant_id}/api-keys", headers=platform.admin).json()["api_key"]
    auth = {"authorization": f"Bearer {key}"}
    trace_id = f"trace-{uuid.uuid4().hex}"
    created = http.post(f"{sessions}/v1/sessions", json={}, headers={**auth, "x-request-id": trace_id})
    assert created.status_code == 201, created.text
    assert created.headers["x-request-id"] == trace_id
    session = created.json()
    with ws_connect(session["cdp_url"]) as ws:
        ws.send(json.dumps({"id": 1, "method": "Browser.getVersion"}))
        assert "HeadlessChrome" in json.loads(ws.recv(timeout=15))["result"]["userAgent"]
    ended = http.post(f"{sessions}/v1/sessions/{session['id']}/end", headers=auth)
    assert ended.json()["status"] == "completed"
    usage = f"{platform.urls['billing']}/v1/admin/accounts/{tenant_id}/usage"
    wait_for(lambda: http.get(usage, headers=platform.admin).json()["sessions"] >= 1, what="usage recorded")
    return {"session": session, "api_key": key, "trace_id": trace_id,
            "cdp_token": session["cdp_url"].split("token=", 1)[1]}


def cli(platform, *args: str, token: str = ADMIN_TOKEN) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADMIN_TOKEN": token,
           **{f"{name.upper()}_URL": url for name, url in platform.urls.items()}}
    return subprocess.run([str(infra.ROOT / ".venv" / "bin" / "python"), "-m", "shared.cli", *args],
                          cwd=infra.ROOT, env=env, capture_output=True, text=True, timeout=60)


def ok(platform, *args: str) -> str:
    result = cli(platform, *args)
    assert result.returncode == 0, f"browserfleet {' '.join(args)} failed: {result.stderr}"
    print(f"\n$ browserfleet {' '.join(args)}\n{result.stdout}")
    return result.stdout


def row(output: str, *needles: str) -> list[str]:
    """The table row containing all needles, split into columns."""
    lines = [line for line in output.splitlines() if all(n in line for n in needles)]
    assert len(lines) == 1, f"expected one row with {needles} in:\n{output}"
    return lines[0].split()


def fields(output: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in output.splitlines() if len(line.split(None, 1)) == 2)


def publish_to_dead_letters(rabbitmq_url: str, queue: str, body: dict) -> None:
    import asyncio

    import aio_pika

    async def publish():
        connection = await aio_pika.connect(rabbitmq_url)
        async with connection:
            channel = await connection.channel()
            await channel.default_exchange.publish(
                aio_pika.Message(json.dumps(body).encode(), content_type="application/json",
                                 message_id=body["message_id"]), routing_key=f"{queue}.dlq")

    asyncio.run(publish())


def test_operator_cli(platform, http, tenant_id, module_mq):
    sessions = platform.urls["sessions"]

    listing = ok(platform, "tenants", "list")
    assert listing.splitlines()[0].split() == ["TENANT_ID", "PLAN", "STATUS", "PROVISIONED", "CREDITS_REMAINING",
                                               "SESSIONS_RUNNING"]
    assert row(listing, tenant_id)[1:] == ["professional", "active", "True", "5000", "0"]

    shown = fields(ok(platform, "tenants", "show", tenant_id))
    assert shown["tenant_id"] == tenant_id and shown["credits_remaining"] == "5000"
    assert shown["billing_balance"] == "5000" and shown["billing_status"] == "active"

    created = fields(ok(platform, "api-keys", "create", tenant_id))
    assert created["api_key"].startswith("bf_live_") and "shown once" in created["note"]
    auth = {"authorization": f"Bearer {created['api_key']}"}
    session = http.post(f"{sessions}/v1/sessions", json={}, headers=auth).json()

    running = ok(platform, "sessions", "list", "--tenant", tenant_id, "--status", "running")
    assert row(running, session["id"])[1:4] == [tenant_id, "running", "True"]
    assert ok(platform, "sessions", "list", "--status", "running", "--limit", "1").count("running") == 1

    pool = ok(platform, "pool", "status")
    assert pool.startswith("replica ") and "(max " in pool
    _, plan, status, prewarm, idle, leased, _ = row(pool, tenant_id)
    assert (plan, status, prewarm, leased) == ("professional", "active", "5", "1") and idle in ("4", "5")

    link = fields(ok(platform, "dashboard-link", tenant_id))
    assert link["url"].startswith(f"{sessions}/dashboard") and link["expires_at"]

    ended = fields(ok(platform, "sessions", "end", session["id"]))
    assert ended["status"] == "completed" and ended["end_reason"] == "canceled"
    assert ended["tenant_id"] == tenant_id and ended["cost"] == "0.010000"
    assert http.get(f"{sessions}/v1/sessions/{session['id']}", headers=auth).json()["end_reason"] == "canceled"
    again = cli(platform, "sessions", "end", session["id"])
    assert again.returncode == 0 and fields(again.stdout)["ended_at"] == ended["ended_at"]

    assert ok(platform, "api-keys", "revoke", created["id"]).strip() == f"revoked {created['id']}"
    wait_for(lambda: http.get(f"{sessions}/v1/usage", headers=auth).status_code == 401, what="key revoked")

    # Dead letters: a message parked in billing's DLQ shows up, is replayed, and is consumed (a no-op).
    queue = "billing.sessions.session_started"
    dead = ok(platform, "dlq", "list")
    assert dead.splitlines()[0].split() == ["SERVICE", "QUEUE", "DEAD_LETTER_QUEUE", "MESSAGES"]
    assert {line.split()[0] for line in dead.splitlines()[2:]} == set(SERVICE_NAMES)
    assert row(dead, f"{queue}.dlq") == ["billing", queue, f"{queue}.dlq", "0"]
    publish_to_dead_letters(module_mq, queue, {
        "message_id": str(uuid.uuid4()), "type": "sessions.session_started", "version": 1,
        "occurred_at": session["started_at"], "session_id": session["id"], "tenant_id": tenant_id,
        "browser_id": str(uuid.uuid4()), "warm": True, "started_at": session["started_at"]})
    assert row(ok(platform, "dlq", "list"), f"{queue}.dlq")[-1] == "1"
    assert ok(platform, "dlq", "replay", "billing", queue).strip() == f"replayed 1 message(s) onto {queue}"
    assert row(ok(platform, "dlq", "list"), f"{queue}.dlq")[-1] == "0"
    ledger = http.get(f"{platform.urls['billing']}/v1/admin/accounts/{tenant_id}/ledger", headers=platform.admin)
    assert [e["kind"] for e in ledger.json()["data"]].count("debit") == 1  # the replayed duplicate debits nothing

    # Errors read as errors, with a non-zero exit.
    unknown = cli(platform, "tenants", "show", str(uuid.uuid4()))
    assert unknown.returncode != 0 and "sessions: 404 not_found" in unknown.stderr
    refused = cli(platform, "tenants", "list", token="wrong-token")
    assert refused.returncode != 0 and "401 unauthorized" in refused.stderr
    bad_queue = cli(platform, "dlq", "replay", "billing", "no.such.queue")
    assert bad_queue.returncode != 0 and "404 not_found" in bad_queue.stderr


def test_every_service_exports_its_metrics(platform, http, tenant_id, finished_session):
    metrics = {name: scrape(http, url) for name, url in platform.urls.items()}
    for name, samples in metrics.items():
        assert value(samples, "http_requests_total") >= 1, name
        assert value(samples, "http_request_duration_seconds_count") >= 1, name
        assert value(samples, "outbox_pending") >= 0 and value(samples, "outbox_lag_seconds") >= 0, name
        assert value(samples, "messages_handled_total", result="ok") >= 1, name
        assert value(samples, "message_handle_duration_seconds_count") >= 1, name
    # Per queue, including the dead-letter depth every service reports for its own queues.
    assert value(metrics["billing"], "messages_handled_total", queue="billing.sessions.session_started") >= 1
    assert value(metrics["warm_pool"], "messages_handled_total",
                 queue="warm_pool.sessions.session_completed", result="ok") >= 1
    for name, url in platform.urls.items():
        wait_for(lambda: any(n == "dlq_depth" for n, _ in scrape(http, url)), timeout=30, what=f"{name} dlq_depth")
    assert value(scrape(http, platform.urls["sessions"]), "dlq_depth", queue="sessions.billing.payment_verified") == 0

    sessions = metrics["sessions"]
    assert value(sessions, "sessions_credits_total", operation="debited") >= 1
    assert value(sessions, "sessions_ended_total", reason="client") >= 1
    assert value(sessions, "sessions_running") >= 0
    billing = metrics["billing"]
    assert value(billing, "billing_credits_total", kind="grant") >= 5000
    assert value(billing, "billing_credits_total", kind="debit") >= 1
    assert value(billing, "billing_stripe_webhooks_total", type="invoice.paid", result="stored") >= 1
    assert value(billing, "billing_stripe_webhooks_total", type="checkout.session.completed") >= 1
    provisioner = metrics["provisioner"]
    assert value(provisioner, "provisioner_provisioning_seconds_count") >= 1
    assert 0 < value(provisioner, "provisioner_provisioning_seconds_sum") < 120
    warm = metrics["warm_pool"]
    assert 0 < value(warm, "warm_pool_warm_hit_ratio") <= 1
    assert value(warm, "warm_pool_leases_total", result="warm") >= 1


def test_sessions_running_gauge_follows_the_database(platform, http, tenant_id):
    sessions = platform.urls["sessions"]
    key = http.post(f"{sessions}/v1/admin/tenants/{tenant_id}/api-keys", headers=platform.admin).json()["api_key"]
    auth = {"authorization": f"Bearer {key}"}
    # The gauge is refreshed from the database every second: start from the database's count.
    running = http.get(f"{sessions}/v1/admin/sessions", params={"status": "running"}, headers=platform.admin)
    before = len(running.json()["data"])
    wait_for(lambda: value(scrape(http, sessions), "sessions_running") == before, what="gauge settled")
    session = http.post(f"{sessions}/v1/sessions", json={"keep_alive": True}, headers=auth).json()
    wait_for(lambda: value(scrape(http, sessions), "sessions_running") == before + 1, what="gauge up")
    http.post(f"{sessions}/v1/sessions/{session['id']}/end", headers=auth)
    wait_for(lambda: value(scrape(http, sessions), "sessions_running") == before, what="gauge down")


def log_lines(platform, service: str) -> list[dict]:
    """Every line a service wrote, each one a JSON object."""
    lines = []
    for line in (platform.logs / f"{service}.log").read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"{service} wrote a line that is not JSON: {line[:300]}") from None
    return lines


def test_trace_id_crosses_services_and_no_secret_is_logged(platform, finished_session):
    trace_id, session_id = finished_session["trace_id"], finished_session["session"]["id"]

    def traced(service: str) -> list[dict]:
        return [entry for entry in log_lines(platform, service) if entry.get("trace_id") == trace_id]

    started = [e for e in traced("sessions") if e["msg"] == "session started"]
    assert started and started[0]["session_id"] == session_id and started[0]["request_id"] == trace_id
    handled = wait_for(lambda: [e for e in traced("billing") if e["msg"] == "message handled"],
                       timeout=20, what="billing log line for session.started")
    assert handled[0]["message_type"] == "sessions.session_started"
    assert handled[0]["queue"] == "billing.sessions.session_started"
    assert handled[0]["session_id"] == session_id and handled[0]["message_id"]
    assert handled[0]["level"] == "info" and handled[0]["service"] == "billing"
    # warm_pool consumed the same event under the same trace id.
    assert any(e.get("message_type") == "sessions.session_started" for e in traced("warm_pool"))

    secrets = {"API key": finished_session["api_key"], "CDP token": finished_session["cdp_token"],
               "admin token": ADMIN_TOKEN, "webhook secret": WEBHOOK_SECRET}
    for service in SERVICE_NAMES:
        assert all({"ts", "level", "service", "msg"} <= set(entry) for entry in log_lines(platform, service))
        text = (platform.logs / f"{service}.log").read_text()
        assert text.strip(), f"{service} wrote no log"
        for what, secret in secrets.items():
            assert secret not in text, f"{what} found in {service}.log"
