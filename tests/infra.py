"""Real Postgres and RabbitMQ for tests: a fresh database and vhost per test run.

URLs come from DATABASE_URL / RABBITMQ_URL or the local defaults; testcontainers is used only
when neither answers and a Docker engine does.
"""
import atexit
import base64
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from tests import helpers

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_MQ = "amqp://guest:guest@127.0.0.1:5672/"
# Random secrets of this test run, given to every service process that is not told others: the
# services ship no usable default (a well-known one is refused, an unset one is random).
SECRETS = {
    "ADMIN_TOKEN": f"test-admin-{secrets.token_urlsafe(24)}",
    "STRIPE_WEBHOOK_SECRET": f"whsec_{secrets.token_urlsafe(24)}",
    "STRIPE_API_KEY": f"sk_test_{secrets.token_urlsafe(24)}",
    "DATABASE_ROLE_SECRET": secrets.token_urlsafe(32),
    # warm_pool's profile archives (issue 18): one random AES-256 key of this run's.
    "PROFILE_ENCRYPTION_KEY": "test1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
}
# The key of the services' RabbitMQ users' passwords (`service_broker_urls`); services never see it.
BROKER_USER_KEY = secrets.token_urlsafe(32)
_BROKER_USERS: dict[str, list[str]] = {}


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0


def with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


@contextmanager
def postgres_server():
    url = os.environ.get("DATABASE_URL", DEFAULT_DB)
    if _reachable(url, 5432) or not _docker_answers():
        yield url
        return
    from testcontainers.postgres import PostgresContainer
    with PostgresContainer("postgres:16-alpine", driver=None) as pg:
        yield pg.get_connection_url()


@contextmanager
def rabbitmq_server():
    url = os.environ.get("RABBITMQ_URL", DEFAULT_MQ)
    if _reachable(url, 5672) or not _docker_answers():
        yield url
        return
    from testcontainers.rabbitmq import RabbitMqContainer
    with RabbitMqContainer("rabbitmq:3.13-management") as mq:
        params = mq.get_connection_params()
        yield f"amqp://guest:guest@{params.host}:{params.port}/"


@contextmanager
def fresh_database(server_url: str):
    import asyncio

    import asyncpg

    name = f"bf_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(with_path(server_url, "/postgres"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield with_path(server_url, f"/{name}")
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@contextmanager
def fresh_vhost(server_url: str):
    """A vhost of its own per run (needs rabbitmqctl on this host)."""
    name = f"bf-test-{uuid.uuid4().hex[:10]}"
    user = urlsplit(server_url).username or "guest"
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
    try:
        yield with_path(server_url, f"/{name}")
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=120)
        from shared import broker
        broker.delete_users(_BROKER_USERS.pop(name, []))


def service_broker_urls(vhost_url: str, *, events: str = "browserfleet.events") -> dict[str, str]:
    """Each service's own RabbitMQ user on this vhost, with only its own permissions (created
    once per vhost, named after it so that test runs never share one; removed with the vhost)."""
    from shared import broker
    vhost = broker.vhost_of(vhost_url)
    if vhost not in _BROKER_USERS:
        defs = broker.definitions(vhost=vhost, events=events, key=BROKER_USER_KEY, prefix=f"{vhost}.")
        broker.import_definitions(defs)
        _BROKER_USERS[vhost] = [u["name"] for u in defs["users"]]
    return {s: broker.service_url(vhost_url, service=s, key=BROKER_USER_KEY, prefix=f"{vhost}.")
            for s in broker.SERVICES}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser_root(workdir: Path) -> Path:
    """The PROFILE_ROOT for a test's warm_pool(s) working in `workdir`. Sandboxed browsers run as
    users of their own, which must traverse its parents: pytest's temp dirs are private to root,
    so it lives beside them, one per workdir."""
    digest = hashlib.sha1(str(workdir.resolve()).encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"browserfleet-test-{digest}"
    if not path.exists():
        path.mkdir(mode=0o711)
        atexit.register(shutil.rmtree, path, True)
    return path


class ServiceProcess:
    """One service as its own process (`python -m services.<name>`), logs to a file."""

    def __init__(self, name: str, env: dict, log_dir: Path):
        self.name = name
        self.port = int(env["HTTP_PORT"])
        self.env = {**os.environ, **SECRETS, **env, "PYTHONUNBUFFERED": "1"}
        if name == "warm_pool":  # sandboxed browsers reach the test pages on this port only
            self.env.setdefault("BROWSER_HOST_PORTS", str(helpers.page_port()))
            self.env.setdefault("DOWNLOADS_ROOT", str(log_dir / "downloads"))  # kept files: the test's own
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServiceProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", f"services.{self.name}"], cwd=ROOT,
                                     env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready; see {self.log_path}")

    def stop(self, sig: int = 15, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
