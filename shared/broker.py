"""RabbitMQ topology and the consuming side of every service.

- One durable topic exchange for domain events; routing key = message type.
- One durable quorum queue per consumer and subscription (`<service>.<type>`), dead-lettered
  to `<queue>.dlq` through the `<exchange>.dlx` exchange after `delivery_limit` attempts.
- Failures are returned with basic.reject (requeue) after a backoff (`shared.delivery_policy`):
  on RabbitMQ 3.x and 4.x alike a reject counts toward the quorum queue's delivery limit (a nack
  does not on 4.x), and on the last attempt the consumer rejects without requeue itself, so the
  message dead-letters whichever server version enforces the limit.
- A handler that fails because a dependency is down (Postgres restarting, a socket refused) is
  retried in place, holding the unacked message, for up to `outage_retry_s`: an outage is not
  the message's fault and must not use up its delivery attempts and dead-letter good work.
- Publishing always goes through the outbox relay (`shared.outbox`): persistent, confirmed,
  mandatory, with unroutable returns raised as errors.
"""
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from faststream import AckPolicy
from faststream.rabbit import (Channel, ExchangeType, QueueType, RabbitBroker, RabbitExchange, RabbitQueue,
                              RabbitRouter)
from pydantic import BaseModel
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_before_delay, wait_exponential

from shared import metrics
from shared.db import is_outage
from shared.delivery_policy import DeliveryPolicy, Subscription

log = logging.getLogger(__name__)


def make_broker(url: str, *, prefetch: int = 32) -> RabbitBroker:
    channel = Channel(publisher_confirms=True, on_return_raises=True, prefetch_count=prefetch)
    return RabbitBroker(url, default_channel=channel, logger=None)


def events_exchange(name: str) -> RabbitExchange:
    return RabbitExchange(name, type=ExchangeType.TOPIC, durable=True)


def dead_letter_exchange(events: str) -> RabbitExchange:
    return RabbitExchange(f"{events}.dlx", type=ExchangeType.DIRECT, durable=True)


def consumer_queue(*, service: str, message_type: str, events: str, delivery_limit: int) -> RabbitQueue:
    name = f"{service}.{message_type}"
    return RabbitQueue(
        name,
        durable=True,
        queue_type=QueueType.QUORUM,
        routing_key=message_type,
        arguments={
            "x-dead-letter-exchange": f"{events}.dlx",
            "x-dead-letter-routing-key": name,
            "x-delivery-limit": delivery_limit,
        },
    )


def dead_letter_queue(queue_name: str) -> RabbitQueue:
    return RabbitQueue(f"{queue_name}.dlq", durable=True, queue_type=QueueType.QUORUM, routing_key=queue_name)


async def declare_dead_letters(broker: RabbitBroker, *, events: str, queue_names: list[str]) -> None:
    dlx = await broker.declare_exchange(dead_letter_exchange(events))
    for name in queue_names:
        dlq = await broker.declare_queue(dead_letter_queue(name))
        await dlq.bind(dlx, routing_key=name)


class Consumers:
    """The explicit list of which handler takes which message, for one service: each `on(...)`
    is a typed FastStream subscriber on a queue of its own, with the `DeliveryPolicy`
    middleware and retries in place through a dependency's outage."""

    def __init__(self, broker: RabbitBroker, *, service: str, events: str, delivery_limit: int,
                 outage_retry_s: float = 300.0, user: str | None = None):
        self.broker = broker
        self.user = user  # this service's RabbitMQ user
        self.outage_retry_s = outage_retry_s
        self.service = service
        self.events = events
        self.delivery_limit = delivery_limit
        self.queue_names: list[str] = []

    def on(self, model: type[BaseModel], handler: Callable[[Any], Awaitable[None]]) -> None:
        message_type = model.TYPE  # type: ignore[attr-defined]
        queue = consumer_queue(service=self.service, message_type=message_type, events=self.events,
                               delivery_limit=self.delivery_limit)
        self.queue_names.append(queue.name)
        subscription = Subscription(queue=queue.name, model=model, delivery_limit=self.delivery_limit,
                                    own_user=self.user,
                                    expected_publisher=expected_publisher(self.user, self.service, message_type))

        async def consume(event: model) -> None:  # type: ignore[valid-type]
            await self._handle_through_outages(handler, event, queue.name)

        consume.__name__ = f"consume_{queue.name.replace('.', '_')}"
        # A router per queue: FastStream's middlewares are per broker or router, and the policy
        # needs this queue's own limits and publisher.
        router = RabbitRouter(middlewares=(partial(DeliveryPolicy, subscription=subscription),))
        router.subscriber(queue, events_exchange(self.events), ack_policy=AckPolicy.MANUAL, no_reply=True,
                          title=queue.name, description=f"{self.service} takes `{message_type}` "
                          f"(quorum queue, dead-lettered to `{queue.name}.dlq`)")(consume)
        if self.broker is not None:
            self.broker.include_router(router)

    async def _handle_through_outages(self, handler, event: BaseModel, qname: str) -> None:
        """Retry after 0.2, 0.4, … 5 s while a dependency is down, for up to `outage_retry_s`."""
        def retrying(state: RetryCallState) -> None:
            log.warning("dependency unavailable, retrying in place", extra={
                "queue": qname, "error": repr(state.outcome.exception())[:300], "retry_in_s": state.upcoming_sleep})
            metrics.MESSAGES_HANDLED.labels(qname, "outage_retry").inc()

        await AsyncRetrying(retry=retry_if_exception(is_outage), wait=wait_exponential(multiplier=0.2, max=5.0),
                            stop=stop_before_delay(self.outage_retry_s), reraise=True,
                            before_sleep=retrying)(handler, event)

    async def declare_dead_letters(self) -> None:
        await declare_dead_letters(self.broker, events=self.events, queue_names=self.queue_names)


# --- users and permissions: each service its own RabbitMQ user ----------------------------------
# A service may declare, bind and consume only queues named `<service>.…`, publish to the events
# exchange only routing keys `<service>.…` (topic permissions), and bind its queues to any event.
# Request/reply and dead-letter replay need the default exchange, which RabbitMQ authorises per
# exchange only and which reaches any queue by name: so consumers also check each event's
# user_id (validated by RabbitMQ) against the service its type is named after (`Consumers`).
SERVICES = ("billing", "provisioner", "sessions", "warm_pool")


def user_for(service: str, *, prefix: str = "browserfleet-") -> str:
    return f"{prefix}{service}"


def expected_publisher(own_user: str | None, own_service: str, message_type: str) -> str | None:
    """Who alone may have sent `message_type` where each service has its own user (named
    `<prefix><service>`, ours included): the user of the service the type is named after.
    RabbitMQ refuses a publish whose user_id property is not the publisher's own user, so this
    holds whatever exchange the message came through (the default one takes any queue name).
    None where the services share a user: nothing to check."""
    if not own_user or not own_user.endswith(own_service) or own_user == own_service:
        return None
    return own_user[: -len(own_service)] + message_type.split(".", 1)[0]


def user_password(key: str, user: str) -> str:
    """A service user's password, derived so that whoever holds `key` (make run, the test
    harness, an operator's provisioning job) gives the service the same one on every start."""
    digest = hmac.new(key.encode(), f"browserfleet broker user {user}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def permissions(service: str, *, events: str) -> dict:
    """configure/write/read (resource-name regexes) and the topic permissions on the events exchange."""
    own, ex = rf"{re.escape(service)}\..*", re.escape(events)
    return {
        "configure": rf"^({ex}|{ex}\.dlx|{own})$",
        # The dead-letter exchange: RabbitMQ asks write on it of whoever declares a queue using it.
        "write": rf"^({ex}|{ex}\.dlx|{own}|amq\.default)$",
        "read": rf"^({ex}|{ex}\.dlx|{own}|amq\.rabbitmq\.reply-to)$",
        "topic": {"exchange": events, "write": rf"^{re.escape(service)}\.", "read": ".*"},
    }


def _password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(*, vhost: str, events: str, key: str | None = None, passwords: dict[str, str] | None = None,
                prefix: str = "browserfleet-", services: tuple[str, ...] = SERVICES) -> dict:
    """Users and permissions as RabbitMQ definitions: for `rabbitmqctl import_definitions`, the
    management API's POST /api/definitions or `load_definitions`. Passwords appear only hashed:
    `passwords[service]`, else derived from `key`."""
    users, perms, topics = [], [], []
    for service in services:
        user = user_for(service, prefix=prefix)
        grant = permissions(service, events=events)
        password = (passwords or {}).get(service) or user_password(key, user)
        users.append({"name": user, "password_hash": _password_hash(password),
                      "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []})
        perms.append({"user": user, "vhost": vhost, **{k: grant[k] for k in ("configure", "write", "read")}})
        topics.append({"user": user, "vhost": vhost, **grant["topic"]})
    return {"users": users, "permissions": perms, "topic_permissions": topics}


def service_url(url: str, *, service: str, key: str | None = None, password: str | None = None,
                prefix: str = "browserfleet-") -> str:
    """`url` (any user) with the service's own user and password (given, else derived from `key`)."""
    user = user_for(service, prefix=prefix)
    parts = urlsplit(url)
    password = password or user_password(key, user)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def vhost_of(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def import_definitions(defs: dict, *, timeout: float = 120) -> None:
    """Load `defs` into the local node with rabbitmqctl (read from stdin: nothing on a command line)."""
    subprocess.run(["rabbitmqctl", "-q", "import_definitions"], input=json.dumps(defs), text=True,
                   check=True, capture_output=True, timeout=timeout)


def post_definitions(defs: dict, *, management_url: str, timeout: float = 30) -> None:
    """Load `defs` through the management API (e.g. Compose, whose broker image has it)."""
    import httpx
    parts = urlsplit(management_url)
    auth = (unquote(parts.username or ""), unquote(parts.password or ""))
    base = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"), "", ""))
    httpx.post(f"{base}/api/definitions", json=defs, auth=auth, timeout=timeout).raise_for_status()


def delete_users(users: list[str], *, timeout: float = 120) -> None:
    procs = [subprocess.Popen(["rabbitmqctl", "-q", "delete_user", u], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for u in users]
    for proc in procs:
        proc.wait(timeout)


def _main(argv: list[str]) -> int:
    """python -m shared.broker users [--management URL]: create the services' users on the vhost
    of RABBITMQ_URL, passwords from <SERVICE>_RABBITMQ_PASSWORD (else derived from
    RABBITMQ_USER_SECRET); prints nothing secret."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m shared.broker")
    parser.add_argument("command", choices=["users"])
    parser.add_argument("--management", default=os.environ.get("RABBITMQ_MANAGEMENT_URL"),
                        help="management API URL with an administrator's credentials (RABBITMQ_MANAGEMENT_URL); "
                             "default: rabbitmqctl on this host")
    parser.add_argument("--prefix", default=os.environ.get("RABBITMQ_USER_PREFIX", "browserfleet-"))
    args = parser.parse_args(argv)
    key = os.environ.get("RABBITMQ_USER_SECRET", "")
    passwords = {s: os.environ.get(f"{s.upper()}_RABBITMQ_PASSWORD", "") for s in SERVICES}
    for service, password in passwords.items():
        if len(password or key) < 16:
            sys.exit(f"{service.upper()}_RABBITMQ_PASSWORD (or RABBITMQ_USER_SECRET) is not set or shorter than 16")
    url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    defs = definitions(vhost=vhost_of(url), events=os.environ.get("EVENTS_EXCHANGE", "browserfleet.events"),
                       key=key, passwords=passwords, prefix=args.prefix)
    if args.management:
        post_definitions(defs, management_url=args.management)
    else:
        import_definitions(defs)
    print("broker users: " + ", ".join(u["name"] for u in defs["users"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
