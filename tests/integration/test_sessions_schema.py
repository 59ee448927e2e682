"""schemathesis against the served OpenAPI document: no 5xx, and every response matches its schema."""
import asyncio

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from tests.integration.sessions_support import ADMIN

OWN = ("/v1/sessions", "/v1/usage", "/v1/admin/tenants", "/v1/admin/api-keys")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _fuzz(url: str, auth: dict) -> list[str]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith(OWN):  # shared routes (DLQ admin) are not this service's
            continue
        headers = ADMIN if "/admin/" in operation.path else auth

        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            case.call_and_validate(base_url=url, headers=headers, checks=CHECKS)

        run()
        tested.append(f"{operation.method.upper()} {operation.path}")
    return tested


async def test_api_conforms_to_its_openapi_document(platform):
    _, auth = await platform.tenant(credits=100_000, max_concurrent=100_000)
    platform.lease.mode = "fake"
    try:
        tested = await asyncio.to_thread(_fuzz, platform.url, auth)
    finally:
        platform.lease.mode = "chromium"
    assert "POST /v1/sessions" in tested and "GET /v1/usage" in tested
    usage = (await platform.http.get("/v1/usage", headers=auth)).json()
    assert usage["credits_used"] > 0  # valid creates went through, not only rejections
