"""Exceptions: one class per HTTP status the API answers, each carrying the API's code and message."""
from __future__ import annotations

import email.utils
import time

import httpx


class BrowserfleetError(Exception):
    """Base of every exception this package raises."""


class APIError(BrowserfleetError):
    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


class APIConnectionError(APIError):
    """The server could not be reached, or the connection broke before an answer."""

    def __init__(self, message: str = "could not reach the browserfleet API", *,
                 request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)


class APITimeoutError(APIConnectionError):
    def __init__(self, *, request: httpx.Request | None = None) -> None:
        super().__init__("the request to the browserfleet API timed out", request=request)


class APIStatusError(APIError):
    """The API answered with a 4xx or 5xx status: `code` and `message` are the API's own."""

    def __init__(self, message: str, *, response: httpx.Response, code: str | None, body: object) -> None:
        super().__init__(message, request=response.request)
        self.response = response
        self.status_code = response.status_code
        self.code = code
        self.body = body
        self.request_id = response.headers.get("x-request-id")

    def __str__(self) -> str:
        return f"{self.status_code} {self.code or 'error'}: {self.message}"


class AuthenticationError(APIStatusError):
    pass


class InsufficientCreditsError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    pass


class UnprocessableEntityError(APIStatusError):
    pass


class PayloadTooLargeError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    def __init__(self, message: str, *, response: httpx.Response, code: str | None, body: object) -> None:
        super().__init__(message, response=response, code=code, body=body)
        self.retry_after = parse_retry_after(response)


class ServiceUnavailableError(APIStatusError):
    def __init__(self, message: str, *, response: httpx.Response, code: str | None, body: object) -> None:
        super().__init__(message, response=response, code=code, body=body)
        self.retry_after = parse_retry_after(response)


_BY_STATUS: dict[int, type[APIStatusError]] = {
    401: AuthenticationError, 402: InsufficientCreditsError, 403: PermissionDeniedError, 404: NotFoundError,
    409: ConflictError, 413: PayloadTooLargeError, 422: UnprocessableEntityError, 429: RateLimitError,
    503: ServiceUnavailableError,
}


def status_error(response: httpx.Response) -> APIStatusError:
    """The exception for an error answer, from its `{"error": {"code", "message"}}` body when it has one."""
    try:
        body: object = response.json()
    except ValueError:
        body = response.text
    code, message = None, None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code, message = body["error"].get("code"), body["error"].get("message")
    if not isinstance(message, str) or not message:
        text = body if isinstance(body, str) and body else response.reason_phrase
        message = str(text)[:500] or f"HTTP {response.status_code}"
    cls = _BY_STATUS.get(response.status_code, APIStatusError)
    return cls(message, response=response, code=code if isinstance(code, str) else None, body=body)


def parse_retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait, from `Retry-After` as delta-seconds or an HTTP date; None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(seconds, 0.0) if seconds == seconds else None  # NaN is unreadable
