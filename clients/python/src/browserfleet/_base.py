"""What the sync and the async client share: settings, request building, the retry rules, parsing."""
from __future__ import annotations

import os
import platform
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar, Union
from urllib.parse import quote

import httpx
import pydantic

from browserfleet._errors import APIError, BrowserfleetError, parse_retry_after
from browserfleet._version import __version__

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEFAULT_MAX_RETRIES = 2
# A server that asks for a longer wait than this gets its error raised instead of a silent stall.
MAX_RETRY_AFTER_S = 60.0
USER_AGENT = f"browserfleet-python/{__version__} (python {platform.python_version()}; httpx {httpx.__version__})"

Model = TypeVar("Model", bound=pydantic.BaseModel)
Timeout = Union[float, httpx.Timeout, None]

# Statuses where the server did nothing and says so, for calls that must not run twice (creates).
CREATE_RETRY_STATUSES = frozenset({429, 503})
# Statuses worth another try for calls that are safe to repeat (reads, end, delete).
SAFE_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class APIResponseValidationError(APIError):
    """A 2xx answer whose body is not what the API's schema says."""

    def __init__(self, response: httpx.Response, detail: str) -> None:
        super().__init__(f"unexpected response body from {response.request.method} {response.request.url.path}: "
                         f"{detail}", request=response.request)
        self.response = response
        self.status_code = response.status_code


@dataclass(frozen=True)
class Call:
    """One API call: where it goes and how it may be retried."""
    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    # Repeating it has the effect of doing it once (GET, end, DELETE): any 5xx/429 or broken connection.
    safe: bool = False
    # Only for creates: sent on every attempt, so the server answers a repeat with the first result.
    idempotency_key: str | None = None
    # The server honours the key (sessions.create), so a timed-out attempt may be repeated too.
    replayable: bool = False
    extra_headers: Mapping[str, str] = field(default_factory=dict)


def path(template: str, *parts: str | uuid.UUID) -> str:
    """A path with each id quoted as one segment, so an id can never reach another route."""
    texts = [str(p) if isinstance(p, uuid.UUID) else p for p in parts]
    for text in texts:
        if not isinstance(text, str) or not text or text in (".", ".."):
            raise ValueError(f"invalid path parameter: {text!r}")
    return template.format(*(quote(t, safe="") for t in texts))


def new_idempotency_key() -> str:
    return f"bf-{uuid.uuid4()}"


class Settings:
    def __init__(self, *, api_key: str | None, base_url: str | None, timeout: Timeout, max_retries: int,
                 default_headers: Mapping[str, str] | None) -> None:
        api_key = api_key if api_key is not None else os.environ.get("BROWSERFLEET_API_KEY")
        if not api_key:
            raise BrowserfleetError("no API key: pass api_key=... or set BROWSERFLEET_API_KEY")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError("max_retries must be an integer >= 0")
        self.api_key = api_key
        self.base_url = (base_url or os.environ.get("BROWSERFLEET_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.max_retries = max_retries
        self.default_headers = dict(default_headers or {})

    def build(self, http: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
        headers = httpx.Headers({"accept": "application/json", "user-agent": USER_AGENT})
        for extra in (self.default_headers, call.extra_headers):
            for name, value in extra.items():
                headers[name] = value  # case-insensitive: replaces, never duplicates
        headers["authorization"] = f"Bearer {self.api_key}"
        if call.idempotency_key:
            headers["idempotency-key"] = call.idempotency_key
        params = {k: v for k, v in (call.params or {}).items() if v is not None}
        return http.build_request(call.method, self.base_url + call.path, params=params or None, json=call.json,
                                  headers=headers, timeout=self.timeout)


def retry_delay(call: Call, attempt: int, max_retries: int, *, response: httpx.Response | None = None,
                error: httpx.TransportError | None = None) -> float | None:
    """Seconds to wait before attempt `attempt + 1`, or None to give up and raise."""
    if attempt >= max_retries:
        return None
    if response is not None:
        allowed = SAFE_RETRY_STATUSES if call.safe else CREATE_RETRY_STATUSES if call.idempotency_key else ()
        if response.status_code not in allowed:
            return None
        retry_after = parse_retry_after(response)
        if retry_after is not None:
            return retry_after if retry_after <= MAX_RETRY_AFTER_S else None
    elif error is not None:
        # A refused connection sent nothing; anything else may have reached the server.
        never_sent = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))
        if not (never_sent or call.safe or call.replayable):
            return None
    return min(0.5 * 2.0 ** attempt, 8.0) * (1 - 0.25 * random.random())


def parse(response: httpx.Response, model: type[Model]) -> Model:
    try:
        return model.model_validate(response.json())
    except ValueError as exc:  # invalid JSON, or pydantic.ValidationError
        raise APIResponseValidationError(response, str(exc).splitlines()[0]) from exc
