"""Issue 15, item 2: no shipped default secret gets anyone in.

Each service is started as a process the way an operator would, bound to every interface
(HTTP_HOST=0.0.0.0, on a port picked here): with a missing, empty or well-known secret it exits
non-zero before binding, naming the setting; with good secrets it starts. On loopback a
well-known secret is refused too, and an unset one opens nothing to the old defaults.
"""
import os
import subprocess
import sys

import httpx
import pytest

from tests import infra
from tests.e2e.platform import running_platform

SERVICES = ("sessions", "billing", "provisioner", "warm_pool")
SECRET_NAMES = ("ADMIN_TOKEN", "STRIPE_WEBHOOK_SECRET", "STRIPE_API_KEY", "DATABASE_ROLE_SECRET")
OLD_DEFAULTS = {"ADMIN_TOKEN": "dev-admin-token", "STRIPE_WEBHOOK_SECRET": "whsec_dev", "STRIPE_API_KEY": "sk_test_dev"}


def run_service(name: str, tmp_path, database_url: str, rabbitmq_url: str, *, unset=(), **env) -> subprocess.Popen:
    """The service with good secrets except as changed here, outside the project directory (no
    `.env` of a developer's gets read)."""
    base = {k: v for k, v in os.environ.items() if k not in SECRET_NAMES}
    good = {k: v for k, v in infra.SECRETS.items() if k not in unset}
    full = {**base, **good, "PYTHONPATH": str(infra.ROOT), "DATABASE_URL": database_url,
            "RABBITMQ_URL": rabbitmq_url, "HTTP_HOST": "0.0.0.0", "HTTP_PORT": str(infra.free_port()),
            "PROFILE_ROOT": str(tmp_path / "browsers"), "LOG_FORMAT": "text", **env}
    return subprocess.Popen([sys.executable, "-m", f"services.{name}"], cwd=tmp_path, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def refused(proc: subprocess.Popen) -> str:
    """The process exits by itself (non-zero); what it printed."""
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"started with an unsafe secret:\n{out[-2000:]}")
    assert proc.returncode != 0, out
    assert "refusing to start" in out, out
    return out


CASES = [(svc, "ADMIN_TOKEN", how) for svc in SERVICES for how in ("missing", "empty", "old default", "changeme")]
CASES += [("billing", name, how) for name in ("STRIPE_WEBHOOK_SECRET", "STRIPE_API_KEY")
          for how in ("missing", "empty", "old default")]


@pytest.mark.parametrize("service,setting,how", CASES)
def test_a_non_loopback_service_refuses_a_missing_empty_or_well_known_secret(service, setting, how, tmp_path,
                                                                           database_url, rabbitmq_url):
    value = {"empty": "", "old default": OLD_DEFAULTS[setting], "changeme": "changeme"}.get(how)
    env = {} if value is None else {setting: value}
    proc = run_service(service, tmp_path, database_url, rabbitmq_url, unset=(setting,), **env)
    out = refused(proc)
    assert setting in out
    if value:
        assert value not in out  # not echoed into logs


def test_a_short_secret_is_refused_off_loopback(tmp_path, database_url, rabbitmq_url):
    out = refused(run_service("sessions", tmp_path, database_url, rabbitmq_url, ADMIN_TOKEN="abc123"))
    assert "ADMIN_TOKEN" in out


def test_service_logins_need_a_key_off_loopback(tmp_path, database_url, rabbitmq_url):
    """The admin DATABASE_URL has no password here: without DATABASE_ROLE_SECRET the logins'
    passwords would have nothing to be derived from that replicas share."""
    out = refused(run_service("provisioner", tmp_path, database_url, rabbitmq_url, unset=("DATABASE_ROLE_SECRET",)))
    assert "DATABASE_ROLE_SECRET" in out


def test_a_well_known_secret_is_refused_on_loopback_too(tmp_path, database_url, rabbitmq_url):
    proc = run_service("billing", tmp_path, database_url, rabbitmq_url, HTTP_HOST="127.0.0.1",
                       STRIPE_WEBHOOK_SECRET="whsec_dev")
    assert "STRIPE_WEBHOOK_SECRET" in refused(proc)


def test_with_good_secrets_every_service_starts_on_every_interface(fresh_db, fresh_mq, tmp_path):
    with running_platform(fresh_db, fresh_mq, tmp_path, HTTP_HOST="0.0.0.0") as platform:
        for url in platform.urls.values():
            assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200


def test_on_loopback_an_unset_admin_token_opens_nothing(fresh_db, fresh_mq, tmp_path):
    """The old defaults and an empty token are no way in: the admin routes take no guessable token."""
    env = {"DATABASE_URL": fresh_db, "RABBITMQ_URL": fresh_mq, "HTTP_PORT": str(infra.free_port()),
           "PYTHONPATH": str(infra.ROOT)}
    proc = infra.ServiceProcess("sessions", {**env, "ADMIN_TOKEN": ""}, tmp_path).start()
    try:
        proc.wait_ready()
        for headers in ({"authorization": "Bearer dev-admin-token"}, {"authorization": "Bearer changeme"},
                        {"authorization": "Bearer"}, {}):
            r = httpx.get(f"{proc.url}/v1/admin/tenants", headers=headers, timeout=5)
            assert r.status_code == 401, (headers, r.text)
        assert "ADMIN_TOKEN is not set" in proc.log_path.read_text()
    finally:
        assert proc.stop() == 0


def test_make_run_generates_private_secrets_once_and_keeps_them(tmp_path):
    from shared.devrun import GENERATED, ensure_secrets

    env = tmp_path / ".env"
    env.write_text("LOG_LEVEL=DEBUG\nADMIN_TOKEN=dev-admin-token\n")  # an older release's default
    first, made = ensure_secrets(env)
    assert set(made) == set(GENERATED) and env.stat().st_mode & 0o777 == 0o600
    assert first["ADMIN_TOKEN"] != "dev-admin-token" and len(first["ADMIN_TOKEN"]) >= 32
    assert "LOG_LEVEL=DEBUG" in env.read_text()
    again, made = ensure_secrets(env)
    assert made == [] and again == first
