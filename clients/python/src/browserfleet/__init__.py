"""Python client for browserfleet: remote headless browsers over CDP.

    from browserfleet import Browserfleet
    bf = Browserfleet()  # BROWSERFLEET_API_KEY, BROWSERFLEET_BASE_URL
    session = bf.sessions.create(timeout_s=300)
"""
from browserfleet._base import APIResponseValidationError
from browserfleet._client import AsyncBrowserfleet, Browserfleet
from browserfleet._connect import AsyncSessionConnection, SessionConnection
from browserfleet._errors import (APIConnectionError, APIError, APIStatusError, APITimeoutError, AuthenticationError,
                                  BrowserfleetError, ConflictError, InsufficientCreditsError, NotFoundError,
                                  PayloadTooLargeError, PermissionDeniedError, RateLimitError,
                                  ServiceUnavailableError, UnprocessableEntityError)
from browserfleet._models import (Download, Profile, ProfilePage, Session, SessionCreated, SessionPage,
                                  SessionProfile, SessionStatus, Usage)
from browserfleet._pagination import AsyncCursorPager, SyncCursorPage
from browserfleet._version import __version__

__all__ = [
    "Browserfleet", "AsyncBrowserfleet", "__version__",
    "Session", "SessionCreated", "SessionPage", "SessionProfile", "SessionStatus", "Usage", "Profile", "ProfilePage", "Download",
    "SyncCursorPage", "AsyncCursorPager", "SessionConnection", "AsyncSessionConnection",
    "BrowserfleetError", "APIError", "APIStatusError", "APIConnectionError", "APITimeoutError",
    "APIResponseValidationError", "AuthenticationError", "InsufficientCreditsError", "PermissionDeniedError",
    "NotFoundError", "ConflictError", "PayloadTooLargeError", "UnprocessableEntityError", "RateLimitError",
    "ServiceUnavailableError",
]
