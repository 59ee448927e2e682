"""In-memory fakes of warm_pool's ports: the unit of work (repository, outbox, inbox) and both
backends, for service-layer tests of the handlers and pools (tests/unit/test_warm_pool_handlers.py).

FakeRepository answers like services/warm_pool/repository.py's SQL (same methods, same keyword
parameters: tests/unit/test_warm_pool_handlers.py checks), on rows held as dicts. A transaction
that raises is rolled back. Time is `clock`, moved by the test.
"""
import asyncio
import itertools
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from services.warm_pool import domain
from tests.fakes import uow

LIVE = ("launching", "idle", "leased")


class FakeRepository:
    def __init__(self, state: "FakeUnitOfWork"):
        self.s = state

    def _now(self) -> float:
        return self.s.clock

    def _browsers(self, **where) -> list[dict]:
        return [b for b in self.s.browsers.values() if all(b[k] == v for k, v in where.items())]

    def _retire(self, rows: list[dict]) -> list[dict]:
        for b in rows:
            b["state"] = "retiring"
        return [{"id": b["id"], "tenant_id": b["tenant_id"], "replica_id": b["replica_id"]} for b in rows]

    def _session_taken(self, session_id) -> None:
        if session_id is not None and self._browsers(session_id=session_id):
            raise asyncpg.UniqueViolationError("duplicate key value violates unique constraint")

    async def upsert_tenant(self, *, tenant_id, plan, prewarm, max_concurrent, status, namespace=None):
        old = self.s.tenants.get(tenant_id, {})
        self.s.tenants[tenant_id] = {"tenant_id": tenant_id, "plan": plan, "prewarm": prewarm,
                                     "max_concurrent": max_concurrent, "status": status,
                                     "namespace": namespace if namespace is not None else old.get("namespace")}

    async def get_tenant(self, *, tenant_id):
        t = self.s.tenants.get(tenant_id)
        return dict(t) if t else None

    async def set_tenant_status(self, *, tenant_id, status):
        self.s.tenants[tenant_id]["status"] = status

    async def set_tenant_canceled(self, *, tenant_id, canceled):
        self.s.tenants[tenant_id]["canceled"] = canceled

    async def claim_profile_save(self, *, session_id):
        return None  # profiles are tested against Postgres (tests/integration/test_profiles.py)

    async def lock_tenant(self, *, tenant_id):
        pass  # one event loop: nothing runs between the awaits of a fake transaction

    async def lease_idle(self, *, tenant_id, session_id):
        idle = sorted(self._browsers(state="idle", tenant_id=tenant_id), key=lambda b: b["created_at"])
        if not idle:
            return None
        self._session_taken(session_id)
        b = idle[0]
        b.update(state="leased", session_id=session_id, warm=True, leased_at=self._now())
        return dict(b)

    async def leased_for_session(self, *, session_id):
        rows = self._browsers(session_id=session_id)
        return dict(rows[0]) if rows else None

    async def count_live(self, *, replica_id):
        return sum(1 for b in self._browsers(replica_id=replica_id) if b["state"] != "dead")

    async def insert_browser(self, *, browser_id, tenant_id, replica_id, owner_pid, host, session_id=None,
                             warm=False, mode="browser"):
        assert tenant_id in self.s.tenants, "browsers.tenant_id references tenants"
        self._session_taken(session_id)
        self.s.browsers[browser_id] = {
            "id": browser_id, "tenant_id": tenant_id, "replica_id": replica_id, "owner_pid": owner_pid,
            "host": host, "state": "launching", "session_id": session_id,
            "warm": None if session_id is None else warm, "pid": None, "port": None, "profile_dir": None,
            "pod": None, "cdp_ws_url": None, "created_at": self._now(), "ready_at": None, "leased_at": None,
            "confirmed_at": None, "ended_at": None, "seq": next(self.s.seq), "mode": mode,
            "contexts_served": 0, "active_contexts": 0, "recycle": False}

    async def mark_ready(self, *, browser_id, state, pid, port, profile_dir, cdp_ws_url, pod=None):
        b = self.s.browsers.get(browser_id)
        if b is None or b["state"] != "launching":
            return None
        b.update(state=state, pid=pid, port=port, profile_dir=profile_dir, cdp_ws_url=cdp_ws_url, pod=pod,
                 ready_at=self._now(), leased_at=self._now() if state == "leased" else None)
        return dict(b)

    async def confirm(self, *, browser_id, session_id):
        rows = [b for b in self._browsers(id=browser_id, session_id=session_id, state="leased")]
        for b in rows:
            b["confirmed_at"] = self._now()
        return bool(rows)

    async def retire_session(self, *, session_id, browser_id):
        return self._retire([b for b in self.s.browsers.values() if b["state"] in LIVE and b["mode"] == "browser"
                             and (b["session_id"] == session_id or b["id"] == browser_id)])

    async def retire_tenant(self, *, tenant_id, with_leased=False):
        states = LIVE if with_leased else ("launching", "idle")
        return self._retire([b for b in self._browsers(tenant_id=tenant_id) if b["state"] in states
                             or (b["state"] == "hosting" and b["active_contexts"] == 0)])

    async def retire_idle(self, *, tenant_id, replica_id, count):
        idle = sorted(self._browsers(tenant_id=tenant_id, replica_id=replica_id, state="idle"),
                      key=lambda b: (b["created_at"], b["seq"]), reverse=True)[:count]
        return [r["id"] for r in self._retire(idle)]

    async def evict_one_idle(self, *, replica_id, for_tenant):
        idle = sorted((b for b in self._browsers(replica_id=replica_id, state="idle") if b["tenant_id"] != for_tenant),
                      key=lambda b: (b["created_at"], b["seq"]))[:1]
        return self._retire(idle)[0]["id"] if idle else None

    async def reclaim_unconfirmed(self, *, timeout_s):
        return self._retire([b for b in self._browsers(state="leased", confirmed_at=None)
                             if b["leased_at"] < self._now() - timeout_s])

    async def own_in_state(self, *, replica_id, state, older_than_s=0):
        return [b["id"] for b in self._browsers(replica_id=replica_id, state=state)
                if b["created_at"] <= self._now() - older_than_s]

    async def in_state(self, *, state, older_than_s=0):
        return [b["id"] for b in self._browsers(state=state) if b["created_at"] <= self._now() - older_than_s]

    async def live_on_replica(self, *, replica_id):
        return [b["id"] for b in self._browsers(replica_id=replica_id) if b["state"] != "dead"]

    async def ids_in_states(self, *, states):
        return {b["id"] for b in self.s.browsers.values() if b["state"] in states}

    async def mark_dead(self, *, browser_id):
        b = self.s.browsers.get(browser_id)
        if b is None or b["state"] == "dead":
            return None
        before = {"state": b["state"], "tenant_id": b["tenant_id"], "session_id": b["session_id"]}
        b.update(state="dead", ended_at=self._now())
        return before

    async def stale_on_host(self, *, host, replica_id):
        return [dict(b) for b in self._browsers(host=host)
                if b["replica_id"] != replica_id and b["state"] != "dead"]

    async def tenant_pools(self, *, rate_window_s, tenant_id=None):
        since = self._now() - rate_window_s
        out = []
        for t in sorted(self.s.tenants.values(), key=lambda t: t["tenant_id"]):
            if tenant_id is not None and t["tenant_id"] != tenant_id:
                continue
            mine = self._browsers(tenant_id=t["tenant_id"])
            out.append({**t, "idle": sum(b["state"] == "idle" for b in mine),
                        "launching": sum(b["state"] == "launching" and b["session_id"] is None
                                         and b["mode"] == "browser" for b in mine),
                        "leased": sum(b["state"] == "leased" for b in mine),
                        "context_hosts": sum(b["state"] == "hosting" for b in mine),
                        "active_contexts": sum(b["active_contexts"] for b in mine if b["state"] == "hosting"),
                        "recent_leases": sum(b["leased_at"] is not None and b["leased_at"] > since for b in mine)})
        return out

    async def own_counts(self, *, replica_id):
        counts: dict[str, int] = {}
        for b in self._browsers(replica_id=replica_id):
            if b["state"] != "dead":
                counts[b["state"]] = counts.get(b["state"], 0) + 1
        return counts

    async def prune_dead(self, *, older_than_s):
        old = [b["id"] for b in self._browsers(state="dead") if b["ended_at"] < self._now() - older_than_s]
        for browser_id in old:
            del self.s.browsers[browser_id]
        for session_id in [c["session_id"] for c in self.s.contexts.values() if c["browser_id"] in old]:
            del self.s.contexts[session_id]  # ON DELETE CASCADE
        return len(old)

    # --- context hosts and their contexts

    def _open(self, b, *, recycle_after, max_age_s) -> bool:
        return (b["state"] == "hosting" and not b["recycle"] and b["contexts_served"] < recycle_after
                and b["ready_at"] > self._now() - max_age_s)

    async def claim_context(self, *, tenant_id, replica_id, session_id, per_browser, recycle_after, max_age_s,
                            warm):
        if session_id in self.s.contexts:
            raise asyncpg.UniqueViolationError("duplicate key value violates unique constraint")
        hosts = sorted((b for b in self._browsers(tenant_id=tenant_id, replica_id=replica_id)
                        if self._open(b, recycle_after=recycle_after, max_age_s=max_age_s)
                        and b["active_contexts"] < per_browser),
                       key=lambda b: (-b["active_contexts"], b["ready_at"], b["seq"]))
        if not hosts:
            return None
        b = hosts[0]
        b["active_contexts"] += 1
        b["contexts_served"] += 1
        self.s.contexts[session_id] = {"session_id": session_id, "browser_id": b["id"], "tenant_id": tenant_id,
                                       "state": "creating", "warm": warm, "context_id": None,
                                       "downloads_path": None, "created_at": self._now(), "confirmed_at": None,
                                       "ended_at": None}
        return dict(b)

    async def context_for_session(self, *, session_id):
        c = self.s.contexts.get(session_id)
        if c is None:
            return None
        b = self.s.browsers[c["browser_id"]]
        return {**c, "cdp_ws_url": b["cdp_ws_url"], "replica_id": b["replica_id"]}

    async def context_opened(self, *, session_id, context_id, downloads_path):
        c = self.s.contexts.get(session_id)
        if c is None or c["state"] != "creating":
            return False
        c.update(state="active", context_id=context_id, downloads_path=downloads_path)
        return True

    async def confirm_context(self, *, session_id):
        c = self.s.contexts.get(session_id)
        if c is not None and c["state"] == "active":
            c["confirmed_at"] = self._now()

    async def context_ending(self, *, session_id, unconfirmed_of=None):
        c = self.s.contexts.get(session_id)
        if c is None or c["state"] not in ("creating", "active"):
            return None
        if unconfirmed_of is not None and (c["tenant_id"] != unconfirmed_of or c["confirmed_at"] is not None):
            return None
        c["state"] = "ending"
        return {"session_id": session_id, "browser_id": c["browser_id"], "tenant_id": c["tenant_id"],
                "replica_id": self.s.browsers[c["browser_id"]]["replica_id"]}

    async def context_ended(self, *, session_id, failed=False):
        c = self.s.contexts.get(session_id)
        if c is None or c["state"] not in ("creating", "active", "ending"):
            return None
        c.update(state="failed" if failed else "ended", ended_at=self._now())
        b = self.s.browsers[c["browser_id"]]
        b["active_contexts"] -= 1
        assert b["active_contexts"] >= 0, "browsers.active_contexts >= 0"
        b["recycle"] = b["recycle"] or failed
        return b["id"]

    async def crash_contexts(self, *, browser_id):
        reported = []
        for c in self.s.contexts.values():
            if c["browser_id"] == browser_id and c["state"] in ("creating", "active", "ending"):
                if c["state"] == "active":
                    reported.append(c["session_id"])
                c.update(state="crashed", ended_at=self._now())
        return reported

    async def reclaim_unconfirmed_contexts(self, *, timeout_s):
        out = []
        for c in self.s.contexts.values():
            if c["state"] == "active" and c["confirmed_at"] is None and c["created_at"] < self._now() - timeout_s:
                c["state"] = "ending"
                out.append(c["session_id"])
        return out

    async def own_ending_contexts(self, *, replica_id):
        return [c["session_id"] for c in self.s.contexts.values()
                if c["state"] == "ending" and self.s.browsers[c["browser_id"]]["replica_id"] == replica_id]

    async def flag_recycle(self, *, browser_id):
        self.s.browsers[browser_id]["recycle"] = True

    async def retire_done_hosts(self, *, replica_id, recycle_after, max_age_s, browser_id=None):
        done = [b for b in self._browsers(replica_id=replica_id, state="hosting", active_contexts=0)
                if (browser_id is None or b["id"] == browser_id)
                and (b["recycle"] or b["contexts_served"] >= recycle_after
                     or self.s.tenants[b["tenant_id"]]["status"] != "active"
                     or b["ready_at"] <= self._now() - max_age_s)]
        return [r["id"] for r in self._retire(done)]

    async def retire_empty_hosts(self, *, tenant_id, replica_id, count):
        empty = sorted(self._browsers(tenant_id=tenant_id, replica_id=replica_id, state="hosting", active_contexts=0),
                       key=lambda b: -b["contexts_served"])[:count]
        return [r["id"] for r in self._retire(empty)]

    async def context_pools(self, *, replica_id, rate_window_s, warm_window_s, recycle_after, max_age_s,
                            tenant_id=None):
        out = []
        for t in sorted(self.s.tenants.values(), key=lambda t: t["tenant_id"]):
            if tenant_id is not None and t["tenant_id"] != tenant_id:
                continue
            hosts = [b for b in self._browsers(tenant_id=t["tenant_id"], replica_id=replica_id, mode="context")]
            open_ = [b for b in hosts if self._open(b, recycle_after=recycle_after, max_age_s=max_age_s)]
            mine = [c for c in self.s.contexts.values() if c["tenant_id"] == t["tenant_id"]]
            out.append({"tenant_id": t["tenant_id"], "status": t["status"], "prewarm": t["prewarm"],
                        "max_concurrent": t["max_concurrent"],
                        "launching": sum(b["state"] == "launching" for b in hosts),
                        "open_hosts": len(open_), "empty_hosts": sum(b["active_contexts"] == 0 for b in open_),
                        "open_active": sum(b["active_contexts"] for b in open_),
                        "recent_contexts": sum(c["created_at"] > self._now() - rate_window_s for c in mine),
                        "uses_contexts": any(c["created_at"] > self._now() - warm_window_s for c in mine)})
        return out

    async def own_context_counts(self, *, replica_id):
        hosts = self._browsers(replica_id=replica_id, state="hosting")
        return {"hosts": len(hosts), "active": sum(b["active_contexts"] for b in hosts)}


class FakeTx(uow.FakeTx):
    repository = FakeRepository


class FakeUnitOfWork(uow.FakeUnitOfWork):
    STATE = ("tenants", "browsers", "contexts", "outbox", "inbox")
    tx = FakeTx

    def __init__(self) -> None:
        self.tenants: dict[UUID, dict] = {}
        self.browsers: dict[UUID, dict] = {}
        self.contexts: dict[UUID, dict] = {}  # by session_id
        self.outbox: list = []
        self.inbox: set[UUID] = set()
        self.clock = 0.0
        self.seq = itertools.count()

    def rows(self, **where) -> list[dict]:
        return [b for b in self.browsers.values() if all(b[k] == v for k, v in where.items())]

    def context_rows(self, **where) -> list[dict]:
        return [c for c in self.contexts.values() if all(c[k] == v for k, v in where.items())]


class FakeClock:
    """LocalPool's clock for refill holds (services/warm_pool/refills.py): time moves only when
    the test calls `advance`, which wakes the sleepers whose time has come."""

    def __init__(self) -> None:
        self.time = 0.0
        self.sleeps = 0  # sleeps begun so far
        self._sleepers: list[tuple[float, asyncio.Future]] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        entry = (self.time + seconds, asyncio.get_running_loop().create_future())
        self._sleepers.append(entry)
        try:
            await entry[1]
        finally:
            self._sleepers.remove(entry)

    def sleeping_until(self) -> list[float]:
        """When each current sleeper wakes."""
        return sorted(deadline for deadline, _ in self._sleepers)

    def advance(self, seconds: float) -> None:
        self.time += seconds
        for deadline, woken in self._sleepers:
            if deadline <= self.time and not woken.done():
                woken.set_result(None)


@dataclass(frozen=True)
class Started:
    pid: int
    port: int
    profile_dir: str
    cdp_ws_url: str


@dataclass(frozen=True)
class Opened:
    context_id: str
    downloads_path: str


class FakeProcessBackend:
    """Browsers that start at once (or when `gate` opens), die when told to (`crash`); a context
    host's contexts are `contexts[browser_id]` (context_id → session_id)."""

    def __init__(self) -> None:
        self.running: dict[UUID, Started] = {}
        self.contexts: dict[UUID, dict[str, UUID]] = {}
        self.first_pages: list[str] = []
        self.fail_contexts = False
        self.memory: dict[UUID, int] = {}
        self._context_ids = itertools.count(1)
        self.launches: list[dict] = []
        self.killed: list[UUID] = []
        self.prioritized: list[int] = []
        self.refuse: dict[UUID, str] = {}  # tenant → TenantRefused message
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.closed = False
        self._exited: list[UUID] = []
        self._pids = itertools.count(1000)

    async def launch(self, browser_id, *, tenant_id, tenant_browsers, urgent=False, directory=None):
        self.launches.append({"browser_id": browser_id, "tenant_id": tenant_id,
                              "tenant_browsers": tenant_browsers, "urgent": urgent})
        if tenant_id in self.refuse:
            raise domain.TenantRefused(self.refuse[tenant_id])
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        if self.fail:
            raise RuntimeError("chromium did not start")
        pid = next(self._pids)
        started = Started(pid=pid, port=pid, profile_dir=f"/profiles/{browser_id}",
                          cdp_ws_url=f"ws://10.0.0.1:{pid}/devtools/browser/{browser_id}")
        self.running[browser_id] = started
        return started

    def prioritize(self, *, pid, host):
        self.prioritized.append(pid)

    async def open_context(self, browser_id, *, cdp_ws_url, session_id, first_page):
        await asyncio.sleep(0)
        if self.fail_contexts or browser_id not in self.running:
            raise RuntimeError("Target.createBrowserContext failed")
        context_id = f"CTX{next(self._context_ids):04d}"
        self.contexts.setdefault(browser_id, {})[context_id] = session_id
        if first_page:
            self.first_pages.append(context_id)
        return Opened(context_id=context_id, downloads_path=f"/browser/downloads/{session_id}")

    async def close_context(self, browser_id, *, cdp_ws_url, context_id, session_id):
        await asyncio.sleep(0)
        if context_id is not None and self.contexts.get(browser_id, {}).pop(context_id, None) is None:
            raise RuntimeError("Failed to find context")

    def memory_bytes(self, browser_id):
        return self.memory.get(browser_id)

    async def browser_downloads(self, browser_id, *, cdp_ws_url, session_id):
        await asyncio.sleep(0)
        if browser_id not in self.running:
            raise RuntimeError("Browser.setDownloadBehavior failed")
        return f"/browser/downloads/{session_id}"

    async def close_and_pack(self, browser_id, *, cdp_ws_url, max_bytes):
        return b""

    async def kill(self, browser_id):
        self.running.pop(browser_id, None)
        self.contexts.pop(browser_id, None)
        self.killed.append(browser_id)

    def crash(self, browser_id) -> None:
        self._exited.append(browser_id)

    def exited(self):
        gone, self._exited = self._exited, []
        return gone

    def owner_alive(self, pid):
        return False

    async def remove_stale(self, browser_id, *, pid, profile_dir):
        self.killed.append(browser_id)

    async def remove_orphans(self):
        return []

    async def close(self):
        self.closed = True
        self.running.clear()


@dataclass(frozen=True)
class Claimed:
    port: int
    pod: str
    cdp_ws_url: str


class FakeClusterBackend:
    """Ready pods per namespace; a claim takes one, `leased()` reports each claimed pod's health."""

    def __init__(self) -> None:
        self.ready: dict[str, int] = {}
        self.leased_pods: dict[UUID, bool] = {}
        self.killed: list[UUID] = []
        self.closed = False

    async def claim(self, browser_id, *, namespace, session_id, wait_s):
        if not self.ready.get(namespace):
            return None
        self.ready[namespace] -= 1
        self.leased_pods[browser_id] = True
        return Claimed(port=9222, pod=f"{namespace}/browsers-{browser_id.hex[:5]}",
                       cdp_ws_url=f"ws://10.244.0.1:9222/devtools/browser/{browser_id}")

    async def kill(self, browser_id):
        self.leased_pods.pop(browser_id, None)
        self.killed.append(browser_id)

    async def leased(self):
        return dict(self.leased_pods)

    async def close(self):
        self.closed = True
