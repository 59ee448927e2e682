"""The committed API docs under docs/ match what the code generates now."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_docs_are_fresh():
    stale = [str(path.relative_to(ROOT)) for path, text in load_generator().generated().items()
             if not path.exists() or path.read_text() != text]
    assert not stale, f"stale generated docs {stale}: run `make docs` (.venv/bin/python scripts/gen_docs.py)"


def test_docs_cover_every_message_and_the_admin_api():
    import json

    import yaml

    from shared.messages import EVENT_TYPES, LEASE_QUEUE

    asyncapi = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    assert asyncapi["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in asyncapi["channels"].values()}
    assert set(EVENT_TYPES) | {LEASE_QUEUE} <= addresses
    operations = asyncapi["operations"]
    # Each event is sent by the service it is named after, and received on every consumer queue.
    for message_type in EVENT_TYPES:
        assert operations[message_type]["action"] == "send"
    generator = load_generator()
    queues = [q for service in generator.SERVICES for q in generator.service_runtime(service).consumers.queue_names]
    assert len(queues) >= 14
    for queue in queues:
        assert operations[queue]["action"] == "receive", queue
    assert operations["billing.sessions.session_started"]["action"] == "receive"
    assert operations["warm_pool.sessions.session_completed"]["action"] == "receive"
    sessions = json.loads((ROOT / "docs" / "openapi" / "sessions.json").read_text())
    assert {"/v1/sessions", "/v1/admin/tenants", "/v1/admin/sessions/{session_id}/end",
            "/v1/admin/dlq"} <= set(sessions["paths"])
    billing = json.loads((ROOT / "docs" / "openapi" / "billing.json").read_text())
    assert "/webhooks/stripe" in billing["paths"]
