"""The default local backend: the tenant is recorded and announced; nothing to create on this host."""
from uuid import uuid4

import pytest

from services.provisioner import handlers
from services.provisioner.uow import PostgresUnitOfWork
from services.provisioner.__main__ import make_backend
from services.provisioner.adapters.local import LocalBackend
from services.provisioner.settings import ProvisionerSettings
from shared import db
from tests import infra
from tests.integration.provisioner_support import MIGRATIONS, Bus, changed, events, payment, tenant


@pytest.fixture
async def pool(fresh_db):
    await db.migrate(fresh_db, schema="provisioner", migrations_dir=MIGRATIONS)
    pool = await db.create_pool(fresh_db, schema="provisioner", max_size=4)
    yield pool
    await pool.close()


def test_local_is_the_default_backend(monkeypatch):
    monkeypatch.delenv("PROVISIONER_BACKEND", raising=False)
    assert isinstance(make_backend(ProvisionerSettings(_env_file=None)), LocalBackend)


async def test_local_provision_cancel_and_resubscribe(pool):
    tid, backend = uuid4(), LocalBackend()
    event = payment(tid)
    await handlers.provision(event, uow=PostgresUnitOfWork(pool), backend=backend)
    await handlers.provision(event, uow=PostgresUnitOfWork(pool), backend=backend)
    assert (await tenant(pool, tid))["status"] == "provisioned"
    assert len(await events(pool, "provisioner.tenant_provisioned", tid)) == 1
    await handlers.subscription_changed(changed(tid, "canceled"), uow=PostgresUnitOfWork(pool), backend=backend)
    assert (await tenant(pool, tid))["status"] == "deprovisioned"
    assert len(await events(pool, "provisioner.tenant_deprovisioned", tid)) == 1
    await handlers.provision(payment(tid), uow=PostgresUnitOfWork(pool), backend=backend)
    assert (await tenant(pool, tid))["status"] == "provisioned"


async def test_the_service_with_default_settings_provisions_locally(fresh_db, fresh_mq, artifacts_dir):
    env = {"HTTP_PORT": str(infra.free_port()), "DATABASE_URL": fresh_db, "RABBITMQ_URL": fresh_mq,
           "PROVISIONER_BACKEND": "local"}
    service = infra.ServiceProcess("provisioner", env, artifacts_dir).start()
    try:
        service.wait_ready()
        async with Bus(fresh_mq) as bus:
            tid = uuid4()
            await bus.publish(payment(tid))
            await bus.wait_for("provisioner.tenant_provisioned", tid)
    finally:
        assert service.stop() == 0
