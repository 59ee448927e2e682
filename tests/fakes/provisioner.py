"""In-memory fakes of the provisioner's ports: the unit of work (repository, outbox, inbox, tenant
locks) and a cluster backend, for service-layer tests (tests/unit/test_provisioner_handlers.py).

FakeRepository answers like services/provisioner/repository.py's SQL (same methods, same keyword
parameters: the test module checks), on rows held as dicts. A transaction that raises is rolled
back. Time is `clock` (seconds), moved by the test.
"""
import copy
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from uuid import UUID

from services.provisioner import manifests
from services.provisioner.domain import TenantSpec
from services.provisioner.settings import ProvisionerSettings

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


class FakeRepository:
    def __init__(self, state: "FakeUnitOfWork"):
        self.s = state

    def _now(self) -> float:
        return self.s.clock

    async def upsert_tenant(self, *, spec, status):
        row = self.s.tenants.setdefault(spec.tenant_id, {"tenant_id": spec.tenant_id, "namespace": spec.namespace,
                                                         "canceled_at": None})
        row.update(plan=spec.plan, limits=spec.limits.model_dump(), status=status, desired="present",
                   last_error=None, attempts=0, updated_at=self._now())

    async def set_status(self, *, tenant_id, status, error=None):
        row = self.s.tenants.get(tenant_id)
        if row is not None:
            row.update(status=status, last_error=error, updated_at=self._now(),
                       attempts=row["attempts"] + 1 if status == "failed" else 0)

    async def mark_absent(self, *, tenant_id, canceled_at):
        row = self.s.tenants.get(tenant_id)
        if row is not None:
            row.update(desired="absent", status="deprovisioning", canceled_at=canceled_at, updated_at=self._now())

    async def get_tenant(self, *, tenant_id):
        row = self.s.tenants.get(tenant_id)
        return dict(row) if row else None

    async def list_tenants(self):
        return [{**r, "idle_seconds": self._now() - r["updated_at"]}
                for r in sorted(self.s.tenants.values(), key=lambda r: r["tenant_id"])]

    async def count_by_status(self):
        counts: dict[str, int] = {}
        for r in self.s.tenants.values():
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        return counts

    async def lock_tenant(self, *, tenant_id, wait=True):
        if tenant_id in self.s.locked:
            assert not wait, "one event loop: a waiting lock on a held tenant would never be granted"
            return False
        self.s.locked.add(tenant_id)
        return True

    async def unlock_tenant(self, *, tenant_id):
        self.s.locked.discard(tenant_id)

    async def seen(self, *, message_id, consumer):
        return (message_id, consumer) in self.s.inbox


class FakeTx:
    def __init__(self, state: "FakeUnitOfWork"):
        self.s = state
        self.repo = FakeRepository(state)

    async def publish(self, event) -> None:
        self.s.outbox.append(event)

    async def first_delivery(self, message_id: UUID) -> bool:
        if (message_id, "provisioner") in self.s.inbox:
            return False
        self.s.inbox.add((message_id, "provisioner"))
        return True

    async def seen(self, message_id: UUID) -> bool:
        return await self.repo.seen(message_id=message_id, consumer="provisioner")


class FakeLocked:
    def __init__(self, state: "FakeUnitOfWork"):
        self.s = state
        self.repo = FakeRepository(state)

    def begin(self):
        return self.s.begin()


class FakeUnitOfWork:
    def __init__(self) -> None:
        self.tenants: dict[UUID, dict] = {}
        self.outbox: list = []
        self.inbox: set[tuple[UUID, str]] = set()
        self.locked: set[UUID] = set()
        self.clock = 0.0
        self.commits = 0

    @asynccontextmanager
    async def begin(self):
        saved = copy.deepcopy((self.tenants, self.outbox, self.inbox))
        try:
            yield FakeTx(self)
        except BaseException:
            self.tenants, self.outbox, self.inbox = saved
            raise
        self.commits += 1

    @asynccontextmanager
    async def connect(self):
        yield FakeTx(self)

    @asynccontextmanager
    async def tenant_lock(self, tenant_id: UUID, *, wait: bool = True):
        repo = FakeRepository(self)
        got = await repo.lock_tenant(tenant_id=tenant_id, wait=wait)
        try:
            yield FakeLocked(self) if got else None
        finally:
            if got:
                await repo.unlock_tenant(tenant_id=tenant_id)

    def published(self, type_: type) -> list:
        return [e for e in self.outbox if isinstance(e, type_)]


@dataclass
class Found:
    namespace: str
    terminating: bool
    objects: set[tuple[str, str]] = field(default_factory=set)


class FakeCluster:
    """A cluster that holds, per tenant, the (kind, name) of the objects applied; `fail` makes every
    apply and delete raise; `applied`/`deleted` record the calls."""

    def __init__(self, settings: ProvisionerSettings | None = None) -> None:
        self.settings = settings or ProvisionerSettings(_env_file=None)
        self.found: dict[UUID, Found] = {}
        self.applied: list[TenantSpec] = []
        self.deleted: list[str] = []
        self.fail: Exception | None = None

    def expected(self, spec: TenantSpec) -> set[tuple[str, str]]:
        return {(o["kind"], o["metadata"]["name"]) for o in manifests.build(spec, self.settings)}

    async def apply(self, spec: TenantSpec) -> None:
        self.applied.append(spec)
        if self.fail:
            raise self.fail
        self.found[spec.tenant_id] = Found(spec.namespace, False, self.expected(spec))

    async def delete(self, namespace: str) -> None:
        self.deleted.append(namespace)
        if self.fail:
            raise self.fail
        for tenant_id, found in list(self.found.items()):
            if found.namespace == namespace:
                del self.found[tenant_id]

    async def inventory(self) -> dict[UUID, Found]:
        return {t: Found(f.namespace, f.terminating, set(f.objects)) for t, f in self.found.items()}


def at(seconds: float) -> datetime:
    return EPOCH + timedelta(seconds=seconds)
