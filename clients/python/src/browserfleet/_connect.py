"""The Playwright helper: create a session, connect over CDP, end the session whatever happens."""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.async_api import Browser as AsyncBrowser
    from playwright.sync_api import Browser

    from browserfleet._models import SessionCreated
    from browserfleet.resources.sessions import AsyncSessions, Sessions


def _end_failed(exc: BaseException) -> None:
    # Raised from inside another exception's unwinding it would hide the user's own error; the
    # session still ends on its own at its timeout.
    warnings.warn(f"browserfleet: could not end the session: {exc}", RuntimeWarning, stacklevel=3)


class SessionConnection:
    """Context manager from `Sessions.connect`; `.session` is the created session once entered."""

    def __init__(self, sessions: "Sessions", playwright: Any, create_options: dict[str, Any]) -> None:
        self._sessions, self._playwright, self._options = sessions, playwright, create_options
        self.session: SessionCreated | None = None
        self.browser: Browser | None = None

    def __enter__(self) -> "Browser":
        self.session = self._sessions.create(**self._options)
        try:
            self.browser = self._playwright.chromium.connect_over_cdp(self.session.cdp_url)
        except BaseException as exc:
            self._finish(exc)
            raise
        return self.browser

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._finish(exc)

    def _finish(self, pending: BaseException | None) -> None:
        browser, session = self.browser, self.session
        self.browser = None
        try:
            if browser is not None:
                browser.close()
        except Exception:
            pass  # a dead connection; ending the session below is what matters
        if session is None:
            return
        try:
            self._sessions.end(session.id)
        except Exception as exc:
            if pending is None:
                raise
            _end_failed(exc)


class AsyncSessionConnection:
    """Async twin of `SessionConnection`, from `AsyncSessions.connect`."""

    def __init__(self, sessions: "AsyncSessions", playwright: Any, create_options: dict[str, Any]) -> None:
        self._sessions, self._playwright, self._options = sessions, playwright, create_options
        self.session: SessionCreated | None = None
        self.browser: AsyncBrowser | None = None

    async def __aenter__(self) -> "AsyncBrowser":
        self.session = await self._sessions.create(**self._options)
        try:
            self.browser = await self._playwright.chromium.connect_over_cdp(self.session.cdp_url)
        except BaseException as exc:
            await self._finish(exc)
            raise
        return self.browser

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        await self._finish(exc)

    async def _finish(self, pending: BaseException | None) -> None:
        browser, session = self.browser, self.session
        self.browser = None
        try:
            if browser is not None:
                await browser.close()
        except Exception:
            pass
        if session is None:
            return
        try:
            await self._sessions.end(session.id)
        except Exception as exc:
            if pending is None:
                raise
            _end_failed(exc)
