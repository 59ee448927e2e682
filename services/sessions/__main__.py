"""python -m services.sessions — settings → migrations → broker + HTTP → run until signalled."""
import logging
from functools import partial
from pathlib import Path

from services.sessions import credentials_rpc, ending, http, subscribers
from services.sessions.api_keys import ApiKeys
from services.sessions.adapters.lease import LeaseClient
from services.sessions.adapters.downloads import DownloadsClient
from services.sessions.adapters.profiles import ProfilesClient
from services.sessions.dashboard import routes as dashboard
from services.sessions.relays import Relays
from services.sessions.reservations import Reservations
from services.sessions.ws_server import RedactTokens, ServerProtocol
from services.sessions.settings import SessionsSettings
from services.sessions.uow import PostgresUnitOfWork
from shared.service import Runtime, run, serve


async def build(runtime: Runtime):
    settings: SessionsSettings = runtime.settings
    relays, uow = Relays(), PostgresUnitOfWork(runtime.pool)
    for name in ("uvicorn.error", "uvicorn.access", "websockets"):
        logging.getLogger(name).addFilter(RedactTokens())
    lease = LeaseClient(settings.rabbitmq_url, timeout_s=settings.lease_timeout_s)
    reservations = Reservations(lease, uow, per_tenant=settings.context_reserve, ttl_s=settings.context_reserve_ttl_s)
    api_keys = ApiKeys(uow, ttl_s=settings.api_key_cache_s)
    subscribers.register(runtime, uow=uow, relays=relays, reservations=reservations)
    credentials_rpc.register(runtime, auth=dashboard.auth(api_keys, settings))  # billing asks whose key
    reap = partial(ending.reap, uow=uow, plans_file=settings.plans_file, ended=relays.end,
                   disconnect_grace_s=settings.disconnect_grace_s,
                   stuck_after_s=settings.lease_timeout_s + 10)

    async def reaper() -> None:
        await reap()
        await ending.refresh_running_gauge(uow=uow)

    runtime.every(settings.reaper_interval_s, reaper)
    runtime.every(1, partial(relays.flush, uow))  # sessions' last activity, for idle timeouts
    # The cap is checked on frame headers. No permessage-deflate: a few KiB on the wire would
    # inflate to the cap in memory before being refused (and compressing costs the relay CPU).
    runtime.server_options.update(ws=ServerProtocol, ws_max_size=settings.max_cdp_message_bytes,
                                  ws_per_message_deflate=False)
    profiles = ProfilesClient(settings.rabbitmq_url, timeout_s=settings.lease_timeout_s)
    runtime.every(1, reservations.sweep)
    runtime.on_stop(lease.close)
    runtime.on_stop(reservations.close)  # released into the outbox; stops run last-added first
    runtime.on_stop(profiles.close)
    downloads = DownloadsClient(settings.rabbitmq_url, timeout_s=settings.lease_timeout_s)
    runtime.on_stop(downloads.close)
    return http.create_app(ready=runtime.ready, uow=uow, settings=settings, lease=lease, api_keys=api_keys, relays=relays,
                           profiles=profiles, downloads=downloads, reservations=reservations)


def main() -> None:
    settings = SessionsSettings()
    run(serve(name="sessions", schema="sessions", settings=settings,
               migrations_dir=Path(__file__).with_name("migrations"), build=build))


if __name__ == "__main__":
    main()
