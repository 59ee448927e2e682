"""In-memory fakes of billing's ports: the unit of work (repository, outbox, inbox) and Stripe, for
service-layer tests of the handlers (tests/unit/test_billing_handlers.py).

FakeRepository answers like services/billing/repository.py's SQL (same methods, same keyword
parameters: tests/unit/test_billing_handlers.py checks), on rows held as dicts. A transaction or a
savepoint that raises is rolled back. Time is `clock`, moved by the test (`advance`).
"""
import copy
import itertools
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID

from tests.fakes import uow

STATE = ("stripe_events", "refused", "superseded", "accounts", "ledger", "usage", "meter_reports", "outbox",
         "inbox")


class FakeRepository:
    def __init__(self, state: "FakeUnitOfWork"):
        self.s = state

    def _now(self) -> datetime:
        return self.s.clock

    # --- stripe events -------------------------------------------------------------------------
    async def store_event(self, *, event_id, type, payload):
        if event_id in self.s.stripe_events:
            return False
        self.s.stripe_events[event_id] = {
            "id": event_id, "type": type, "payload": copy.deepcopy(payload), "received_at": self._now(),
            "processed_at": None, "attempts": 0, "next_attempt_at": self._now(), "last_error": None,
            "seq": next(self.s.seq)}
        return True

    async def claim_event(self, *, event_id):
        e = self.s.stripe_events.get(event_id)
        return dict(e) if e and e["processed_at"] is None else None

    async def mark_processed(self, *, event_id, note=None):
        e = self.s.stripe_events[event_id]
        e.update(processed_at=self._now(), attempts=e["attempts"] + 1, last_error=note)

    async def postpone_event(self, *, event_id, delay_s, error):
        e = self.s.stripe_events[event_id]
        e.update(attempts=e["attempts"] + 1, last_error=error[:500],
                 next_attempt_at=self._now() + timedelta(seconds=delay_s))

    def _unprocessed(self) -> list[dict]:
        return sorted((e for e in self.s.stripe_events.values() if e["processed_at"] is None),
                      key=lambda e: (e["received_at"], e["seq"]))

    async def due_events(self, *, limit=50):
        return [e["id"] for e in self._unprocessed() if e["next_attempt_at"] <= self._now()][:limit]

    async def count_pending_events(self):
        return len(self._unprocessed())

    async def pending_events(self, *, limit):
        return [{k: e[k] for k in ("id", "type", "received_at", "attempts", "next_attempt_at", "last_error")}
                for e in self._unprocessed()[:limit]]

    async def wake_waiting_events(self):
        for e in self._unprocessed():
            if e["next_attempt_at"] > self._now():
                e["next_attempt_at"] = self._now()

    async def record_refusal(self, *, event_id, type, tenant_id, account_customer, event_customer,
                             subscription_id, reason):
        assert event_id in self.s.stripe_events, "refused_events.event_id references stripe_events"
        self.s.refused.setdefault(event_id, {
            "event_id": event_id, "type": type, "tenant_id": tenant_id, "account_customer": account_customer,
            "event_customer": event_customer, "subscription_id": subscription_id, "reason": reason,
            "refused_at": self._now(), "seq": next(self.s.seq)})

    async def refused_events(self, *, tenant_id, limit):
        rows = [r for r in self.s.refused.values() if tenant_id is None or r["tenant_id"] == tenant_id]
        return sorted(rows, key=lambda r: (r["refused_at"], r["seq"]), reverse=True)[:limit]

    async def supersede_subscription(self, *, tenant_id, subscription_id, by):
        assert tenant_id in self.s.accounts, "superseded_subscriptions.tenant_id references accounts"
        self.s.superseded.setdefault(subscription_id, {"tenant_id": tenant_id, "superseded_by": by,
                                                       "seq": next(self.s.seq)})

    async def is_superseded(self, *, tenant_id, subscription_id):
        row = self.s.superseded.get(subscription_id) if subscription_id else None
        return bool(row and row["tenant_id"] == tenant_id)

    async def superseded_subscriptions(self, *, tenant_id):
        return [sub for sub, r in sorted(self.s.superseded.items(), key=lambda kv: kv[1]["seq"])
                if r["tenant_id"] == tenant_id]

    # --- accounts and ledger -------------------------------------------------------------------
    async def find_tenant(self, *, subscription, customer):
        if subscription:
            for a in self.s.accounts.values():
                if a["subscription_id"] == subscription:
                    return a["tenant_id"]
        if customer:
            mine = [a for a in self.s.accounts.values() if a["stripe_customer_id"] == customer]
            return max(mine, key=lambda a: a["updated_seq"])["tenant_id"] if mine else None
        return None

    async def lock_account(self, *, tenant_id, plan):
        self.s.accounts.setdefault(tenant_id, {
            "tenant_id": tenant_id, "stripe_customer_id": None, "subscription_id": None, "plan": plan,
            "status": "active", "period_start": None, "period_end": None, "balance": 0, "status_event_at": None,
            "updated_seq": next(self.s.seq)})
        return dict(self.s.accounts[tenant_id])

    async def lock_existing_account(self, *, tenant_id):
        a = self.s.accounts.get(tenant_id)
        return dict(a) if a else None

    async def update_account(self, *, tenant_id, **fields):
        a = self.s.accounts.get(tenant_id)
        if a is not None:
            assert set(fields) <= set(a), f"no such columns: {set(fields) - set(a)}"
            a.update(fields, updated_seq=next(self.s.seq))

    async def append_entry(self, *, tenant_id, entry):
        assert tenant_id in self.s.accounts, "ledger.tenant_id references accounts"
        if any((e["kind"], e["reference"]) == (entry.kind, entry.reference) for e in self.s.ledger):
            return False
        self.s.ledger.append({"id": len(self.s.ledger) + 1, "tenant_id": tenant_id, "kind": entry.kind,
                              "reference": entry.reference, "amount": entry.amount,
                              "balance_after": entry.balance_after, "created_at": self._now()})
        self.s.accounts[tenant_id].update(balance=entry.balance_after, updated_seq=next(self.s.seq))
        return True

    async def entry_exists(self, *, kind, reference):
        return any((e["kind"], e["reference"]) == (kind, reference) for e in self.s.ledger)

    async def get_account(self, *, tenant_id):
        a = self.s.accounts.get(tenant_id)
        return dict(a) if a else None

    async def ledger_page(self, *, tenant_id, limit, after_id):
        return [dict(e) for e in self.s.ledger
                if e["tenant_id"] == tenant_id and (after_id is None or e["id"] > after_id)][:limit]

    async def inconsistent_accounts(self):
        out = []
        for a in self.s.accounts.values():
            total = sum(e["amount"] for e in self.s.ledger if e["tenant_id"] == a["tenant_id"])
            if total != a["balance"]:
                out.append({"tenant_id": a["tenant_id"], "balance": a["balance"], "ledger_sum": total})
        return out

    async def count_accounts(self):
        return len(self.s.accounts)

    # --- usage and meter reports ---------------------------------------------------------------
    async def record_usage(self, *, session_id, tenant_id, started_at, ended_at, duration_ms, end_reason, cost):
        if session_id in self.s.usage:
            return False
        # numeric(14, 6): what the column keeps of the amount
        self.s.usage[session_id] = {"session_id": session_id, "tenant_id": tenant_id, "started_at": started_at,
                                    "ended_at": ended_at, "duration_ms": duration_ms, "end_reason": end_reason,
                                    "cost": Decimal(cost).quantize(Decimal("0.000001"))}
        return True

    async def usage_for(self, *, tenant_id, since, until):
        rows = [dict(u) for u in self.s.usage.values() if u["tenant_id"] == tenant_id
                and (since is None or u["ended_at"] >= since) and (until is None or u["ended_at"] < until)]
        return sorted(rows, key=lambda u: u["ended_at"])

    async def enqueue_meter_report(self, *, session_id, tenant_id, value, occurred_at):
        self.s.meter_reports.setdefault(session_id, {
            "session_id": session_id, "tenant_id": tenant_id, "value": value, "occurred_at": occurred_at,
            "sent_at": None, "attempts": 0, "next_attempt_at": self._now(), "last_error": None})

    async def claim_meter_reports(self, *, limit):
        due = sorted((m for m in self.s.meter_reports.values()
                      if m["sent_at"] is None and m["next_attempt_at"] <= self._now()),
                     key=lambda m: m["next_attempt_at"])[:limit]
        return [{**m, "stripe_customer_id": (self.s.accounts.get(m["tenant_id"]) or {}).get("stripe_customer_id")}
                for m in due]

    async def mark_meter_sent(self, *, session_id):
        m = self.s.meter_reports[session_id]
        m.update(sent_at=self._now(), attempts=m["attempts"] + 1, last_error=None)

    async def postpone_meter_report(self, *, session_id, delay_s, error):
        m = self.s.meter_reports[session_id]
        m.update(attempts=m["attempts"] + 1, last_error=error[:500],
                 next_attempt_at=self._now() + timedelta(seconds=delay_s))

    async def count_pending_meter_reports(self):
        return sum(m["sent_at"] is None for m in self.s.meter_reports.values())


class FakeTx(uow.FakeTx):
    repository = FakeRepository

    @asynccontextmanager
    async def savepoint(self):
        async with self.s.rollback_on_error():
            yield


class FakeUnitOfWork(uow.FakeUnitOfWork):
    STATE = STATE
    tx = FakeTx

    def __init__(self) -> None:
        self.stripe_events: dict[str, dict] = {}
        self.refused: dict[str, dict] = {}
        self.superseded: dict[str, dict] = {}
        self.accounts: dict[UUID, dict] = {}
        self.ledger: list[dict] = []
        self.usage: dict[UUID, dict] = {}
        self.meter_reports: dict[UUID, dict] = {}
        self.outbox: list = []
        self.inbox: set[UUID] = set()
        self.clock = datetime(2026, 1, 1, tzinfo=timezone.utc)
        self.seq = itertools.count()

    def advance(self, seconds: float) -> None:
        self.clock += timedelta(seconds=seconds)


class FakeStripe:
    """Stripe's Checkout and Meter APIs: records what was asked; `down` makes every call fail."""

    def __init__(self) -> None:
        self.checkouts: list[dict] = []
        self.meter_events: dict[str, dict] = {}
        self.down = False

    async def create_checkout_session(self, *, price_id, tenant_id, plan, email, customer, success_url,
                                      cancel_url):
        if self.down:
            import stripe
            raise stripe.APIConnectionError("Stripe is unreachable")
        self.checkouts.append({"price_id": price_id, "tenant_id": tenant_id, "plan": plan, "email": email,
                               "customer": customer})
        return f"https://checkout.stripe.test/{len(self.checkouts)}"

    async def send_meter_event(self, *, event_name, identifier, customer, value, timestamp):
        if self.down:
            raise ConnectionError("Stripe is unreachable")
        self.meter_events[identifier] = {"event_name": event_name, "customer": customer, "value": value}
