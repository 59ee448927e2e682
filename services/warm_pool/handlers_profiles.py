"""A session's profile: its state put into the browser at the lease, saved back at the end.

Lease (handlers.lease with `profile_id`): the tenant must own the profile (else profile_not_found);
a persisting lease takes the profile's lock (held by another session: profile_in_use); the use is
recorded. Then:
- context mode: a fresh context as usual, and the stored state restored into it over CDP;
- browser mode, a version with a directory (saved by a browser-mode session): a browser launched
  on demand on that directory, unpacked into its sandbox (no warm browser can have it), and the
  cookies restored over CDP (session cookies are not in the directory);
- browser mode, state only (saved by a context session, or a cluster pod): a warm browser, and the
  state restored into its default context over CDP.
End (handlers.session_completed, before the context is disposed or the browser killed): the state
captured over CDP (the origins the session visited and those the profile had), in browser mode
the browser closed gracefully (so Chromium flushes its cookies and LevelDB) and its directory
packed; written as a new version (profiles.ProfileStore.write); the lock released; the outcome
announced as warm_pool.profile_saved. A crashed browser saves nothing.
"""
import asyncio
import contextlib
import logging
from typing import Any

from services.warm_pool.ports import PlainLease, Pool, UnitOfWork
from services.warm_pool.profile_archive import ArchiveError, TooLarge
from services.warm_pool.profiles import Archive, ProfileStore, Saved
from shared.messages import LeaseReply, LeaseRequest, ProfileSaved, SessionCompleted

log = logging.getLogger(__name__)


class ProfileSessions:
    """The store, the storage-state adapter (capture/restore over CDP) and the origin trackers,
    one per browser whose sessions persist a profile."""

    def __init__(self, store: ProfileStore, *, state: Any = None, cdp_timeout_s: float = 10,
                 save_concurrency: int = 2):
        self.store, self._state, self.timeout_s = store, state, cdp_timeout_s
        self.saving = asyncio.Semaphore(save_concurrency)  # each save holds its archive in memory
        self.trackers: dict[str, Any] = {}  # cdp_ws_url → OriginTracker

    @property
    def state(self):
        """adapters/storage_state (capture, restore, OriginTracker), unless a test gave another."""
        if self._state is None:
            from services.warm_pool.adapters import storage_state
            self._state = storage_state
        return self._state

    async def track(self, cdp_ws_url: str) -> None:
        if cdp_ws_url in self.trackers:
            return
        tracker = self.state.OriginTracker()
        try:
            await tracker.start(cdp_ws_url)
        except Exception as exc:  # the save still covers the profile's known origins
            log.warning("origin tracking failed", extra={"error": repr(exc)[:200]})
            return
        self.trackers[cdp_ws_url] = tracker

    def origins(self, cdp_ws_url: str, context_id: str | None) -> set[str]:
        tracker = self.trackers.get(cdp_ws_url)
        return set(tracker.origins(context_id)) if tracker is not None else set()

    async def untrack(self, cdp_ws_url: str, context_id: str | None, *, browser_gone: bool) -> None:
        tracker = self.trackers.get(cdp_ws_url)
        if tracker is None:
            return
        tracker.forget(context_id)
        if browser_gone:
            self.trackers.pop(cdp_ws_url, None)
            with contextlib.suppress(Exception):
                await tracker.close()

    async def close(self) -> None:
        for tracker in list(self.trackers.values()):
            with contextlib.suppress(Exception):
                await tracker.close()
        self.trackers.clear()
        close = getattr(self.store.blobs, "close", None)
        if close is not None:
            await close()




def _refused(error: str, message: str | None = None) -> LeaseReply:
    return LeaseReply(ok=False, error=error, message=message)


async def lease(req: LeaseRequest, *, pool: Pool, uow: UnitOfWork, profiles: ProfileSessions | None,
                plain: PlainLease) -> LeaseReply:
    if profiles is None or not profiles.store.available:
        return _refused("profiles_unavailable", "profiles are not configured on this deployment "
                                                "(PROFILE_ENCRYPTION_KEY is unset)")
    async with uow.begin() as tx:
        tenant = await tx.repo.get_tenant(tenant_id=req.tenant_id)
        if tenant is None or tenant["status"] != "active":
            return _refused("unknown_tenant")
        profile = await tx.repo.get_profile(tenant_id=req.tenant_id, profile_id=req.profile_id)
        if profile is None:
            return _refused("profile_not_found")
        if req.persist and not await tx.repo.lock_profile_persist(tenant_id=req.tenant_id, profile_id=req.profile_id,
                                                                  session_id=req.session_id):
            return _refused("profile_in_use", "another persisting session of this profile is running")
        await tx.repo.insert_profile_use(session_id=req.session_id, profile_id=req.profile_id,
                                         tenant_id=req.tenant_id, persist=req.persist, isolation=req.isolation,
                                         version=profile["current_version"])
    try:
        try:
            archive = await profiles.store.load(uow, profile)
        except ArchiveError as exc:  # a key dropped from the ring, a blob missing or tampered with
            log.error("a profile's current version does not open", extra={"profile_id": str(req.profile_id),
                                                                           "error": str(exc)[:200]})
            await _drop_use(uow, req)
            return _refused("error", "the profile's saved state cannot be opened; contact the operator")
        reply = await _lease_with_state(req, archive, pool=pool, uow=uow, tenant=tenant, profiles=profiles,
                                        plain=plain)
    except BaseException:
        await _drop_use(uow, req)
        raise
    if not reply.ok:
        await _drop_use(uow, req)
    return reply


async def _drop_use(uow: UnitOfWork, req: LeaseRequest) -> None:
    async with uow.begin() as tx:
        await tx.repo.drop_profile_use(session_id=req.session_id)


async def _lease_with_state(req: LeaseRequest, archive: Archive | None, *, pool: Pool, uow: UnitOfWork, tenant,
                            profiles: ProfileSessions, plain: PlainLease) -> LeaseReply:
    state = archive.state if archive else None
    if req.isolation == "browser" and archive and archive.directory and pool.launches_with_directory:
        async with uow.connect() as tx:
            row = await tx.repo.leased_for_session(session_id=req.session_id)
        if row is not None:  # a retried request: the same answer
            if row["state"] != "leased":
                return _refused("error")
            return LeaseReply(ok=True, browser_id=row["id"], cdp_ws_url=row["cdp_ws_url"], warm=bool(row["warm"]))
        reply = await pool.lease_new(req, tenant=tenant, directory=archive.directory)
        state = {"cookies": state.get("cookies", []), "origins": []}  # the directory holds the rest
    else:
        reply = await plain(req)
    if not reply.ok:
        return reply
    context_id = reply.context_id if req.isolation == "context" else None
    try:
        if state and (state.get("cookies") or state.get("origins")):
            await profiles.state.restore(reply.cdp_ws_url, context_id=context_id, state=state,
                                         timeout_s=profiles.timeout_s)
        if req.persist:
            await profiles.track(reply.cdp_ws_url)
    except Exception as exc:
        log.warning("restoring a profile failed", extra={"session_id": str(req.session_id),
                                                          "error": repr(exc)[:300]})
        await _undo_lease(req, reply, pool=pool, uow=uow)
        return _refused("error", "the profile could not be restored into the browser")
    return reply


async def _undo_lease(req: LeaseRequest, reply: LeaseReply, *, pool: Pool, uow: UnitOfWork) -> None:
    async with uow.begin() as tx:
        if req.isolation == "context":
            context = await tx.repo.context_ending(session_id=req.session_id)
            rows = []
        else:
            context = None
            rows = await tx.repo.retire_session(session_id=req.session_id, browser_id=reply.browser_id)
    if context is not None and pool.may_destroy(context):
        await pool.end_context(req.session_id)
    await asyncio.gather(*(pool.kill(r["id"]) for r in rows if pool.may_destroy(r)))


# --- the session's end ---------------------------------------------------------------------

async def session_ended(event: SessionCompleted, *, pool: Pool, uow: UnitOfWork,
                        profiles: ProfileSessions | None) -> None:
    """Save a persisting session's state (before its context or browser goes), release its lock,
    announce the outcome. Nothing if the session used no profile."""
    async with uow.begin() as tx:
        use = await tx.repo.claim_profile_save(session_id=event.session_id)
        if use is None:
            return
        context = await tx.repo.context_for_session(session_id=event.session_id)
        browser = None if context else await tx.repo.leased_for_session(session_id=event.session_id)
    target = context if use["isolation"] == "context" else browser
    if not use["persist"]:
        saved = None
    elif event.end_reason == "browser_crashed":
        saved = Saved("not_saved", message="the browser crashed: the previous version is kept")
    elif profiles is None or not profiles.store.available:
        saved = Saved("failed", message="profiles are not configured on this deployment")
    elif target is None or target["state"] not in ("active", "leased") or not target["cdp_ws_url"]:
        saved = Saved("failed", message="the browser was gone before its state could be saved")
    elif not pool.may_destroy(target):
        saved = Saved("failed", message="the session's browser is on another warm_pool replica")
    else:
        async with profiles.saving:
            saved = await _save(event, use, target, pool=pool, uow=uow, profiles=profiles)
    if profiles is not None and target is not None and target["cdp_ws_url"]:
        await profiles.untrack(target["cdp_ws_url"], target["context_id"] if context else None,
                               browser_gone=context is None)
    async with uow.begin() as tx:
        await tx.repo.finish_profile_use(session_id=event.session_id)
        if saved is None or saved.outcome != "saved":
            await tx.repo.touch_profile(profile_id=use["profile_id"], session_id=event.session_id)
        if saved is not None:
            await tx.publish(ProfileSaved(session_id=event.session_id, tenant_id=use["tenant_id"],
                                          profile_id=use["profile_id"], outcome=saved.outcome,
                                          version=saved.version, size_bytes=saved.size_bytes,
                                          message=saved.message))
    if saved is not None:
        log.info("profile save", extra={"session_id": str(event.session_id), "profile_id": str(use["profile_id"]),
                                        "outcome": saved.outcome, "size_bytes": saved.size_bytes})


async def _save(event: SessionCompleted, use, target, *, pool: Pool, uow: UnitOfWork,
                profiles: ProfileSessions) -> Saved:
    context_id = target["context_id"] if use["isolation"] == "context" else None
    url = target["cdp_ws_url"]
    origins = profiles.origins(url, context_id) | set(use["origins"] or ())
    try:
        state = await profiles.state.capture(url, context_id=context_id, origins=sorted(origins),
                                             timeout_s=profiles.timeout_s)
        directory = None
        if use["isolation"] == "browser" and pool.launches_with_directory:
            directory = await pool.close_and_pack(target["id"], cdp_ws_url=url, max_bytes=profiles.store.max_bytes)
    except TooLarge:
        return Saved("failed", message=f"the profile is over its size cap ({profiles.store.max_bytes // 2**20} MiB "
                                       "compressed): the previous version is kept")
    except (Exception, ArchiveError) as exc:
        log.warning("capturing a profile failed", extra={"session_id": str(event.session_id),
                                                          "error": repr(exc)[:300]})
        return Saved("failed", message="the browser's state could not be read: the previous version is kept")
    kept = {o["origin"] for o in state.get("origins", []) if o.get("origin")} | set(use["origins"] or ())
    try:
        return await profiles.store.write(uow, profile_id=use["profile_id"], tenant_id=use["tenant_id"],
                                          session_id=event.session_id, archive=Archive(state, directory),
                                          origins=sorted(kept))
    except Exception as exc:
        log.warning("writing a profile failed", extra={"session_id": str(event.session_id), "error": repr(exc)[:300]})
        return Saved("failed", message="the profile could not be stored: the previous version is kept")


# --- sweeps --------------------------------------------------------------------------------

async def sweep(*, uow: UnitOfWork, profiles: ProfileSessions | None, retention_s: float,
                stale_after_s: float) -> None:
    """Locks of uses whose session never started or lost its browser, canceled tenants' profiles
    past the retention, and the blobs of deleted profiles."""
    async with uow.connect() as tx:
        stale = await tx.repo.stale_profile_uses(older_than_s=stale_after_s)
    for session_id in stale:
        async with uow.begin() as tx:
            use = await tx.repo.claim_profile_save(session_id=session_id)
            if use is None:
                continue
            await tx.repo.finish_profile_use(session_id=session_id)
            if use["persist"]:
                await tx.publish(ProfileSaved(session_id=session_id, tenant_id=use["tenant_id"],
                                              profile_id=use["profile_id"], outcome="not_saved",
                                              message="the session's browser was gone: nothing was saved"))
    async with uow.begin() as tx:
        expired = await tx.repo.expire_canceled_profiles(retention_s=retention_s)
    if expired:
        log.info("canceled tenants' profiles deleted", extra={"count": expired})
    if profiles is not None:
        await profiles.store.purge_deleted(uow)
