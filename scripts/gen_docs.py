"""Write the generated docs: docs/openapi/{sessions,billing}.json, docs/asyncapi.yaml and the
metrics table in docs/OPERATIONS.md.

    .venv/bin/python scripts/gen_docs.py      (or `make docs`)

The FastAPI apps are built with stub ports (no database, broker or Stripe): only their routes
and models are read. tests/unit/test_docs_fresh.py fails when the committed files are stale.
"""
import inspect
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml
from pydantic.json_schema import models_json_schema

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared import dlq, messages, outbox  # noqa: E402

DOCS = ROOT / "docs"
SERVICES = ("billing", "provisioner", "sessions", "warm_pool")


async def _ready() -> dict[str, bool]:
    return {}


def _with_dlq(app):
    """The dead-letter and parked-outbox admin routes `shared.service.serve` adds to every app."""
    app.include_router(dlq.router(dlq.DeadLetters("amqp://unused/", []), "unused"))
    app.include_router(outbox.router(None, "unused"))
    return app


def sessions_app():
    from services.sessions import http
    from services.sessions.api_keys import ApiKeys
    from services.sessions.relays import Relays
    from services.sessions.settings import SessionsSettings

    settings = SessionsSettings(_env_file=None)
    return _with_dlq(http.create_app(ready=_ready, uow=None, settings=settings, lease=None,
                                     api_keys=ApiKeys(None, ttl_s=1), relays=Relays()))


def billing_app():
    from services.billing import http
    from services.billing.settings import BillingSettings
    from shared.plans import load_plans

    settings = BillingSettings(_env_file=None)
    return _with_dlq(http.create_app(settings=settings, uow=None, plans=load_plans(settings.plans_file),
                                     worker=None, stripe_api=None, credentials=None, ready=_ready))


def openapi_json(app) -> str:
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


EVENTS_EXCHANGE = "browserfleet.events"


def _register_stubbed(register, runtime) -> None:
    """Call a service's `register(runtime, *, ports…)` with a stand-in for every port: registering
    subscribers captures the ports and calls none of them."""
    from unittest.mock import Mock
    ports = {name: Mock(name=name) for name, p in inspect.signature(register).parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty}
    register(runtime, **ports)


def service_runtime(service: str) -> SimpleNamespace:
    """The service's broker (and consumers) with everything its entrypoint subscribes (the same
    register functions), and a documented publisher for each event type named after the service
    (the only user RabbitMQ and the consumers accept it from; sent through the outbox relay)."""
    import importlib

    from shared.broker import Consumers, events_exchange, make_broker
    settings_class = {"billing": "billing.settings.BillingSettings",
                      "provisioner": "provisioner.settings.ProvisionerSettings",
                      "sessions": "sessions.settings.SessionsSettings",
                      "warm_pool": "warm_pool.settings.WarmPoolSettings"}[service]
    module, _, name = f"services.{settings_class}".rpartition(".")
    settings = getattr(importlib.import_module(module), name)(_env_file=None)
    broker = make_broker("amqp://rabbitmq:5672/")
    runtime = SimpleNamespace(name=service, settings=settings, pool=None, broker=broker, stopping=None,
                              consumers=Consumers(broker, service=service, events=EVENTS_EXCHANGE,
                                                  delivery_limit=settings.delivery_limit),
                              background=lambda fn: None, every=lambda *a, **kw: None, on_stop=lambda fn: None,
                              server_options={})
    _register_stubbed(importlib.import_module(f"services.{service}.subscribers").register, runtime)
    if service == "sessions":
        _register_stubbed(importlib.import_module("services.sessions.credentials_rpc").register, runtime)
    for cls in messages.EVENT_TYPES.values():
        if cls.TYPE.split(".", 1)[0] == service:
            broker.publisher(routing_key=cls.TYPE, exchange=events_exchange(EVENTS_EXCHANGE), schema=cls,
                             title=cls.TYPE, description=f"{service} publishes it through its outbox "
                             "(persistent, confirmed, mandatory)")
    return runtime


def asyncapi() -> dict:
    """FastStream's AsyncAPI 3.0 document of the four services' brokers."""
    from faststream.specification import AsyncAPI
    spec = AsyncAPI(*(service_runtime(s).broker for s in SERVICES), title="browserfleet messages", version="1",
                    description="Domain events between the four services (routing key = the message `type` on "
                                f"the `{EVENTS_EXCHANGE}` topic exchange; published through each service's "
                                "outbox, consumed idempotently from quorum queues) and the request/reply RPCs. "
                                "Generated by FastStream from the services' subscribers (scripts/gen_docs.py).")
    doc = json.loads(spec.to_specification().to_json())
    # FastStream keeps publishers in a set: sort, so the document is the same on every run.
    for part in (doc["channels"], doc["operations"], doc["components"]["messages"], doc["components"]["schemas"]):
        items = sorted(part.items())
        part.clear()
        part.update(items)
    return doc


def asyncapi_yaml() -> str:
    text = yaml.safe_dump(asyncapi(), sort_keys=False, width=110)
    # Each sessions replica names its relay-ends queue at random.
    return re.sub(r"sessions\.relay-ends\.[0-9a-f]{12}", "sessions.relay-ends.<replica>", text)


def metrics_table() -> str:
    """The metrics every service exports, read from the registry's collectors in each metrics module."""
    import importlib

    from prometheus_client.metrics import MetricWrapperBase
    rows = ["| metric | exported by | meaning |", "|---|---|---|"]
    for owner in ("shared", *SERVICES):
        module = importlib.import_module("shared.metrics" if owner == "shared" else f"services.{owner}.metrics")
        for metric in sorted((m for m in vars(module).values() if isinstance(m, MetricWrapperBase)),
                             key=lambda m: m._name):
            name = metric._name + ("_total" if metric._type == "counter" else "")
            labels = "{" + ",".join(metric._labelnames) + "}" if metric._labelnames else ""
            rows.append(f"| `{name}{labels}` | {'every service' if owner == 'shared' else owner} "
                        f"| {metric._documentation} |")
    return "\n".join(rows) + "\n"


METRICS_BEGIN, METRICS_END = "<!-- metrics table: generated by scripts/gen_docs.py -->", "<!-- end of metrics table -->"


def operations_md() -> str:
    """docs/OPERATIONS.md with its metrics table regenerated between the markers."""
    text = (DOCS / "OPERATIONS.md").read_text()
    head, _, rest = text.partition(METRICS_BEGIN)
    _, _, tail = rest.partition(METRICS_END)
    return f"{head}{METRICS_BEGIN}\n{metrics_table()}{METRICS_END}{tail}"


def generated() -> dict[Path, str]:
    return {DOCS / "openapi" / "sessions.json": openapi_json(sessions_app()),
            DOCS / "openapi" / "billing.json": openapi_json(billing_app()),
            DOCS / "asyncapi.yaml": asyncapi_yaml(),
            DOCS / "OPERATIONS.md": operations_md()}


def main() -> None:
    for path, text in generated().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
