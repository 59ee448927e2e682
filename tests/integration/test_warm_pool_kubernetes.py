"""warm_pool's handlers with the kubernetes backend, against real Postgres and a fake Kubernetes API
server over HTTP. The tenant's objects come from the provisioner's own manifests; the fake has no
controllers, so `replicaset()` plays the ReplicaSet: it creates Ready pods from the Deployment's
template. Only the DevTools hop to a pod (GET <podIP>:9222/json/version) is stubbed."""
import asyncio
import json
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import aio_pika
import pytest
import websockets

from services.provisioner import manifests
from services.provisioner.domain import TenantSpec, namespace_for
from services.provisioner.settings import ProvisionerSettings
from services.warm_pool import handlers
from services.warm_pool.adapters.kubernetes import KubernetesPods
from services.warm_pool.pool_cluster import ClusterPool
from services.warm_pool.adapters.local import LocalChromium
from services.warm_pool.settings import WarmPoolSettings, default_chromium
from services.warm_pool.uow import PostgresUnitOfWork
from shared import db
from shared.messages import (LEASE_QUEUE, BrowserCrashed, LeaseReply, LeaseRequest, SessionCompleted, SessionStarted,
                             SubscriptionChanged, TenantProvisioned)
from shared.plans import load_plans
from shared.rpc import RpcClient
from tests import infra
from tests.fakes.kube_api import FakeKubeAPI
from tests.helpers import eventually
from tests.integration.warm_pool_process import crash_events, next_crash

MIGRATIONS = Path(handlers.__file__).with_name("migrations")
PLAN = load_plans(WarmPoolSettings().plans_file)["professional"]
LEASED = "browserfleet.io/pool=leased"
WARM = "browserfleet.io/pool=warm"
EXCHANGE = "browserfleet.events"


@pytest.fixture
def fake():
    api = FakeKubeAPI()
    api.start()
    yield api
    api.stop()


@pytest.fixture
async def pool(fresh_db):
    await db.migrate(fresh_db, schema="warm_pool", migrations_dir=MIGRATIONS)
    pool = await db.create_pool(fresh_db, schema="warm_pool", max_size=20)
    yield pool
    await pool.close()


def devtools_path(pod_ip: str, port: int) -> str:
    assert port == 9222
    return f"/devtools/browser/{uuid.uuid5(uuid.NAMESPACE_URL, pod_ip)}"


class Replica:
    def __init__(self, pool: ClusterPool, settings: WarmPoolSettings):
        self.pool, self.uow, self.settings = pool, pool.uow, settings

    @property
    def kw(self) -> dict:
        return {"pool": self.pool, "uow": self.uow}


@pytest.fixture
async def replicas(pool, fake):
    """Two warm_pool replicas: each its own pool and adapter (its own API client), one database."""
    made = []
    for _ in range(2):
        settings = WarmPoolSettings(kube_api_url=fake.url, kube_retry_base_s=0.01, kube_retry_max_s=0.05,
                                    lease_wait_s=1.0, warm_pool_backend="kubernetes")
        backend = KubernetesPods.from_settings(settings, poll_s=0.05, devtools_path=devtools_path)
        made.append(Replica(ClusterPool(backend, PostgresUnitOfWork(pool), settings), settings))
    yield made
    for ports in made:
        await handlers.shut_down(pool=ports.pool)


@pytest.fixture
def ports(replicas):
    return replicas[0]


async def provision(fake, ports, *, ready: int) -> tuple[uuid.UUID, str]:
    """What the provisioner does for a tenant (its manifests), then tenant.provisioned."""
    tenant_id = uuid.uuid4()
    spec = TenantSpec(tenant_id, namespace_for(tenant_id), "professional", PLAN.limits)
    for obj in manifests.build(spec, ProvisionerSettings()):
        fake.put_object(obj)
    await handlers.tenant_provisioned(TenantProvisioned(tenant_id=tenant_id, namespace=spec.namespace,
                                                        plan="professional", limits=PLAN.limits), **ports.kw)
    replicaset(fake, spec.namespace, ready)
    return tenant_id, spec.namespace


_ips = iter(range(1, 60000))


def replicaset(fake, namespace: str, count: int, *, ready: bool = True) -> list[dict]:
    """Start `count` pods from the Deployment's template (what its ReplicaSet would do)."""
    template = fake.get("deployments", "browsers", namespace)["spec"]["template"]
    pods = []
    for _ in range(count):
        n = next(_ips)
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"browsers-7d4b9-{uuid.uuid4().hex[:5]}", "namespace": namespace,
                            "labels": dict(template["metadata"]["labels"])},
               "spec": template["spec"],
               "status": {"phase": "Running", "podIP": f"10.244.{n // 250}.{n % 250 + 1}",
                          "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
        pods.append(fake.put_object(pod))
    return pods


def pods(fake, namespace: str, selector: str) -> list[dict]:
    return fake.list("pods", namespace, selector)


async def lease(ports, tenant_id, session_id=None):
    return await handlers.lease(LeaseRequest(tenant_id=tenant_id, session_id=session_id or uuid.uuid4()), **ports.kw)


async def crashes(pool) -> list[dict]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT body FROM outbox WHERE routing_key = $1", BrowserCrashed.TYPE)
    return [r["body"] for r in rows]


async def states(pool, tenant_id) -> list[str]:
    async with pool.acquire() as conn:
        return [r["state"] for r in await conn.fetch("SELECT state FROM browsers WHERE tenant_id = $1", tenant_id)]


def completed(tenant_id, session_id, browser_id) -> SessionCompleted:
    now = datetime.now(timezone.utc)
    return SessionCompleted(session_id=session_id, tenant_id=tenant_id, browser_id=browser_id, started_at=now,
                            ended_at=now, duration_ms=1000, end_reason="client", cost=Decimal("0.01"))


async def test_pods_from_the_provisioners_deployment_are_non_root_with_memory_shm_limits_and_readiness(fake, ports):
    _, namespace = await provision(fake, ports, ready=1)
    (pod,) = pods(fake, namespace, WARM)
    spec, (container,) = pod["spec"], pod["spec"]["containers"]
    assert spec["securityContext"]["runAsNonRoot"] is True and container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert container["readinessProbe"]["httpGet"]["port"] == 9222
    assert {"name": "devtools", "containerPort": 9222, "protocol": "TCP"} in container["ports"]


async def test_a_lease_relabels_exactly_one_ready_pod_out_of_the_deployment(fake, ports, pool):
    tenant_id, namespace = await provision(fake, ports, ready=3)
    (not_ready,) = replicaset(fake, namespace, 1, ready=False)
    session_id = uuid.uuid4()

    reply = await lease(ports, tenant_id, session_id)

    assert reply.ok and reply.warm
    (leased,) = pods(fake, namespace, LEASED)
    labels = leased["metadata"]["labels"]
    assert labels["browserfleet.io/session"] == str(session_id)
    assert labels["browserfleet.io/browser"] == str(reply.browser_id)
    assert labels["app.kubernetes.io/component"] == "browser"  # still fenced by the network policies
    selector = fake.get("deployments", "browsers", namespace)["spec"]["selector"]["matchLabels"]
    assert any(labels.get(k) != v for k, v in selector.items())  # out of the ReplicaSet's selector
    ip = leased["status"]["podIP"]
    assert reply.cdp_ws_url == f"ws://{ip}:9222{devtools_path(ip, 9222)}"
    assert not_ready["metadata"]["name"] in {p["metadata"]["name"] for p in pods(fake, namespace, WARM)}
    assert len(pods(fake, namespace, WARM)) == 3
    assert await states(pool, tenant_id) == ["leased"]
    again = await lease(ports, tenant_id, session_id)  # a retried request: the same browser
    assert again.browser_id == reply.browser_id and len(pods(fake, namespace, LEASED)) == 1


async def test_a_leased_pods_row_names_the_pod_and_no_profile_directory(fake, ports, pool):
    """profile_dir is a local browser's directory (start-up removes it); a pod is not one."""
    tenant_id, namespace = await provision(fake, ports, ready=1)
    reply = await lease(ports, tenant_id)
    (leased,) = pods(fake, namespace, LEASED)
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM browsers WHERE id = $1", reply.browser_id)
    assert row["profile_dir"] is None
    assert row["pod"] == f"{namespace}/{leased['metadata']['name']}"


async def test_twenty_concurrent_leases_on_two_replicas_never_take_a_pod_twice(fake, replicas, pool):
    tenant_id, namespace = await provision(fake, replicas[0], ready=20)

    replies = await asyncio.gather(*(lease(replicas[i % 2], tenant_id) for i in range(20)))

    assert all(r.ok for r in replies), [r.error for r in replies]
    leased = pods(fake, namespace, LEASED)
    assert len(leased) == 20 and not pods(fake, namespace, WARM)
    assert {p["metadata"]["labels"]["browserfleet.io/browser"] for p in leased} == {str(r.browser_id) for r in replies}
    assert len({p["metadata"]["labels"]["browserfleet.io/session"] for p in leased}) == 20
    assert len({r.cdp_ws_url for r in replies}) == 20
    assert await states(pool, tenant_id) == ["leased"] * 20
    assert (await lease(replicas[1], tenant_id)).error == "no_capacity"


async def test_replicas_racing_for_the_last_pod_one_wins_and_the_others_get_no_capacity(fake, replicas, pool):
    tenant_id, namespace = await provision(fake, replicas[0], ready=1)
    for ports in replicas:
        ports.settings.lease_wait_s = 0
    fake.latency = 0.02  # widens the window between list and patch

    replies = await asyncio.gather(*(lease(replicas[i % 2], tenant_id) for i in range(10)))

    assert sorted(r.error or "ok" for r in replies) == ["no_capacity"] * 9 + ["ok"]
    assert len(pods(fake, namespace, LEASED)) == 1
    assert sorted(await states(pool, tenant_id)) == ["dead"] * 9 + ["leased"]


async def test_without_a_ready_pod_a_lease_waits_briefly_for_one_then_answers_no_capacity(fake, ports, pool):
    tenant_id, namespace = await provision(fake, ports, ready=0)
    replicaset(fake, namespace, 1, ready=False)
    assert (await lease(ports, tenant_id)).error == "no_capacity"
    assert not pods(fake, namespace, LEASED) and await states(pool, tenant_id) == ["dead"]

    listed = len(fake.requests)
    waiting = asyncio.create_task(lease(ports, tenant_id))
    # Listed the namespace's pods twice: it found none Ready and waits for one.
    await eventually(lambda: fake.requests[listed:].count(("GET", f"/api/v1/namespaces/{namespace}/pods")) >= 2,
                     what="the lease polling for a Ready pod")
    assert not waiting.done()
    replicaset(fake, namespace, 1)  # the ReplicaSet's replacement becomes Ready
    assert (await waiting).ok


async def test_session_end_deletes_the_pod_and_reports_no_crash(fake, ports, pool):
    tenant_id, namespace = await provision(fake, ports, ready=2)
    session_id = uuid.uuid4()
    reply = await lease(ports, tenant_id, session_id)
    started = SessionStarted(session_id=session_id, tenant_id=tenant_id, browser_id=reply.browser_id, warm=True,
                             started_at=datetime.now(timezone.utc))
    await handlers.session_started(started, uow=ports.uow)

    await handlers.session_completed(completed(tenant_id, session_id, reply.browser_id), **ports.kw)

    assert not pods(fake, namespace, LEASED) and len(pods(fake, namespace, WARM)) == 1
    assert await states(pool, tenant_id) == ["dead"]
    await handlers.check_crashes(**ports.kw)
    assert await crashes(pool) == []


async def test_a_vanished_or_failing_leased_pod_is_reported_as_crashed(fake, replicas, pool):
    ports, other = replicas
    tenant_id, namespace = await provision(fake, ports, ready=3)
    gone, failing, fine = [await lease(ports, tenant_id) for _ in range(3)]
    by_browser = {p["metadata"]["labels"]["browserfleet.io/browser"]: p for p in pods(fake, namespace, LEASED)}
    fake.delete_object("pods", by_browser[str(gone.browser_id)]["metadata"]["name"], namespace)
    sick = by_browser[str(failing.browser_id)]
    sick["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    fake.objects[("", "pods", namespace, sick["metadata"]["name"])] = sick  # the kubelet's readiness verdict

    await asyncio.gather(handlers.check_crashes(**ports.kw), handlers.check_crashes(**other.kw))

    reported = await crashes(pool)
    assert sorted(c["browser_id"] for c in reported) == sorted([str(gone.browser_id), str(failing.browser_id)])
    assert all(c["tenant_id"] == str(tenant_id) and c["session_id"] for c in reported)
    (left,) = pods(fake, namespace, LEASED)  # the failing pod is deleted too
    assert left["metadata"]["labels"]["browserfleet.io/browser"] == str(fine.browser_id)
    assert sorted(await states(pool, tenant_id)) == ["dead", "dead", "leased"]


async def test_cancel_leaves_nothing_of_the_tenant_leased(fake, ports, pool):
    tenant_id, namespace = await provision(fake, ports, ready=4)
    for _ in range(3):
        assert (await lease(ports, tenant_id)).ok

    await handlers.subscription_changed(SubscriptionChanged(tenant_id=tenant_id, plan="professional",
                                                            status="canceled"),
                                        plans_file=ports.settings.plans_file, **ports.kw)

    assert not pods(fake, namespace, LEASED)
    assert await states(pool, tenant_id) == ["dead"] * 3
    assert (await lease(ports, tenant_id)).error == "unknown_tenant"
    await handlers.check_crashes(**ports.kw)
    assert await crashes(pool) == []  # ended on purpose, not crashed


async def test_api_500s_and_429s_are_retried(fake, ports, pool):
    tenant_id, namespace = await provision(fake, ports, ready=2)
    fake.fail_next(2, 500, method="GET", path_contains="/pods")
    fake.fail_next(1, 429, method="PATCH")
    fake.fail_next(1, 503, method="PATCH")
    session_id = uuid.uuid4()
    reply = await lease(ports, tenant_id, session_id)
    assert reply.ok and len(pods(fake, namespace, LEASED)) == 1

    fake.fail_next(2, 500, method="DELETE")
    fake.fail_next(1, 429, method="GET", path_contains="/pods")
    await handlers.session_completed(completed(tenant_id, session_id, reply.browser_id), **ports.kw)
    assert not pods(fake, namespace, LEASED) and await states(pool, tenant_id) == ["dead"]


async def test_start_up_deletes_leased_pods_whose_lease_is_gone(fake, ports, pool):
    tenant_id, namespace = await provision(fake, ports, ready=3)
    kept = await lease(ports, tenant_id)
    ended = await lease(ports, tenant_id)
    async with pool.acquire() as conn:  # its session ended while no replica was running
        await conn.execute("UPDATE browsers SET state = 'dead' WHERE id = $1", ended.browser_id)

    await handlers.start_up(pool=ports.pool)

    (left,) = pods(fake, namespace, LEASED)
    assert left["metadata"]["labels"]["browserfleet.io/browser"] == str(kept.browser_id)
    assert len(pods(fake, namespace, WARM)) == 1


async def test_the_service_on_kubernetes_leases_a_real_browser_pod_over_rpc_and_reports_its_loss(
        fake, fresh_db, fresh_mq, tmp_path, artifacts_dir):
    """WARM_POOL_BACKEND=kubernetes wiring, end to end: the pod is a real Chromium on this host
    (pod IP 127.0.0.1, its devtools port Chromium's), so the DevTools hop is real too."""
    chromium = LocalChromium(chromium_path=default_chromium(), profile_root=tmp_path / "pods")
    browser = await chromium.launch(uuid.uuid4())
    service = infra.ServiceProcess("warm_pool", {
        "DATABASE_URL": fresh_db, "RABBITMQ_URL": fresh_mq, "HTTP_PORT": str(infra.free_port()),
        "LOG_FORMAT": "text", "WARM_POOL_BACKEND": "kubernetes", "KUBE_API_URL": fake.url,
        "KUBE_MONITOR_INTERVAL_S": "0.2", "KUBE_RETRY_BASE_S": "0.01"}, artifacts_dir)
    crash_conn = None
    try:
        service.start().wait_ready()
        tenant_id = uuid.uuid4()
        spec = TenantSpec(tenant_id, namespace_for(tenant_id), "professional", PLAN.limits)
        for obj in manifests.build(spec, ProvisionerSettings()):
            fake.put_object(obj)
        (pod,) = replicaset(fake, spec.namespace, 1)
        pod["status"]["podIP"] = "127.0.0.1"
        pod["spec"]["containers"][0]["ports"][0]["containerPort"] = browser.port
        fake.objects[("", "pods", spec.namespace, pod["metadata"]["name"])] = pod
        await publish(fresh_mq, TenantProvisioned(tenant_id=tenant_id, namespace=spec.namespace,
                                                  plan="professional", limits=PLAN.limits))
        crash_conn, crash_queue = await crash_events(fresh_mq)
        rpc = RpcClient(fresh_mq)
        await rpc.connect()
        session_id = uuid.uuid4()

        async def leased():
            reply = LeaseReply.model_validate_json(await rpc.call(
                LEASE_QUEUE, LeaseRequest(tenant_id=tenant_id, session_id=session_id).model_dump_json().encode(),
                timeout=30))
            return reply if reply.error != "unknown_tenant" else None  # tenant.provisioned not consumed yet
        reply = await eventually(leased, what="a lease")
        await rpc.close()

        assert reply.ok and reply.cdp_ws_url == browser.cdp_ws_url
        async with websockets.connect(reply.cdp_ws_url) as ws:
            await ws.send(json.dumps({"id": 1, "method": "Browser.getVersion"}))
            assert "Chrome" in json.loads(await ws.recv())["result"]["product"]
        assert pods(fake, spec.namespace, LEASED)[0]["metadata"]["labels"]["browserfleet.io/session"] == str(session_id)

        fake.delete_object("pods", pod["metadata"]["name"], spec.namespace)
        crash = await next_crash(crash_queue)
        assert (crash.browser_id, crash.session_id, crash.tenant_id) == (reply.browser_id, session_id, tenant_id)
    finally:
        if crash_conn is not None:
            await crash_conn.close()
        service.stop()
        await chromium.close()


async def publish(mq: str, event) -> None:
    async with await aio_pika.connect(mq) as conn:
        channel = await conn.channel()
        exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        await exchange.publish(aio_pika.Message(event.model_dump_json().encode(), content_type="application/json",
                                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                               routing_key=event.type)
