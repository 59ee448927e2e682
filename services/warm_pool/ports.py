"""The ports of warm_pool's handlers: the pool, the unit of work, and the two pools' backends.

Handlers see a `Pool` and a `UnitOfWork` only. `LocalPool` (pool_local.py) runs Chromium processes
on this host through a `ProcessBackend` (adapters/local.py); `ClusterPool` (pool_cluster.py) leases
pods of the tenants' Deployments through a `ClusterBackend` (adapters/kubernetes.py).
"""
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Mapping, Protocol
from uuid import UUID

from shared.messages import Event, LeaseReply, LeaseRequest

Row = Mapping[str, Any]  # a database row as the repository returns it


class Tx(Protocol):
    """One unit of work: the repository, the outbox and the inbox, on one connection."""
    repo: Any  # services.warm_pool.repository.Repository (or its fake)

    async def publish(self, event: Event) -> None:
        """Into the outbox, committed with the rest of the transaction."""

    async def first_delivery(self, message_id: UUID) -> bool:
        """True the first time warm_pool sees this message (recorded in the inbox)."""


class UnitOfWork(Protocol):
    def begin(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction, committed when the block ends without an exception."""

    def connect(self) -> AbstractAsyncContextManager[Tx]:
        """No transaction: each statement commits on its own (one round trip for the lease fast path)."""


class Pool(Protocol):
    """Everything the handlers ask of this replica's pool."""
    replica_id: str
    # On a tenant's cancel, are its leased browsers retired too (pods), or left to their
    # sessions, which sessions ends (processes)?
    retires_leased_on_cancel: bool
    # Can a browser be launched on a profile's packed user-data directory (and its directory be
    # packed at the end)? Else profiles are storage state restored and captured over CDP.
    launches_with_directory: bool

    async def take_idle(self, req: LeaseRequest) -> LeaseReply | None:
        """A browser the tenant had ready, leased in one round trip; None if there is none."""

    async def with_downloads(self, req: LeaseRequest, reply: LeaseReply) -> LeaseReply:
        """A browser leased to the session downloads into a directory of the session's: the reply
        with its `downloads_path` (unchanged where downloads are not kept)."""

    async def lease_new(self, req: LeaseRequest, *, tenant: Row, directory: bytes | None = None) -> LeaseReply:
        """No ready browser and no earlier answer to this session: get one, or answer no_capacity.
        `directory` (only where launches_with_directory): launch on that packed user-data directory."""

    async def close_and_pack(self, browser_id: UUID, *, cdp_ws_url: str, max_bytes: int) -> bytes:
        """(launches_with_directory) Close the browser gracefully, then its user-data directory packed."""

    async def lease_context(self, req: LeaseRequest, *, tenant: Row) -> LeaseReply:
        """A fresh BrowserContext in a context host of the tenant with room (launching one if none
        has), for a session with no earlier answer."""

    async def end_context(self, session_id: UUID) -> None:
        """Dispose an 'ending' context of this replica's hosts, remove its downloads, free its slot."""

    def request_refill(self, tenant_id: UUID) -> None:
        """Bring the tenant's ready browsers back to target, in the background."""

    def may_destroy(self, row: Row) -> bool:
        """May this replica destroy that browser (its `replica_id` column)?"""

    async def kill(self, browser_id: UUID) -> None:
        """Destroy the browser and mark its row dead."""

    async def destroy(self, browser_id: UUID) -> None:
        """Destroy the browser only (its row is the caller's)."""

    async def crashed(self) -> list[UUID]:
        """Browsers that died unasked since the last call."""

    async def reconcile(self) -> None:
        """Kill the retired and the stuck browsers this replica may kill; resize the pools."""

    async def start_up(self) -> None:
        """Remove what a crashed predecessor left."""

    async def shut_down(self) -> None:
        """Stop background work and release the backend (and this replica's browsers, if they die with it)."""


class Launched(Protocol):
    """A local browser process, started."""
    pid: int
    port: int
    profile_dir: str
    cdp_ws_url: str


class Claimed(Protocol):
    """A pod, leased."""
    port: int
    pod: str  # "<namespace>/<name>"
    cdp_ws_url: str


class ProcessBackend(Protocol):
    """Browsers as processes of this replica (adapters/local.py)."""

    async def launch(self, browser_id: UUID, *, tenant_id: UUID, tenant_browsers: int,
                     urgent: bool = False, directory: bytes | None = None) -> Launched:
        """Start a browser; raises domain.TenantRefused if this host will
        not serve the tenant (BROWSER_SANDBOX=off serves one), any other exception if it failed."""

    def prioritize(self, *, pid: int | None, host: str) -> None:
        """A leased browser gets normal CPU priority (pool browsers wait at the lowest)."""

    async def open_context(self, browser_id: UUID, *, cdp_ws_url: str, session_id: UUID,
                           first_page: bool) -> Any:
        """A fresh BrowserContext (`.context_id`) whose downloads go to its own new directory
        (`.downloads_path`, as the browser sees it)."""

    async def close_context(self, browser_id: UUID, *, cdp_ws_url: str, context_id: str | None,
                            session_id: UUID) -> None:
        """Dispose the context and remove its downloads directory (its files kept first)."""

    async def browser_downloads(self, browser_id: UUID, *, cdp_ws_url: str, session_id: UUID) -> str:
        """A browser of one session's: its downloads go to a directory of that session's (the
        path as the browser sees it)."""

    async def close_and_pack(self, browser_id: UUID, *, cdp_ws_url: str, max_bytes: int) -> bytes:
        """Browser.close, wait for the process to exit, pack its user-data directory."""

    def memory_bytes(self, browser_id: UUID) -> int | None:
        """The browser's memory now (None if unknown)."""

    async def kill(self, browser_id: UUID) -> None: ...
    def exited(self) -> list[UUID]: ...
    def owner_alive(self, pid: int) -> bool: ...
    async def remove_stale(self, browser_id: UUID, *, pid: int | None, profile_dir: str | None) -> None: ...
    async def remove_orphans(self) -> list[UUID]: ...
    async def close(self) -> None: ...


class ClusterBackend(Protocol):
    """Browsers as pods of the tenant's Deployment (adapters/kubernetes.py)."""

    async def claim(self, browser_id: UUID, *, namespace: str, session_id: UUID,
                    wait_s: float) -> Claimed | None:
        """Lease a Ready pod of the namespace; None if none became Ready in wait_s."""

    async def kill(self, browser_id: UUID) -> None: ...
    async def leased(self) -> dict[UUID, bool]:
        """Every leased browser in the cluster → still alive and ready."""

    async def close(self) -> None: ...


class BlobStore(Protocol):
    """Where sealed profile archives live (adapters/blobs.py: Postgres or S3-compatible)."""
    async def put(self, key: str, data: bytes) -> None: ...
    async def get(self, key: str) -> bytes | None: ...
    async def delete(self, keys: list[str]) -> None: ...


class Keeper(Protocol):
    """Moves a session's downloads out of a browser's tree before it is removed (adapters/downloads.py)."""

    async def keep(self, browser_id: UUID, home: Path, *, session_id: UUID | None = None) -> None: ...


PlainLease = Callable[[LeaseRequest], Awaitable[LeaseReply]]  # a lease without a profile (handlers._lease)
