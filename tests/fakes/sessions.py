"""In-memory fakes of sessions' ports: the unit of work (repositories, outbox, inbox) and the lease,
for service-layer tests of the handlers (tests/unit/test_sessions_handlers.py).

FakeRepository answers like services/sessions/repository.py's SQL (same methods, same keyword
parameters: the test module checks), on rows held as dicts. A transaction that raises is rolled
back. `now()` is the real time plus `offset`, moved by the test (`advance`), so the reaper's
deadlines can pass without waiting.
"""
from datetime import datetime, timedelta, timezone
from uuid import UUID, uuid4

from shared.messages import LeaseReply
from tests.fakes import uow

STATE = ("tenants", "allowances", "api_keys", "sessions", "idempotency", "sign_ins", "crashed_leases", "outbox",
         "inbox")
LIVE = ("starting", "running")


class FakeRepository:
    def __init__(self, state: "FakeUnitOfWork"):
        self.s = state

    # --- tenants and allowances ----------------------------------------------------------------
    async def upsert_tenant(self, *, tenant_id, plan, max_concurrent, max_session_seconds, provisioned=False):
        row = self.s.tenants.setdefault(tenant_id, {"tenant_id": tenant_id, "status": "active", "provisioned": False,
                                                    "current_period_start": None})
        row.update(plan=plan, provisioned=row["provisioned"] or provisioned, max_concurrent_sessions=max_concurrent,
                   max_session_seconds=max_session_seconds, updated_at=self.s.now())

    async def open_period(self, *, tenant_id, period_start, period_end, credits):
        allowance = self.s.allowances.setdefault((tenant_id, period_start), {
            "tenant_id": tenant_id, "period_start": period_start, "credits_used": 0})
        allowance.update(period_end=period_end, credits_granted=credits)
        tenant = self.s.tenants[tenant_id]
        if tenant["current_period_start"] is None or tenant["current_period_start"] < period_start:
            tenant.update(current_period_start=period_start, status="active")

    async def mark_deprovisioned(self, *, tenant_id):
        tenant = self.s.tenants.get(tenant_id)
        if tenant and tenant["status"] == "canceled":
            tenant["provisioned"] = False

    async def set_tenant_status(self, *, tenant_id, status):
        if tenant_id in self.s.tenants:
            self.s.tenants[tenant_id]["status"] = status

    async def get_tenant(self, *, tenant_id, for_update=False):
        row = self.s.tenants.get(tenant_id)
        return dict(row) if row else None

    async def count_live_sessions(self, *, tenant_id):
        return sum(1 for s in self.s.sessions.values() if s["tenant_id"] == tenant_id and s["status"] in LIVE)

    async def debit_credit(self, *, tenant_id, period_start):
        allowance = self.s.allowances.get((tenant_id, period_start))
        if allowance is None or allowance["credits_used"] >= allowance["credits_granted"]:
            return None
        allowance["credits_used"] += 1
        return allowance["credits_granted"] - allowance["credits_used"]

    async def refund_credit(self, *, tenant_id, period_start):
        allowance = self.s.allowances.get((tenant_id, period_start))
        if allowance and allowance["credits_used"] > 0:
            allowance["credits_used"] -= 1

    async def current_allowance(self, *, tenant_id):
        tenant = self.s.tenants.get(tenant_id)
        allowance = tenant and self.s.allowances.get((tenant_id, tenant["current_period_start"]))
        return dict(allowance) if allowance else None

    # --- api keys ------------------------------------------------------------------------------
    async def insert_api_key(self, *, key_id, tenant_id, key_hash, prefix):
        self.s.api_keys[key_id] = {"id": key_id, "tenant_id": tenant_id, "key_hash": key_hash, "prefix": prefix,
                                   "created_at": self.s.now(), "last_used_at": None, "revoked_at": None}

    async def count_live_api_keys(self, *, tenant_id):
        return sum(1 for k in self.s.api_keys.values() if k["tenant_id"] == tenant_id and k["revoked_at"] is None)

    async def revoke_api_key(self, *, key_id):
        key = self.s.api_keys.get(key_id)
        if key is None:
            return None
        key["revoked_at"] = key["revoked_at"] or self.s.now()
        return key["key_hash"]

    async def find_api_key(self, *, key_hash):
        for key in self.s.api_keys.values():
            if key["key_hash"] == key_hash and key["revoked_at"] is None:
                return {"id": key["id"], "tenant_id": key["tenant_id"], "last_used_at": key["last_used_at"]}
        return None

    async def touch_api_key(self, *, key_id):
        self.s.api_keys[key_id]["last_used_at"] = self.s.now()

    # --- sessions ------------------------------------------------------------------------------
    async def insert_session(self, *, session_id, tenant_id, browser, plan, timeout_s, idle_timeout_s, keep_alive,
                             token_hash, period_start, remaining_credits, isolation="browser", profile_id=None,
                             profile_persist=None):
        save = None if profile_id is None else ("pending" if profile_persist else "not_saved")
        self.s.sessions[session_id] = {
            "id": session_id, "tenant_id": tenant_id, "status": "starting", "browser": browser, "plan": plan,
            "timeout_s": timeout_s, "idle_timeout_s": idle_timeout_s, "keep_alive": keep_alive,
            "token_hash": token_hash, "period_start": period_start, "remaining_credits": remaining_credits,
            "browser_id": None, "browser_ws_url": None, "warm": None, "created_at": self.s.now(),
            "started_at": None, "expires_at": None, "last_activity_at": None, "connections": 0,
            "disconnected_at": None, "ended_at": None, "duration_ms": None, "cost": None, "end_reason": None,
            "failure": None, "isolation": isolation, "context_id": None, "downloads_path": None,
            "profile_id": profile_id, "profile_persist": profile_persist, "profile_save": save,
            "profile_save_message": None}

    async def set_profile_save(self, *, session_id, outcome, message):
        row = self.s.sessions.get(session_id)
        if row and row["profile_persist"] and row["profile_save"] == "pending":
            row.update(profile_save=outcome, profile_save_message=message)

    async def mark_running(self, *, session_id, browser_id, browser_ws_url, warm, context_id=None,
                           downloads_path=None):
        row = self.s.sessions.get(session_id)
        if row is None or row["status"] != "starting" or session_id in self.s.crashed_leases:
            return None
        now = self.s.now()
        row.update(status="running", browser_id=browser_id, browser_ws_url=browser_ws_url, warm=warm,
                   context_id=context_id, downloads_path=downloads_path, started_at=now, last_activity_at=now,
                   expires_at=now + timedelta(seconds=row["timeout_s"]))
        return dict(row)

    async def mark_failed(self, *, session_id, failure):
        row = self.s.sessions.get(session_id)
        if row is None or row["status"] != "starting":
            return None
        row.update(status="failed", failure=failure, ended_at=self.s.now())
        return dict(row)

    async def get_session(self, *, session_id, tenant_id=None, for_update=False):
        row = self.s.sessions.get(session_id)
        return dict(row) if row and tenant_id in (None, row["tenant_id"]) else None

    async def complete_session(self, *, session_id, ended_at, duration_ms, cost, end_reason):
        row = self.s.sessions.get(session_id)
        if row is None or row["status"] != "running":
            return None
        row.update(status="completed", ended_at=ended_at, duration_ms=duration_ms, cost=cost, end_reason=end_reason)
        return dict(row)

    async def list_sessions(self, *, tenant_id, status, limit, after):
        rows = sorted((r for r in self.s.sessions.values() if r["tenant_id"] == tenant_id
                       and status in (None, r["status"])), key=lambda r: (r["created_at"], r["id"]), reverse=True)
        if after is not None:
            rows = [r for r in rows if (r["created_at"], r["id"]) < (after.created_at, after.id)]
        return [dict(r) for r in rows[:limit]]

    async def running_ids(self, *, tenant_id):
        return [r["id"] for r in self.s.sessions.values() if r["tenant_id"] == tenant_id and r["status"] == "running"]

    async def sessions_for_browser(self, *, browser_id):
        return [r["id"] for r in self.s.sessions.values() if r["browser_id"] == browser_id and r["status"] == "running"]

    async def touch_sessions(self, *, session_ids):
        for session_id in session_ids:
            if self.s.sessions.get(session_id, {}).get("status") == "running":
                self.s.sessions[session_id]["last_activity_at"] = self.s.now()

    async def client_connected(self, *, session_id, max_relays):
        row = self.s.sessions.get(session_id)
        if row is None or row["status"] != "running":
            return "ended"
        if row["connections"] >= max_relays:
            return "full"
        row.update(connections=row["connections"] + 1, disconnected_at=None, last_activity_at=self.s.now())
        return "ok"

    async def client_disconnected(self, *, session_id):
        row = self.s.sessions[session_id]
        if row["connections"] <= 1:
            row["disconnected_at"] = self.s.now()
        row["connections"] = max(row["connections"] - 1, 0)

    async def next_due(self, *, disconnect_grace_s, stuck_after_s):
        now = self.s.now()
        for r in self.s.sessions.values():
            if r["status"] == "starting" and r["created_at"] <= now - timedelta(seconds=stuck_after_s):
                return {"id": r["id"], "why": "stuck"}
            if r["status"] != "running":
                continue
            if r["expires_at"] <= now:
                return {"id": r["id"], "why": "timeout"}
            if r["last_activity_at"] <= now - timedelta(seconds=r["idle_timeout_s"]):
                return {"id": r["id"], "why": "idle"}
            if (not r["keep_alive"] and r["connections"] == 0 and r["disconnected_at"] is not None
                    and r["disconnected_at"] <= now - timedelta(seconds=disconnect_grace_s)):
                return {"id": r["id"], "why": "disconnected"}
        return None

    # --- idempotency ---------------------------------------------------------------------------
    async def claim_idempotency_key(self, *, tenant_id, key_hash, request_hash, session_id, token_masked, ttl_s):
        old = self.s.idempotency.get((tenant_id, key_hash))
        if old is not None and old["created_at"] > self.s.now() - timedelta(seconds=ttl_s):
            return False
        self.s.idempotency[(tenant_id, key_hash)] = {
            "tenant_id": tenant_id, "key_hash": key_hash, "request_hash": request_hash, "session_id": session_id,
            "token_masked": token_masked, "created_at": self.s.now()}
        return True

    async def get_idempotency_key(self, *, tenant_id, key_hash):
        row = self.s.idempotency.get((tenant_id, key_hash))
        return dict(row) if row else None

    async def delete_expired_idempotency_keys(self, *, ttl_s):
        cutoff = self.s.now() - timedelta(seconds=ttl_s)
        for key, row in list(self.s.idempotency.items()):
            if row["created_at"] <= cutoff:
                del self.s.idempotency[key]

    async def record_crashed_lease(self, *, session_id, browser_id):
        self.s.crashed_leases.setdefault(session_id, {"browser_id": browser_id, "crashed_at": self.s.now()})

    async def delete_old_crashed_leases(self, *, older_than_s):
        cutoff = self.s.now() - timedelta(seconds=older_than_s)
        for session_id, row in list(self.s.crashed_leases.items()):
            if row["crashed_at"] <= cutoff:
                del self.s.crashed_leases[session_id]

    async def release_idempotency_key(self, *, session_id):
        for key, row in list(self.s.idempotency.items()):
            if row["session_id"] == session_id:
                del self.s.idempotency[key]

    # --- operator views ------------------------------------------------------------------------
    def _overview(self, tenant: dict) -> dict:
        allowance = self.s.allowances.get((tenant["tenant_id"], tenant["current_period_start"])) or {}
        return {**tenant, "period_start": allowance.get("period_start"), "period_end": allowance.get("period_end"),
                "credits_granted": allowance.get("credits_granted", 0),
                "credits_used": allowance.get("credits_used", 0),
                "sessions_running": sum(1 for s in self.s.sessions.values()
                                        if s["tenant_id"] == tenant["tenant_id"] and s["status"] in LIVE),
                "api_keys": sum(1 for k in self.s.api_keys.values()
                                if k["tenant_id"] == tenant["tenant_id"] and k["revoked_at"] is None)}

    async def list_tenants(self, *, limit):
        rows = sorted(self.s.tenants.values(), key=lambda t: t["updated_at"], reverse=True)
        return [self._overview(t) for t in rows[:limit]]

    async def tenant_overview(self, *, tenant_id):
        tenant = self.s.tenants.get(tenant_id)
        return self._overview(tenant) if tenant else None

    async def list_all_sessions(self, *, tenant_id, status, limit):
        rows = sorted((r for r in self.s.sessions.values() if tenant_id in (None, r["tenant_id"])
                       and status in (None, r["status"])), key=lambda r: (r["created_at"], r["id"]), reverse=True)
        return [dict(r) for r in rows[:limit]]

    async def count_running(self):
        return sum(1 for r in self.s.sessions.values() if r["status"] == "running")


class FakeDashboard:
    """The one dashboard write a consumed message makes: a canceled tenant's sign-ins end."""

    def __init__(self, state: "FakeUnitOfWork"):
        self.s = state

    async def end_tenant_sign_ins(self, *, tenant_id, reason):
        self.s.sign_ins[tenant_id] = reason
        return 0


class FakeTx(uow.FakeTx):
    repository = FakeRepository

    def __init__(self, state: "FakeUnitOfWork"):
        super().__init__(state)
        self.dashboard = FakeDashboard(state)


class FakeUnitOfWork(uow.FakeUnitOfWork):
    STATE = STATE
    tx = FakeTx

    def __init__(self) -> None:
        self.tenants: dict[UUID, dict] = {}
        self.allowances: dict[tuple, dict] = {}
        self.api_keys: dict[UUID, dict] = {}
        self.sessions: dict[UUID, dict] = {}
        self.idempotency: dict[tuple, dict] = {}
        self.sign_ins: dict[UUID, str] = {}
        self.crashed_leases: dict[UUID, dict] = {}
        self.outbox: list = []
        self.inbox: set[UUID] = set()
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)

    def allowance(self, tenant_id: UUID) -> dict:
        tenant = self.tenants[tenant_id]
        return self.allowances[(tenant_id, tenant["current_period_start"])]


class FakeLease:
    """warm_pool's lease RPC: answers `reply` (a LeaseReply, or an exception to raise) and records each ask."""

    def __init__(self, reply: LeaseReply | Exception | None = None):
        self.reply, self.asked = reply, []

    async def __call__(self, tenant_id, session_id, *, isolation="browser", profile_id=None, persist=False,
                       ahead=False):
        self.asked.append({"tenant_id": tenant_id, "session_id": session_id, "isolation": isolation,
                           "profile_id": profile_id, "persist": persist, "ahead": ahead})
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


class FakeContextLease(FakeLease):
    """A context lease answering a fresh context (its own context_id) in one browser per call."""

    def __init__(self, browser_id: UUID | None = None):
        super().__init__()
        self.browser_id = browser_id or uuid4()

    async def __call__(self, tenant_id, session_id, *, isolation="browser", profile_id=None, persist=False,
                       ahead=False):
        self.reply = LeaseReply(ok=True, browser_id=self.browser_id, cdp_ws_url="ws://browser/devtools/browser/x",
                                warm=True, context_id=uuid4().hex.upper(), downloads_path=f"/downloads/{session_id}")
        return await super().__call__(tenant_id, session_id, isolation=isolation, profile_id=profile_id,
                                      persist=persist, ahead=ahead)
