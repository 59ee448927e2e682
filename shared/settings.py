"""Settings every service shares; each service subclasses this with its own fields."""
import ipaddress
import secrets
from pathlib import Path
from typing import ClassVar

from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PLANS_FILE = Path(__file__).with_name("plans.json")
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
MIN_SECRET_LENGTH = 16
# Never accepted, whatever the bind: the defaults this project once shipped and the usual placeholders.
KNOWN_BAD_SECRETS = frozenset({
    "dev-admin-token", "whsec_dev", "sk_test_dev", "changeme", "change-me", "change_me", "changeit",
    "secret", "password", "passw0rd", "admin", "administrator", "token", "test", "testing", "default",
    "dev", "development", "example", "browserfleet", "guest", "postgres", "root", "12345678",
    "123456", "letmein", "please-change-me", "replace-me", "todo", "xxx", "whsec_", "sk_test_",
    "sk_live_", "whsec_test", "sk_test", "admin-token", "admin_token", "your-admin-token",
})


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_known_bad(value: str) -> bool:
    return value.strip().lower() in KNOWN_BAD_SECRETS


class InsecureSettings(Exception):
    """A secret is missing, empty or well-known where the service must not run with it."""


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)
    # The secret fields of this service (each subclass adds its own). None has a usable default.
    SECRETS: ClassVar[tuple[str, ...]] = ("admin_token",)

    # Administrative at start-up (roles, schema, migrations); the service then runs on its own login.
    database_url: str = "postgresql://postgres@127.0.0.1:5432/browserfleet"
    # Key from which each service's database login password is derived (HMAC of the role name),
    # so replicas and restarts agree; without it, the password of DATABASE_URL is the key.
    database_role_secret: SecretStr = SecretStr("")
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # All services of one deployment publish to one exchange; tests use their own vhost.
    events_exchange: str = "browserfleet.events"
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # Proxies whose X-Forwarded-For is the client's address (uvicorn's setting of that name):
    # behind an ingress, its controller's addresses, or every client counts as the proxy.
    forwarded_allow_ips: str = "127.0.0.1,::1"
    admin_token: SecretStr = SecretStr("")
    plans_file: Path = DEFAULT_PLANS_FILE
    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|text)$")
    delivery_limit: int = 8
    db_pool_max: int = 10
    # A request body larger than this is refused (413) before it is read; the webhook has its own.
    max_request_body_bytes: int = 1024 * 1024
    # Failed authentications per client address per window before 429 (each replica counts its own).
    auth_failures_max: int = 20
    auth_failure_window_s: float = 60
    # Sent outbox rows and handled inbox rows are deleted once this old (checked every
    # RETENTION_INTERVAL_S). Keep the inbox's longer than any redelivery you expect.
    outbox_retention_s: float = 7 * 24 * 3600
    inbox_retention_s: float = 7 * 24 * 3600
    retention_interval_s: float = 3600
    # An event no queue takes is retried after 1, 2, 4, ... 30 s, and parked after this many
    # returns (8: about 1.5 minutes) until an operator replays it (`browserfleet outbox`).
    outbox_park_after_returns: int = 8

    _generated: list[str] = PrivateAttr(default_factory=list)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.http_host)

    @property
    def generated_secrets(self) -> list[str]:
        """Secrets that were not set and got a random value nobody knows (loopback only)."""
        return list(self._generated)

    @model_validator(mode="after")
    def _unguessable_when_unset(self):
        # On loopback an unset secret becomes a random per-process value: what it guards (admin
        # routes, webhooks) is then closed to everyone instead of open to a guessable value.
        if self.loopback:
            for name in self.SECRETS:
                if not getattr(self, name).get_secret_value().strip():
                    setattr(self, name, SecretStr(secrets.token_urlsafe(32)))
                    self._generated.append(name)
        return self

    def own_database_url(self) -> str | None:
        """This service's own login URL when an operator manages the roles himself (subclasses)."""
        return None

    def secret_problems(self) -> list[str]:
        """Why this service must not start with its secrets, one line per setting; [] if fine."""
        problems = []
        where = f"HTTP_HOST={self.http_host} is not loopback"
        for name in self._checked_secrets():
            env, value = name.upper(), getattr(self, name).get_secret_value()
            if is_known_bad(value):
                problems.append(f"{env} is a well-known value; set a random one (e.g. `openssl rand -hex 32`)")
            elif not value.strip():
                problems.append(f"{env} is not set or empty ({where}); set a random value")
            elif not self.loopback and len(value.strip()) < MIN_SECRET_LENGTH:
                problems.append(f"{env} is shorter than {MIN_SECRET_LENGTH} characters ({where})")
        return problems

    def _checked_secrets(self) -> list[str]:
        names = list(self.SECRETS)
        # Off loopback, deriving the service logins needs a key: this one or DATABASE_URL's password.
        if (not self.loopback and self.own_database_url() is None
                and (self.database_role_secret.get_secret_value() or not _url_password(self.database_url))):
            names.append("database_role_secret")
        return names

    def check_secrets(self) -> None:
        problems = self.secret_problems()
        if problems:
            raise InsecureSettings("; ".join(problems))


def _url_password(url: str) -> str | None:
    from urllib.parse import urlsplit
    return urlsplit(url).password
