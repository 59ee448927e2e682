from pydantic import SecretStr

from shared.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    SECRETS = ("admin_token", "stripe_webhook_secret", "stripe_api_key")
    http_port: int = 8001
    # This service's own database login, for an operator who manages roles (DATABASE_URL unused then).
    billing_database_url: SecretStr | None = None
    stripe_api_key: SecretStr = SecretStr("")
    stripe_api_base: str | None = None  # a Stripe test server (localstripe, a stand-in)
    stripe_webhook_secret: SecretStr = SecretStr("")
    stripe_webhook_tolerance_s: int = 300
    stripe_webhook_max_bytes: int = 1024 * 1024
    stripe_meter_event_name: str = "browser_session_minutes"
    stripe_meter_enabled: bool = True
    checkout_success_url: str = "http://localhost:8000/checkout/success?session_id={CHECKOUT_SESSION_ID}"
    checkout_cancel_url: str = "http://localhost:8000/checkout/cancel"
    # A plan change's credential is verified by the sessions service over RabbitMQ.
    credential_check_timeout_s: float = 5.0
    # Stored-but-unprocessed webhook events and unsent meter reports are retried with backoff.
    webhook_retry_interval_s: float = 1.0
    webhook_retry_max_backoff_s: float = 300.0
    meter_retry_interval_s: float = 1.0
    meter_retry_max_backoff_s: float = 300.0

    def own_database_url(self) -> str | None:
        return self.billing_database_url.get_secret_value() if self.billing_database_url else None
