"""`Browserfleet` and `AsyncBrowserfleet`: one settings object, one httpx client, the retry loop."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Mapping, overload

import httpx

from browserfleet._base import (DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, Call, Model, Settings, Timeout, parse,
                                retry_delay)
from browserfleet._errors import APIConnectionError, APITimeoutError, status_error
from browserfleet.resources.profiles import AsyncProfiles, Profiles
from browserfleet.resources.sessions import AsyncSessions, Sessions
from browserfleet.resources.usage import AsyncUsageResource, UsageResource

_NOT_GIVEN: Any = object()


def _transport_error(exc: httpx.TransportError, request: httpx.Request) -> APIConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(request=request)
    return APIConnectionError(f"could not reach the browserfleet API: {type(exc).__name__}", request=request)


class _Common:
    _settings: Settings

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    @property
    def max_retries(self) -> int:
        return self._settings.max_retries

    @property
    def timeout(self) -> httpx.Timeout:
        return self._settings.timeout

    def __repr__(self) -> str:  # never the API key
        return f"{type(self).__name__}(base_url={self.base_url!r}, max_retries={self.max_retries})"

    def _copy_settings(self, timeout: Timeout, max_retries: int) -> Settings:
        s = self._settings
        return Settings(api_key=s.api_key, base_url=s.base_url, default_headers=s.default_headers,
                        timeout=s.timeout if timeout is _NOT_GIVEN else timeout,
                        max_retries=s.max_retries if max_retries is _NOT_GIVEN else max_retries)


class Browserfleet(_Common):
    """The synchronous client: `Browserfleet(api_key=..., base_url=...)`, or both from the environment."""

    def __init__(self, *, api_key: str | None = None, base_url: str | None = None,
                 timeout: Timeout = DEFAULT_TIMEOUT, max_retries: int = DEFAULT_MAX_RETRIES,
                 default_headers: Mapping[str, str] | None = None, http_client: httpx.Client | None = None,
                 _sleep: Callable[[float], None] = time.sleep, _settings: Settings | None = None) -> None:
        self._settings = _settings or Settings(api_key=api_key, base_url=base_url, timeout=timeout,
                                               max_retries=max_retries, default_headers=default_headers)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client()
        self._sleep = _sleep
        self.sessions = Sessions(self)
        self.usage = UsageResource(self)
        self.profiles = Profiles(self)

    def with_options(self, *, timeout: Timeout = _NOT_GIVEN, max_retries: int = _NOT_GIVEN) -> "Browserfleet":
        """A client sharing this one's connections, with other timeouts or retries."""
        return Browserfleet(http_client=self._http, _sleep=self._sleep,
                            _settings=self._copy_settings(timeout, max_retries))

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> "Browserfleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            request = self._settings.build(self._http, call)
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                delay = retry_delay(call, attempt, self._settings.max_retries, error=exc)
                if delay is None:
                    raise _transport_error(exc, request) from exc
            else:
                if not response.is_error:
                    return response
                delay = retry_delay(call, attempt, self._settings.max_retries, response=response)
                if delay is None:
                    raise status_error(response)
                response.close()
            self._sleep(delay)
            attempt += 1

    @overload
    def _request(self, call: Call, model: type[Model]) -> Model: ...
    @overload
    def _request(self, call: Call, model: None) -> httpx.Response: ...

    def _request(self, call: Call, model: type[Model] | None) -> Model | httpx.Response:
        response = self._send(call)
        return response if model is None else parse(response, model)


class AsyncBrowserfleet(_Common):
    """The asyncio client: every call awaitable; `async with AsyncBrowserfleet() as bf:` closes it."""

    def __init__(self, *, api_key: str | None = None, base_url: str | None = None,
                 timeout: Timeout = DEFAULT_TIMEOUT, max_retries: int = DEFAULT_MAX_RETRIES,
                 default_headers: Mapping[str, str] | None = None, http_client: httpx.AsyncClient | None = None,
                 _sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 _settings: Settings | None = None) -> None:
        self._settings = _settings or Settings(api_key=api_key, base_url=base_url, timeout=timeout,
                                               max_retries=max_retries, default_headers=default_headers)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient()
        self._sleep = _sleep
        self.sessions = AsyncSessions(self)
        self.usage = AsyncUsageResource(self)
        self.profiles = AsyncProfiles(self)

    def with_options(self, *, timeout: Timeout = _NOT_GIVEN,
                     max_retries: int = _NOT_GIVEN) -> "AsyncBrowserfleet":
        return AsyncBrowserfleet(http_client=self._http, _sleep=self._sleep,
                                 _settings=self._copy_settings(timeout, max_retries))

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> "AsyncBrowserfleet":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            request = self._settings.build(self._http, call)
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                delay = retry_delay(call, attempt, self._settings.max_retries, error=exc)
                if delay is None:
                    raise _transport_error(exc, request) from exc
            else:
                if not response.is_error:
                    return response
                delay = retry_delay(call, attempt, self._settings.max_retries, response=response)
                if delay is None:
                    raise status_error(response)
                await response.aclose()
            await self._sleep(delay)
            attempt += 1

    @overload
    async def _request(self, call: Call, model: type[Model]) -> Model: ...
    @overload
    async def _request(self, call: Call, model: None) -> httpx.Response: ...

    async def _request(self, call: Call, model: type[Model] | None) -> Model | httpx.Response:
        response = await self._send(call)
        return response if model is None else parse(response, model)
