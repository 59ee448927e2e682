"""All four services as real processes on one database and one vhost of this test run."""
import json
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests import infra, stripe_fakes
from tests.helpers import eventually

SERVICES = ("billing", "provisioner", "sessions", "warm_pool")
WEBHOOK_SECRET = infra.SECRETS["STRIPE_WEBHOOK_SECRET"]
ADMIN_TOKEN = infra.SECRETS["ADMIN_TOKEN"]


class Platform:
    def __init__(self, database_url: str, rabbitmq_url: str, workdir: Path, *, broker_users: bool = True,
                 **extra_env):
        self.workdir, self.database_url = workdir, database_url
        self.profile_root = infra.browser_root(workdir)
        self.logs = workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        ports = {name: infra.free_port() for name in SERVICES}
        self.urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        common = {
            "DATABASE_URL": database_url, "RABBITMQ_URL": rabbitmq_url,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, "ADMIN_TOKEN": ADMIN_TOKEN,
            "PROFILE_ROOT": str(self.profile_root), "PUBLIC_URL": self.urls["sessions"],
            "LOG_FORMAT": "json", "STRIPE_API_BASE": "http://127.0.0.1:9", **extra_env,
        }
        # Each service on its own RabbitMQ user, as deployed (the test itself keeps the vhost's admin).
        own = (infra.service_broker_urls(rabbitmq_url, events=common.get("EVENTS_EXCHANGE", "browserfleet.events"))
               if broker_users else {})
        self.procs = {name: infra.ServiceProcess(name, {**common, "HTTP_PORT": str(port),
                                                       **({"RABBITMQ_URL": own[name]} if own else {})},
                                                 self.logs)
                      for name, port in ports.items()}

    def start(self) -> "Platform":
        for proc in self.procs.values():
            proc.start()
        for proc in self.procs.values():
            proc.wait_ready()
        return self

    def stop(self) -> dict[str, int | None]:
        return {name: proc.stop() for name, proc in self.procs.items()}

    @property
    def admin(self) -> dict:
        return {"authorization": f"Bearer {ADMIN_TOKEN}"}


@contextmanager
def running_platform(database_url: str, rabbitmq_url: str, workdir: Path, **extra_env):
    platform = Platform(database_url, rabbitmq_url, workdir, **extra_env)
    try:
        yield platform.start()
    finally:
        platform.stop()


async def paying_tenant(platform) -> tuple[str, str]:
    """A professional tenant paid through signed Stripe webhooks; its id and first API key."""
    tenant_id = str(uuid.uuid4())
    customer, subscription = f"cus_{uuid.uuid4().hex[:14]}", f"sub_{uuid.uuid4().hex[:14]}"
    start = datetime.now(timezone.utc).replace(microsecond=0)
    async with httpx.AsyncClient(timeout=30) as http:
        for event in (stripe_fakes.checkout_session_completed(tenant_id, "professional", customer, subscription),
                      stripe_fakes.invoice_paid(tenant_id, "professional", customer, subscription,
                                                int(start.timestamp()), int((start + timedelta(days=30)).timestamp()))):
            body = json.dumps(event).encode()
            headers = {"stripe-signature": stripe_fakes.sign(body, WEBHOOK_SECRET), "content-type": "application/json"}
            assert (await http.post(f"{platform.urls['billing']}/webhooks/stripe", content=body,
                                    headers=headers)).status_code == 200

        async def key():
            r = await http.post(f"{platform.urls['sessions']}/v1/admin/tenants/{tenant_id}/api-keys",
                                headers=platform.admin)
            return r.json()["api_key"] if r.status_code == 201 else None

        api_key = await eventually(key, timeout=30, what="tenant known to sessions")

        async def ready():
            r = await http.get(f"{platform.urls['sessions']}/v1/usage", headers=bearer(api_key))
            return r.status_code == 200 and r.json()["credits_remaining"] == 5000

        await eventually(ready, timeout=30, what="allowance granted")
    return tenant_id, api_key


def bearer(key: str) -> dict:
    return {"authorization": f"Bearer {key}"}


async def keep_alive_session(platform, api_key: str) -> dict:
    """A new session of the tenant that stays up (keep-alive, ten minutes' timeouts) until ended."""
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{platform.urls['sessions']}/v1/sessions", headers=bearer(api_key),
                            json={"timeout_s": 600, "idle_timeout_s": 600, "keep_alive": True})
        assert r.status_code == 201, r.text
        return r.json()


def scrape(http, url: str) -> dict[tuple[str, tuple], float]:
    text = http.get(f"{url}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    matching = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)]
    assert matching, f"no {name}{labels} exported"
    return sum(matching)
