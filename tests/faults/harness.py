"""The fault-injection harness: the four services as processes that can be killed, armed with a
crash point (`shared.faults`) and restarted; a paying customer; and an audit that counts lost
messages, doubled effects and leaked browsers from what the services recorded."""
import asyncio
import json
import os
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import httpx

from tests import infra, stripe_fakes
from tests import sandbox_audit
from tests.e2e.platform import WEBHOOK_SECRET, Platform
from tests.helpers import chromium_pids, eventually

CRASH_ENV = "BROWSERFLEET_CRASH_AT"
PREWARM = 2
# Short timeouts so the system's own recovery (stuck sessions, unconfirmed leases, poison messages)
# happens within a test; they are settings every deployment can tune the same way.
FAST_ENV = {"LEASE_TIMEOUT_S": "5", "LEASE_CONFIRM_TIMEOUT_S": "8",
            "WEBHOOK_RETRY_INTERVAL_S": "0.5", "WEBHOOK_RETRY_MAX_BACKOFF_S": "2"}


def plans_file(workdir: Path, prewarm: int) -> Path:
    plans = json.loads((infra.ROOT / "shared" / "plans.json").read_text())
    plans["professional"]["prewarm_browsers"] = prewarm
    path = workdir / "plans.json"
    path.write_text(json.dumps(plans))
    return path


class FaultPlatform(Platform):
    """A Platform whose services can be SIGKILLed, armed with a crash point and restarted."""

    def __init__(self, database_url: str, rabbitmq_url: str, workdir: Path, *, crash: dict | None = None,
                 prewarm: int = PREWARM, **extra_env):
        super().__init__(database_url, rabbitmq_url, workdir, PLANS_FILE=str(plans_file(workdir, prewarm)),
                         **{**FAST_ENV, **extra_env})
        self.database_url, self.rabbitmq_url = database_url, rabbitmq_url
        self.past_pids: set[int] = set()
        for name, point in (crash or {}).items():
            self.procs[name].env[CRASH_ENV] = point

    def _replace(self, name: str, crash: str | None) -> infra.ServiceProcess:
        old = self.procs[name]
        env = {k: v for k, v in old.env.items() if k != CRASH_ENV}
        if crash:
            env[CRASH_ENV] = crash
        proc = infra.ServiceProcess(name, env, self.logs)
        self.procs[name] = proc
        return proc

    def start(self) -> "FaultPlatform":
        super().start()
        self.past_pids |= {p.proc.pid for p in self.procs.values()}
        return self

    def restart(self, name: str, *, crash: str | None = None, graceful: bool = True) -> None:
        """Stop (SIGTERM, or SIGKILL when not graceful) and start again, armed with `crash` if given."""
        if graceful:
            self.procs[name].stop()
        else:
            self.procs[name].kill()
        proc = self._replace(name, crash).start()
        self.past_pids.add(proc.proc.pid)
        proc.wait_ready()

    def kill9(self, name: str) -> None:
        self.procs[name].kill()

    async def crashed(self, name: str, timeout: float = 60) -> int:
        """Wait until the armed service has killed itself; its exit code (-9)."""
        proc = self.procs[name].proc
        await eventually(lambda: proc.poll() is not None, timeout=timeout, what=f"{name} to hit its crash point")
        return proc.returncode

    def pid(self, name: str) -> int:
        return self.procs[name].proc.pid


# --- a customer ------------------------------------------------------------------------------

def signed(event: dict, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> tuple[bytes, dict]:
    body = json.dumps(event).encode()
    return body, {"stripe-signature": stripe_fakes.sign(body, secret, timestamp),
                  "content-type": "application/json"}


class Customer:
    """One tenant paying through Stripe webhooks and using sessions, over HTTP only."""

    def __init__(self, platform: FaultPlatform, http: httpx.AsyncClient, plan: str = "professional"):
        self.p, self.http, self.plan = platform, http, plan
        self.tenant_id = str(uuid.uuid4())
        self.customer, self.subscription = f"cus_{uuid.uuid4().hex[:14]}", f"sub_{uuid.uuid4().hex[:14]}"
        self.period_start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=1)
        self.period_end = self.period_start + timedelta(days=30)
        self.auth: dict | None = None

    def checkout(self, **kw) -> dict:
        return stripe_fakes.checkout_session_completed(self.tenant_id, self.plan, self.customer,
                                                       self.subscription, **kw)

    def invoice(self, start=None, end=None, **kw) -> dict:
        return stripe_fakes.invoice_paid(self.tenant_id, self.plan, self.customer, self.subscription,
                                         start or self.period_start, end or self.period_end, **kw)

    async def webhook(self, event: dict, **sign_kw) -> httpx.Response:
        body, headers = signed(event, **sign_kw)
        return await self.http.post(f"{self.p.urls['billing']}/webhooks/stripe", content=body, headers=headers)

    async def pay(self) -> None:
        for event in (self.checkout(), self.invoice()):
            r = await self.webhook(event)
            assert r.status_code == 200, r.text

    async def ready(self, *, credits: int = 5000, timeout: float = 60) -> None:
        """Known to sessions (an API key), provisioned, its allowance open and its pool warm."""
        async def key():
            r = await self.http.post(f"{self.p.urls['sessions']}/v1/admin/tenants/{self.tenant_id}/api-keys",
                                     headers=self.p.admin)
            return r if r.status_code == 201 else None

        if self.auth is None:
            self.auth = {"authorization": f"Bearer {(await eventually(key, timeout=timeout, what='api key')).json()['api_key']}"}
        await eventually(lambda: self.remaining_is(credits), timeout=timeout, what=f"{credits} credits")
        async with Db(self.p.database_url) as db:
            await eventually(lambda: db.provisioned(self.tenant_id), timeout=timeout, what="tenant provisioned")
            await eventually(lambda: db.idle_browsers(self.tenant_id, at_least=PREWARM), timeout=timeout,
                             what="pool warm")

    async def usage(self) -> dict:
        r = await self.http.get(f"{self.p.urls['sessions']}/v1/usage", headers=self.auth)
        assert r.status_code == 200, r.text
        return r.json()

    async def usage_response(self) -> httpx.Response:
        return await self.http.get(f"{self.p.urls['sessions']}/v1/usage", headers=self.auth)

    async def remaining_is(self, credits: int) -> bool:
        r = await self.http.get(f"{self.p.urls['sessions']}/v1/usage", headers=self.auth)
        return r.status_code == 200 and r.json()["credits_remaining"] == credits

    async def create(self, key: str | None = None, **body) -> httpx.Response:
        headers = dict(self.auth)
        if key:
            headers["idempotency-key"] = key
        return await self.http.post(f"{self.p.urls['sessions']}/v1/sessions", json=body, headers=headers)

    async def create_until_created(self, key: str, timeout: float = 90) -> dict:
        """What a careful client does: retry the same Idempotency-Key until the session exists."""
        async def attempt():
            try:
                r = await self.create(key)
            except httpx.TransportError:
                return None
            assert r.status_code in (201, 503, 502, 500), r.text
            assert "error" in r.json() or r.status_code == 201, r.text
            return r.json() if r.status_code == 201 else None
        return await eventually(attempt, timeout=timeout, interval=0.5, what="session created on retry")

    async def end(self, session_id: str) -> httpx.Response:
        return await self.http.post(f"{self.p.urls['sessions']}/v1/sessions/{session_id}/end", headers=self.auth)

    async def account(self) -> dict:
        r = await self.http.get(f"{self.p.urls['billing']}/v1/admin/accounts/{self.tenant_id}", headers=self.p.admin)
        assert r.status_code == 200, r.text
        return r.json()

    async def ledger(self) -> list[dict]:
        r = await self.http.get(f"{self.p.urls['billing']}/v1/admin/accounts/{self.tenant_id}/ledger",
                                params={"limit": 500}, headers=self.p.admin)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    async def billed_sessions(self) -> list[str]:
        r = await self.http.get(f"{self.p.urls['billing']}/v1/admin/accounts/{self.tenant_id}/usage",
                                headers=self.p.admin)
        assert r.status_code == 200, r.text
        return [u["session_id"] for u in r.json()["data"]]

    async def reconciled(self) -> bool:
        """Billing's balance equals the sessions service's remaining credits."""
        usage, account = await self.usage(), await self.account()
        return account["balance"] == usage["credits_remaining"]


# --- what the services recorded --------------------------------------------------------------

CONSUMERS = {  # routing key → services with a queue for it (checked against RabbitMQ in `consumers`)
    "billing.payment_verified": ("provisioner", "sessions"),
    "billing.subscription_changed": ("provisioner", "sessions", "warm_pool"),
    "provisioner.tenant_provisioned": ("sessions", "warm_pool"),
    "provisioner.tenant_deprovisioned": ("sessions",),
    "sessions.session_started": ("billing", "warm_pool"),
    "sessions.session_completed": ("billing", "warm_pool"),
    "warm_pool.browser_crashed": ("sessions",),
}
SCHEMAS = ("billing", "provisioner", "sessions", "warm_pool")


class Db:
    """Read-only audit queries over the services' schemas (the test's own superuser connection)."""

    def __init__(self, url: str):
        self.url = url
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> "Db":
        self.conn = await asyncpg.connect(self.url)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.conn.close()

    async def provisioned(self, tenant_id: str) -> bool:
        return bool(await self.conn.fetchval(
            "SELECT provisioned FROM sessions.tenants WHERE tenant_id = $1", uuid.UUID(tenant_id)))

    async def idle_browsers(self, tenant_id: str, *, at_least: int) -> bool:
        n = await self.conn.fetchval("SELECT count(*) FROM warm_pool.browsers WHERE tenant_id = $1"
                                     " AND state = 'idle'", uuid.UUID(tenant_id))
        return n >= at_least

    async def count(self, sql: str, *args) -> int:
        return int(await self.conn.fetchval(sql, *args) or 0)

    async def unpublished(self) -> int:
        return sum([await self.count(f"SELECT count(*) FROM {s}.outbox WHERE published_at IS NULL") for s in SCHEMAS])

    async def lost(self) -> list[str]:
        """Messages a service committed to send that some consumer never handled."""
        missing = [f"{r['routing_key']} {r['id']} never published" for s in SCHEMAS for r in await self.conn.fetch(
            f"SELECT id, routing_key FROM {s}.outbox WHERE published_at IS NULL")]
        for schema in SCHEMAS:
            for consumer in SCHEMAS:
                keys = [k for k, takers in CONSUMERS.items() if k.startswith(schema) and consumer in takers]
                rows = await self.conn.fetch(
                    f"SELECT id, routing_key FROM {schema}.outbox o WHERE routing_key = ANY($1)"
                    f" AND NOT EXISTS (SELECT 1 FROM {consumer}.inbox i WHERE i.message_id = o.id)", keys)
                missing += [f"{r['routing_key']} {r['id']} not handled by {consumer}" for r in rows]
        return missing

    async def doubled(self) -> list[str]:
        """Effects that happened more than once."""
        checks = {
            "payment announced twice for one period": """
                SELECT count(*) - count(DISTINCT (body->>'tenant_id', body->>'period_start'))
                  FROM billing.outbox WHERE routing_key = 'billing.payment_verified'""",
            "tenant provisioned more often than paid or changed": """
                SELECT coalesce(sum(greatest(0, p.n - b.n)), 0)
                  FROM (SELECT body->>'tenant_id' AS t, count(*) AS n FROM provisioner.outbox
                         WHERE routing_key = 'provisioner.tenant_provisioned' GROUP BY 1) p
                  JOIN (SELECT body->>'tenant_id' AS t, count(*) AS n FROM billing.outbox
                         WHERE routing_key IN ('billing.payment_verified', 'billing.subscription_changed')
                         GROUP BY 1) b USING (t)""",
            "sessions debited twice in billing": """
                SELECT count(*) - count(DISTINCT reference) FROM billing.ledger WHERE kind = 'debit'""",
            "billing debits without a started session": """
                SELECT count(*) FROM billing.ledger l WHERE kind = 'debit'
                   AND NOT EXISTS (SELECT 1 FROM sessions.sessions s
                                    WHERE s.id::text = l.reference AND s.started_at IS NOT NULL)""",
            "credits used beyond sessions started": """
                SELECT coalesce(sum(greatest(0, a.credits_used - (SELECT count(*) FROM sessions.sessions s
                        WHERE s.tenant_id = a.tenant_id AND s.period_start = a.period_start
                          AND s.status IN ('starting', 'running', 'completed')))), 0)
                  FROM sessions.allowances a""",
            "a browser serving two sessions": """
                SELECT count(*) FROM (SELECT browser_id FROM sessions.sessions WHERE browser_id IS NOT NULL
                                       AND isolation = 'browser' GROUP BY browser_id HAVING count(*) > 1) t""",
            "a BrowserContext serving two sessions": """
                SELECT count(*) FROM (SELECT browser_id, context_id FROM warm_pool.contexts WHERE context_id IS NOT NULL
                                       GROUP BY 1, 2 HAVING count(*) > 1) t""",
            "session started twice": """
                SELECT count(*) FROM (SELECT body->>'session_id' FROM sessions.outbox
                                       WHERE routing_key = 'sessions.session_started'
                                       GROUP BY 1 HAVING count(*) > 1) t""",
            "session completed twice": """
                SELECT count(*) FROM (SELECT body->>'session_id' FROM sessions.outbox
                                       WHERE routing_key = 'sessions.session_completed'
                                       GROUP BY 1 HAVING count(*) > 1) t""",
        }
        found = []
        for what, sql in checks.items():
            n = await self.count(sql)
            if n:
                found.append(f"{what}: {n}")
        return found

    async def leaked_leases(self) -> list[str]:
        """Browsers leased to a session that is not running (a browser nobody will ever end)."""
        rows = await self.conn.fetch("""
            SELECT b.id, b.session_id, s.status FROM warm_pool.browsers b
              LEFT JOIN sessions.sessions s ON s.id = b.session_id
             WHERE b.state = 'leased' AND (s.status IS DISTINCT FROM 'running' OR s.browser_id <> b.id)""")
        leaks = [f"browser {r['id']} leased to session {r['session_id']} ({r['status']})" for r in rows]
        # Context sessions: a live context whose session is not running, a host's slot count off.
        rows = await self.conn.fetch("""
            SELECT c.session_id, c.state, s.status FROM warm_pool.contexts c
              LEFT JOIN sessions.sessions s ON s.id = c.session_id
             WHERE c.state IN ('creating', 'active', 'ending') AND s.status IS DISTINCT FROM 'running'""")
        leaks += [f"context of session {r['session_id']} {r['state']} ({r['status']})" for r in rows]
        rows = await self.conn.fetch("""
            SELECT b.id, b.state, b.active_contexts, count(c.session_id) AS live FROM warm_pool.browsers b
              LEFT JOIN warm_pool.contexts c ON c.browser_id = b.id AND c.state IN ('creating', 'active', 'ending')
             WHERE b.mode = 'context' GROUP BY b.id
            HAVING (b.state = 'dead' AND count(c.session_id) > 0) OR (b.state <> 'dead' AND b.active_contexts <> count(c.session_id))""")
        leaks += [f"context host {r['id']} ({r['state']}) counts {r['active_contexts']} contexts, {r['live']} live"
                  for r in rows]
        return leaks

    async def live_dirs(self) -> set[str]:
        rows = await self.conn.fetch("SELECT id FROM warm_pool.browsers WHERE state <> 'dead'")
        return {str(r["id"]) for r in rows}


def profile_dirs(platform: Platform) -> set[str]:
    return {p.name for p in platform.profile_root.iterdir()} if platform.profile_root.exists() else set()


def chromium_dirs(platform: Platform) -> set[str]:
    """Browser ids (profile directory names) of Chromium processes running under the profile root."""
    root, found = str(platform.profile_root), set()
    for pid in chromium_pids(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for arg, value in zip(cmd, cmd[1:]):
            if arg.startswith(b"--user-data-dir=" + root.encode()):  # unsandboxed
                found.add(Path(arg.decode().split("=", 1)[1]).relative_to(root).parts[0])
            elif arg == b"BROWSERFLEET_DIR" and value.startswith(root.encode()):  # a sandbox's bwrap
                found.add(Path(value.decode()).relative_to(root).parts[0])
    return found


def zombies(parents: set[int]) -> list[str]:
    """Zombie processes whose parent is one of `parents`, or orphaned Chromium ones."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if state == "Z" and (int(ppid) in parents or ("chrom" in comm and ppid == "1")):
            found.append(f"{entry.name} ({comm}, parent {ppid})")
    return found


async def no_leaks(platform: FaultPlatform, *, timeout: float = 45) -> None:
    """Eventually: no leased browser without its running session, no profile directory and no
    Chromium process that warm_pool does not account for, no zombie."""
    async with Db(platform.database_url) as db:
        async def clean():
            leases = await db.leaked_leases()
            live = await db.live_dirs()
            stray_dirs = profile_dirs(platform) - live
            stray_procs = chromium_dirs(platform) - live
            problems = leases + [f"stray dir {d}" for d in stray_dirs] + [f"stray chromium {d}" for d in stray_procs]
            problems += [f"zombie {z}" for z in zombies(platform.past_pids | {os.getpid()})]
            problems += sandbox_audit.stray()  # namespaces, veths, cgroups, tables, slots, processes
            assert not problems, problems
            return True
        await eventually(clean, timeout=timeout, interval=0.5, what="no leaked browser")


async def audit(platform: FaultPlatform, *, timeout: float = 45) -> tuple[int, int]:
    """Eventually every outbox drained and every message handled; (messages lost, effects doubled).
    Lost messages are waited for (a slow consumer is not a loss); doubled effects never undo."""
    async with Db(platform.database_url) as db:
        deadline = time.monotonic() + timeout
        lost = await db.lost()
        while lost and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            lost = await db.lost()
        doubled = await db.doubled()
    assert not lost, lost
    assert not doubled, doubled
    return len(lost), len(doubled)


# --- the shared servers (other test runs use them too: keep outages short) --------------------

def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def pg_ctl(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]  # the installed cluster's version, e.g. 15
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
                   check=True, capture_output=True, timeout=120)


def queue_consumers(vhost_url: str) -> dict[str, int]:
    vhost = httpx.URL(vhost_url).path.lstrip("/")
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "consumers", "messages"],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    result = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            result[parts[0]] = int(parts[1])
    return result
