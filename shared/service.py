"""Common process lifecycle: settings → migrations → broker + HTTP app → run until signalled.

A service provides `build(runtime)` which registers its consumers on `runtime.consumers`,
adds background tasks with `runtime.background(...)`, cleanups with `runtime.on_stop(...)`,
and returns its FastAPI app.
"""
import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg
import uvicorn
from fastapi import FastAPI
from faststream.rabbit import RabbitBroker
from tenacity import (AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential,
                      wait_fixed)

from shared import db, dlq, inbox, logs, metrics, outbox
from shared.broker import Consumers, make_broker
from shared.outbox import OutboxRelay
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    name: str
    settings: ServiceSettings
    pool: asyncpg.Pool
    broker: RabbitBroker
    consumers: Consumers
    stopping: asyncio.Event
    _tasks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # uvicorn.Config options a service's build() sets (sessions: its websocket protocol and cap).
    server_options: dict = field(default_factory=dict)

    def background(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._tasks.append(fn)

    def every(self, interval_s: float, fn: Callable[[], Awaitable[object]], *, wake: asyncio.Event | None = None) -> None:
        """Run `fn` in the background now and then every `interval_s` (or as soon as `wake` is set)."""
        self.background(every(interval_s, fn, wake=wake))

    def on_stop(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._cleanups.append(fn)

    async def retention(self) -> None:
        await retention(self.pool, outbox_s=self.settings.outbox_retention_s,
                        inbox_s=self.settings.inbox_retention_s, interval_s=self.settings.retention_interval_s)

    async def ready(self) -> dict[str, bool]:
        broker_ok = False
        with contextlib.suppress(Exception):
            broker_ok = bool(await self.broker.ping(timeout=2))
        return {"database": await db.check(self.pool), "broker": broker_ok}


def every(interval_s: float, fn: Callable[[], Awaitable[object]], *, wake: asyncio.Event | None = None):
    """The one background loop: run `fn`, then wait `interval_s` (or until `wake` is set), forever.
    A pass that fails is logged and the next one runs on schedule."""
    name = (fn.func if isinstance(fn, partial) else fn).__name__

    async def loop() -> None:
        while True:
            try:
                await fn()
            except Exception:
                log.exception("background pass failed", extra={"task": name})
            if wake is None:
                await asyncio.sleep(interval_s)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), interval_s)
            wake.clear()

    loop.__name__ = name
    return loop


def run(main: Awaitable[None]) -> None:
    """Run a service's `serve(...)` on uvloop (libuv): the event loop, asyncpg and the sockets all
    run faster than on the default loop, which the create path and the CDP relay feel directly."""
    import uvloop
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # signals are handled by `serve` below
        yield


async def _forever(name: str, fn: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop; restart it a second after an unexpected error instead of dying silently."""
    def crashed(state: RetryCallState) -> None:
        log.error("background task crashed, restarting", exc_info=state.outcome.exception(), extra={"task": name})

    await AsyncRetrying(wait=wait_fixed(1), retry=retry_if_exception_type(Exception), before_sleep=crashed)(fn)


async def retention(pool: asyncpg.Pool, *, outbox_s: float, inbox_s: float, interval_s: float) -> None:
    """Keep the outbox and inbox bounded: delete sent and handled rows past their retention, now
    and then every `interval_s` (each replica does; they skip each other's locked rows)."""
    for table in ("outbox", "inbox"):
        metrics.RETENTION_DELETED.labels(table).inc(0)
    await every(interval_s, partial(retention_pass, pool, outbox_s=outbox_s, inbox_s=inbox_s))()


async def retention_pass(pool: asyncpg.Pool, *, outbox_s: float, inbox_s: float) -> None:
    for table, rows in (("outbox", await outbox.delete_sent(pool, older_than_s=outbox_s)),
                        ("inbox", await inbox.delete_handled(pool, older_than_s=inbox_s))):
        metrics.RETENTION_DELETED.labels(table).inc(rows)
        if rows:
            log.info("rows past retention deleted", extra={"table": table, "rows": rows})


async def serve(*, name: str, schema: str, settings: ServiceSettings, migrations_dir: Path,
                build: Callable[[Runtime], Awaitable[FastAPI]]) -> None:
    logs.configure(name, settings.log_level, settings.log_format)
    refuse_insecure(name, settings)
    logins: list[str] = []

    async def prepare() -> None:
        logins[:] = [(await db.prepare(schema=schema, migrations_dir=migrations_dir, admin_dsn=settings.database_url,
                                       key=database_key(settings), own_dsn=settings.own_database_url()))[0]]

    await _retry("database", prepare)
    login = logins[0]
    pool = await db.create_pool(login, schema=schema, max_size=settings.db_pool_max)
    broker = make_broker(settings.rabbitmq_url)
    mq_user = unquote(urlsplit(settings.rabbitmq_url).username or "") or None
    consumers = Consumers(broker, service=name, events=settings.events_exchange,
                          delivery_limit=settings.delivery_limit, user=mq_user)
    runtime = Runtime(name, settings, pool, broker, consumers, asyncio.Event())
    app = await build(runtime)
    dead_letters = dlq.DeadLetters(settings.rabbitmq_url, consumers.queue_names)
    app.include_router(dlq.router(dead_letters, settings.admin_token.get_secret_value()))
    app.include_router(outbox.router(pool, settings.admin_token.get_secret_value()))
    runtime.every(15, dead_letters.depths)  # the dlq_depth gauges, for alerting
    runtime.background(runtime.retention)
    runtime.on_stop(dead_letters.close)

    await _retry("broker", broker.connect)
    await consumers.declare_dead_letters()
    await broker.start()
    relay = OutboxRelay(pool, broker, exchange=settings.events_exchange, dsn=login,
                         park_after=settings.outbox_park_after_returns, user_id=mq_user)
    await relay.start()
    tasks = [asyncio.create_task(_forever(fn.__name__, fn), name=fn.__name__) for fn in runtime._tasks]

    # The sans-I/O websockets protocol measured about half the relay overhead of "websockets".
    server = _Server(uvicorn.Config(app, host=settings.http_host, port=settings.http_port,
                                    forwarded_allow_ips=settings.forwarded_allow_ips,
                                    log_config=None, access_log=False, ws_ping_interval=None, lifespan="off",
                                    **{"ws": "websockets-sansio", **runtime.server_options}))
    loop = asyncio.get_running_loop()

    def _stop(*_):
        runtime.stopping.set()
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _stop)
    log.info("service started", extra={"port": settings.http_port})
    try:
        await server.serve()
    finally:
        runtime.stopping.set()
        log.info("service stopping")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for cleanup in reversed(runtime._cleanups):
            with contextlib.suppress(Exception):
                await cleanup()
        await relay.stop()
        with contextlib.suppress(Exception):
            await broker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pool.close(), 5)
        log.info("service stopped")


def refuse_insecure(name: str, settings: ServiceSettings) -> None:
    """Exit before touching anything when a secret would let anyone in (off loopback: missing,
    empty, short or well-known; anywhere: well-known)."""
    problems = settings.secret_problems()
    if problems:
        for problem in problems:
            log.critical("refusing to start: %s", problem)
        raise SystemExit(f"{name}: refusing to start: " + "; ".join(problems))
    for secret in settings.generated_secrets:
        log.warning("%s is not set: using a random value nobody knows (what it guards is closed)",
                    secret.upper())


def database_key(settings: ServiceSettings) -> str | None:
    """The key of the service logins' passwords: DATABASE_ROLE_SECRET, else DATABASE_URL's password
    (None: a random key of this process, on loopback only, see ServiceSettings.secret_problems)."""
    return settings.database_role_secret.get_secret_value() or urlsplit(settings.database_url).password or None


async def _retry(what: str, fn: Callable[[], Awaitable], attempts: int = 30) -> None:
    """Wait for a dependency still starting: tries after 0.5, 1, 2, 4, then every 5 s, then raise."""
    def waiting(state: RetryCallState) -> None:
        log.warning("waiting for %s", what, extra={"error": repr(state.outcome.exception())[:200],
                                                   "attempt": state.attempt_number})

    await AsyncRetrying(
        stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=0.5, max=5), reraise=True,
        retry=retry_if_exception_type((OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                                       ConnectionError)),
        before_sleep=waiting)(fn)
