"""All four services as real processes on one database and one vhost of this test run."""
from contextlib import contextmanager
from pathlib import Path

from tests import infra

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
