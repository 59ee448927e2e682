"""Billing as its own process for tests (its Stripe webhook secret and admin token, retries made
quick), pointed at a Stripe stand-in."""
from tests import infra

SECRET = "whsec_process_test"
ADMIN = {"Authorization": "Bearer admin-process"}


def billing_process(db_url, mq_url, artifacts_dir, stripe_url) -> infra.ServiceProcess:
    return infra.ServiceProcess("billing", {
        "DATABASE_URL": db_url, "RABBITMQ_URL": mq_url, "HTTP_PORT": str(infra.free_port()),
        "STRIPE_WEBHOOK_SECRET": SECRET, "ADMIN_TOKEN": "admin-process", "STRIPE_API_BASE": stripe_url,
        "WEBHOOK_RETRY_INTERVAL_S": "0.2", "METER_RETRY_INTERVAL_S": "0.2",
        "METER_RETRY_MAX_BACKOFF_S": "0.5", "LOG_FORMAT": "text",
    }, artifacts_dir)
