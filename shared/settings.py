"""Settings every service shares; each service subclasses this with its own fields."""
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PLANS_FILE = Path(__file__).with_name("plans.json")


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str = "postgresql://postgres@127.0.0.1:5432/browserfleet"
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # All services of one deployment publish to one exchange; tests use their own vhost.
    events_exchange: str = "browserfleet.events"
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    admin_token: SecretStr = SecretStr("dev-admin-token")
    plans_file: Path = DEFAULT_PLANS_FILE
    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|text)$")
    delivery_limit: int = 8
    db_pool_max: int = 10
