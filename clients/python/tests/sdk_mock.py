"""A scripted API: each request takes the next scripted answer; every request is kept for asserting."""
from __future__ import annotations

import json
from typing import Any, Callable, Union

import httpx

import browserfleet

BASE_URL = "http://api.test"
Answer = Union[httpx.Response, Exception, Callable[[httpx.Request], httpx.Response]]


def session_json(**overrides: Any) -> dict:
    body = {"id": "6f1c2f0e-8d7a-4c1b-9f0e-2a3b4c5d6e7f", "status": "running", "browser": "chromium",
            "warm": True, "keep_alive": False, "timeout_s": 300, "idle_timeout_s": 60,
            "created_at": "2026-12-01T09:00:00Z", "started_at": "2026-12-01T09:00:00.050000Z",
            "expires_at": "2026-12-01T09:05:00Z", "ended_at": None, "duration_ms": None, "cost": None,
            "end_reason": None}
    return {**body, **overrides}


def created_json(**overrides: Any) -> dict:
    return session_json(cdp_url="ws://api.test/v1/sessions/x/cdp?token=t", remaining_credits=4999, **overrides)


def error(status: int, code: str, message: str = "refused", headers: dict | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


def ok(body: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body)


class Server:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def answer(self, *answers: Answer) -> "Server":
        self.answers.extend(answers)
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise type(answer)(str(answer), request=request)
        return answer(request) if callable(answer) else answer

    def body(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content or b"null")

    def client(self, **options: Any) -> browserfleet.Browserfleet:
        options.setdefault("api_key", "bf_test_key")
        options.setdefault("base_url", BASE_URL)
        return browserfleet.Browserfleet(http_client=httpx.Client(transport=httpx.MockTransport(self)),
                                         _sleep=self.sleeps.append, **options)

    def async_client(self, **options: Any) -> browserfleet.AsyncBrowserfleet:
        options.setdefault("api_key", "bf_test_key")
        options.setdefault("base_url", BASE_URL)

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
        return browserfleet.AsyncBrowserfleet(http_client=httpx.AsyncClient(transport=httpx.MockTransport(self)),
                                              _sleep=sleep, **options)
