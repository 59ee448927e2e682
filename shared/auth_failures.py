"""The per-address limit on failed authentications, for any credential check of the request
being served (`RequestLimits` in shared.http_middleware binds the request's client)."""
import contextlib
import ipaddress
import math
import time
from contextvars import ContextVar

from shared.http_errors import APIError


class AuthFailures:
    """Failed authentications per client address in fixed windows, in this process only (so each
    replica counts its own). At `limit` failures in a window the address gets 429 until the
    window ends. Successes never reset the count: one good credential cannot launder guesses.
    At most `max_clients` addresses are remembered (the stalest is forgotten first)."""

    def __init__(self, *, limit: int, window_s: float, max_clients: int = 100_000):
        self.limit, self.window_s, self.max_clients = limit, window_s, max_clients
        self._windows: dict[str, list] = {}  # address -> [window start, failures]

    def retry_after(self, client: str) -> int:
        """Seconds until `client` may try again; 0 when it may now."""
        window = self._windows.get(client)
        if self.limit <= 0 or window is None or window[1] < self.limit:
            return 0
        return max(0, math.ceil(window[0] + self.window_s - time.monotonic()))

    def failed(self, client: str) -> None:
        now = time.monotonic()
        window = self._windows.pop(client, None)
        if window is None or now >= window[0] + self.window_s:
            window = [now, 0]
        window[1] += 1
        self._windows[client] = window  # re-inserted: the dict's order is staleness
        while len(self._windows) > self.max_clients:
            del self._windows[next(iter(self._windows))]


# The failed-auth limit and the client address of the request being served (set by
# `counted_for`), so any credential check can use them without each route passing them down.
_client: ContextVar[tuple[AuthFailures, str] | None] = ContextVar("auth_client", default=None)


@contextlib.contextmanager
def counted_for(failures: AuthFailures, scope):
    """While serving the ASGI request `scope`: its failed authentications count in `failures`."""
    token = _client.set((failures, client_address(scope)))
    try:
        yield
    finally:
        _client.reset(token)


def client_address(scope) -> str:
    """The client's address (uvicorn puts X-Forwarded-For there from FORWARDED_ALLOW_IPS);
    IPv6 clients by their /64, the block one subscriber usually holds."""
    host = (scope.get("client") or ("unknown", 0))[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


def refuse_if_throttled() -> None:
    """429 when this request's client has failed to authenticate too often lately. Call it only
    where checking the credential would cost something; a credential that is free to verify and
    right is accepted whatever its address did."""
    current = _client.get()
    if current is not None and (wait := current[0].retry_after(current[1])):
        raise APIError(429, "rate_limited", f"too many failed authentications from this address; "
                       f"retry in {wait} s", headers={"Retry-After": str(wait)})


def auth_failed() -> None:
    """Count a failed authentication against this request's client."""
    current = _client.get()
    if current is not None:
        current[0].failed(current[1])
