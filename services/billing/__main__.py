"""python -m services.billing — settings → migrations → broker + HTTP → run until signalled."""
from pathlib import Path

from services.billing import http, subscribers
from services.billing.adapters.credentials import CredentialsClient
from services.billing.adapters.stripe import StripeGateway
from services.billing.settings import BillingSettings
from services.billing.uow import PostgresUnitOfWork
from services.billing.workers import MeterReporter, StripeEventWorker
from shared.plans import load_plans
from shared.service import Runtime, run, serve


async def build(runtime: Runtime):
    settings: BillingSettings = runtime.settings
    plans = load_plans(Path(settings.plans_file))
    uow = PostgresUnitOfWork(runtime.pool)
    api = StripeGateway(settings.stripe_api_key.get_secret_value(), settings.stripe_api_base)
    worker = StripeEventWorker(uow, plans=plans, interval=settings.webhook_retry_interval_s,
                               max_backoff=settings.webhook_retry_max_backoff_s)
    meter = MeterReporter(uow, api, event_name=settings.stripe_meter_event_name,
                          interval=settings.meter_retry_interval_s,
                          max_backoff=settings.meter_retry_max_backoff_s)
    subscribers.register(runtime, uow=uow, on_usage=meter.wake.set)
    runtime.every(worker.interval, worker.run_once, wake=worker.wake)
    if settings.stripe_meter_enabled:
        runtime.every(meter.interval, meter.run_once, wake=meter.wake)
    runtime.on_stop(worker.drain)
    credentials = CredentialsClient(settings.rabbitmq_url, timeout_s=settings.credential_check_timeout_s)
    runtime.on_stop(credentials.close)
    return http.create_app(settings=settings, uow=uow, plans=plans, worker=worker, stripe_api=api,
                           credentials=credentials, ready=runtime.ready)


def main() -> None:
    settings = BillingSettings()
    run(serve(name="billing", schema="billing", settings=settings,
               migrations_dir=Path(__file__).with_name("migrations"), build=build))


if __name__ == "__main__":
    main()
