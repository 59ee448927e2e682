"""Write the generated API docs: docs/openapi/{sessions,billing}.json and docs/asyncapi.yaml.

    .venv/bin/python scripts/gen_docs.py      (or `make docs`)

The FastAPI apps are built with stub ports (no database, broker or Stripe): only their routes
and models are read. tests/unit/test_docs_fresh.py fails when the committed files are stale.
"""
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
# Who publishes each event (through its outbox); consumers are read from each subscribers.py.
PUBLISHERS = {"billing": ["PaymentVerified", "SubscriptionChanged"],
              "provisioner": ["TenantProvisioned", "TenantDeprovisioned"],
              "sessions": ["SessionStarted", "SessionCompleted"], "warm_pool": ["BrowserCrashed"]}
SERVICES = ("billing", "provisioner", "sessions", "warm_pool")


async def _ready() -> dict[str, bool]:
    return {}


def _with_dlq(app):
    """The dead-letter and parked-outbox admin routes `shared.service.serve` adds to every app."""
    app.include_router(dlq.router(dlq.DeadLetters("amqp://unused/", []), "unused"))
    app.include_router(outbox.router(None, "unused"))
    return app


def sessions_app():
    from services.sessions import handlers, http
    from services.sessions.gateway import Relays
    from services.sessions.settings import SessionsSettings

    settings = SessionsSettings(_env_file=None)
    runtime = SimpleNamespace(ready=_ready, pool=None)
    return _with_dlq(http.create_app(runtime=runtime, settings=settings, lease=None,
                                     api_keys=handlers.ApiKeys(None, ttl_s=1), relays=Relays()))


def billing_app():
    from services.billing import http
    from services.billing.settings import BillingSettings
    from shared.plans import load_plans

    settings = BillingSettings(_env_file=None)
    return _with_dlq(http.create_app(settings=settings, uow=None, plans=load_plans(settings.plans_file),
                                     worker=None, stripe_api=None, credentials=None, ready=_ready))


def openapi_json(app) -> str:
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


def _consumers() -> dict[str, list[str]]:
    found = {}
    for service in SERVICES:
        source = (ROOT / "services" / service / "subscribers.py").read_text()
        found[service] = re.findall(r"consumers\.on\(\s*(\w+)", source)
    return found


def asyncapi() -> dict:
    events = {cls.__name__: cls for cls in messages.EVENT_TYPES.values()}
    rpcs = [messages.LeaseRequest, messages.LeaseReply, messages.CredentialRequest, messages.CredentialReply]
    models = [*events.values(), *rpcs]
    top, defs = models_json_schema([(m, "serialization") for m in models], ref_template="#/components/schemas/{model}")
    schemas = {**defs.get("$defs", {})}
    consumers = _consumers()
    publisher_of = {name: s for s, names in PUBLISHERS.items() for name in names}
    def trace_header() -> dict:
        return {"type": "object", "properties": {"trace_id": {
            "type": "string", "description": "Trace id of the request or message that caused this one"}}}
    doc_messages, channels, operations = {}, {}, {}
    for name, cls in events.items():
        doc_messages[name] = {"name": cls.TYPE, "title": name, "contentType": "application/json",
                              "headers": trace_header(), "payload": {"$ref": f"#/components/schemas/{name}"},
                              "bindings": {"amqp": {"messageType": cls.TYPE, "deliveryMode": 2}}}
        channels[cls.TYPE] = {
            "address": cls.TYPE,
            "description": f"Routing key `{cls.TYPE}` on the `browserfleet.events` topic exchange.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": {"amqp": {"is": "routingKey", "exchange": {
                "name": "browserfleet.events", "type": "topic", "durable": True, "autoDelete": False}}}}
        operations[f"publish{name}"] = {
            "action": "send", "channel": {"$ref": f"#/channels/{cls.TYPE}"},
            "summary": f"{publisher_of.get(name, '?')} publishes it through its outbox",
            "messages": [{"$ref": f"#/channels/{cls.TYPE}/messages/{name}"}]}
        for service in SERVICES:
            if name in consumers[service]:
                operations[f"{service}Receives{name}"] = {
                    "action": "receive", "channel": {"$ref": f"#/channels/{cls.TYPE}"},
                    "summary": f"{service} consumes it from quorum queue `{service}.{cls.TYPE}` "
                               f"(dead-lettered to `{service}.{cls.TYPE}.dlq`)",
                    "messages": [{"$ref": f"#/channels/{cls.TYPE}/messages/{name}"}]}
    for model in rpcs:
        doc_messages[model.__name__] = {"name": model.__name__, "contentType": "application/json",
                                        "payload": {"$ref": f"#/components/schemas/{model.__name__}"}}
    channels["lease"] = {
        "address": messages.LEASE_QUEUE,
        "description": "Lease RPC: sessions asks warm_pool for a browser (default exchange, direct reply-to).",
        "messages": {"LeaseRequest": {"$ref": "#/components/messages/LeaseRequest"}},
        "bindings": {"amqp": {"is": "queue", "queue": {"name": messages.LEASE_QUEUE, "durable": True,
                                                       "exclusive": False, "autoDelete": False}}}}
    channels["leaseReply"] = {
        "address": None, "description": "The caller's `amq.rabbitmq.reply-to` pseudo-queue.",
        "messages": {"LeaseReply": {"$ref": "#/components/messages/LeaseReply"}}}
    operations["leaseBrowser"] = {
        "action": "receive", "channel": {"$ref": "#/channels/lease"},
        "summary": "warm_pool answers a lease request with a browser's CDP URL or an error",
        "messages": [{"$ref": "#/channels/lease/messages/LeaseRequest"}],
        "reply": {"address": {"location": "$message.header#/reply_to"}, "channel": {"$ref": "#/channels/leaseReply"},
                  "messages": [{"$ref": "#/channels/leaseReply/messages/LeaseReply"}]}}
    channels["credentials"] = {
        "address": messages.CREDENTIALS_QUEUE,
        "description": "Credential RPC: billing asks sessions whose API key or dashboard sign-in a plan change "
                       "carries (default exchange, direct reply-to; transient messages, 10 s TTL).",
        "messages": {"CredentialRequest": {"$ref": "#/components/messages/CredentialRequest"}},
        "bindings": {"amqp": {"is": "queue", "queue": {"name": messages.CREDENTIALS_QUEUE, "durable": True,
                                                       "exclusive": False, "autoDelete": False}}}}
    channels["credentialsReply"] = {
        "address": None, "description": "The caller's `amq.rabbitmq.reply-to` pseudo-queue.",
        "messages": {"CredentialReply": {"$ref": "#/components/messages/CredentialReply"}}}
    operations["verifyCredential"] = {
        "action": "receive", "channel": {"$ref": "#/channels/credentials"},
        "summary": "sessions answers with the credential's tenant_id, or error `unknown`",
        "messages": [{"$ref": "#/channels/credentials/messages/CredentialRequest"}],
        "reply": {"address": {"location": "$message.header#/reply_to"},
                  "channel": {"$ref": "#/channels/credentialsReply"},
                  "messages": [{"$ref": "#/channels/credentialsReply/messages/CredentialReply"}]}}
    for model in models:
        schemas[model.__name__] = top[(model, "serialization")] if "$ref" not in top[(model, "serialization")] \
            else defs["$defs"][model.__name__]
    for name, cls in events.items():
        schemas[name]["properties"]["type"] = {"const": cls.TYPE, "title": "Type", "type": "string"}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "browserfleet messages", "version": "1",
                 "description": "Domain events between the four services (routing key = message `type`; "
                                "published through each service's outbox, consumed idempotently) and the "
                                "lease and credential request/replies. Generated by scripts/gen_docs.py from shared/messages.py."},
        "defaultContentType": "application/json",
        "servers": {"rabbitmq": {"host": "rabbitmq:5672", "protocol": "amqp", "protocolVersion": "0-9-1"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": doc_messages, "schemas": dict(sorted(schemas.items()))},
    }


def asyncapi_yaml() -> str:
    return yaml.safe_dump(asyncapi(), sort_keys=False, width=110)


def generated() -> dict[Path, str]:
    return {DOCS / "openapi" / "sessions.json": openapi_json(sessions_app()),
            DOCS / "openapi" / "billing.json": openapi_json(billing_app()),
            DOCS / "asyncapi.yaml": asyncapi_yaml()}


def main() -> None:
    for path, text in generated().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
