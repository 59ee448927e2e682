"""Downloads: a session's files, kept after it ended, served over the downloads RPC, swept when expired.

warm_pool owns them: at a browser's end (any reason: the session's end, a crash, a drain, a stop)
and at a context's end, before the browser's tree goes, the backend asks `keep` to move the
session's files into the store (adapters/downloads.py) and they are recorded (repository_downloads.py)
with their expiry. Sessions lists and reads them over `warm_pool.downloads`, always for one
tenant: another tenant's session or file, or a name that is not exactly a stored one, is not_found.
"""
import asyncio
import logging
import time
from pathlib import Path
from uuid import UUID

from services.warm_pool import metrics
from services.warm_pool.adapters import downloads as store
from services.warm_pool.ports import UnitOfWork
from services.warm_pool.repository_downloads import DownloadsRepository
from shared.messages import DownloadInfo, DownloadsReply, DownloadsRequest

log = logging.getLogger(__name__)


class Downloads:
    def __init__(self, uow: UnitOfWork, *, root: Path, max_bytes: int, retention_s: float):
        self.uow, self.root, self.max_bytes, self.retention_s = uow, Path(root), max_bytes, retention_s

    # --- keeping (the backend calls these before a browser's or a context's tree is removed) --

    async def keep(self, browser_id: UUID, home: Path, *, session_id: UUID | None = None) -> None:
        """Move the files of the browser's sessions (or just `session_id`'s) out of `home`.
        Never raises: a failure is logged and the browser's end goes on."""
        try:
            present = await asyncio.to_thread(store.sessions_with_files, home)
            if session_id is not None:
                present = [s for s in present if s == str(session_id)]
            if not present:
                return
            async with self.uow.connect() as tx:
                rows = await DownloadsRepository(tx.repo.conn).sessions_of_browser(browser_id=browser_id)
            for row in rows:
                if str(row["session_id"]) in present:
                    await self._keep_session(row["tenant_id"], row["session_id"], home)
        except Exception:
            log.exception("keeping downloads failed", extra={"browser_id": str(browser_id)})

    async def _keep_session(self, tenant_id: UUID, session_id: UUID, home: Path) -> None:
        async with self.uow.begin() as tx:
            repo = DownloadsRepository(tx.repo.conn)
            await repo.lock_session(session_id=session_id)
            earlier = await repo.kept_of_session(session_id=session_id)
            used = sum(r["size_bytes"] for r in earlier if r["dropped"] is None)
            items = await asyncio.to_thread(store.collect, home, str(session_id), store=self.root,
                                            tenant=str(tenant_id), taken={r["name"] for r in earlier},
                                            budget=max(0, self.max_bytes - used))
            for item in items:
                await repo.record(tenant_id=tenant_id, session_id=session_id, name=item.name,
                                  size_bytes=item.size_bytes, dropped=item.dropped, retention_s=self.retention_s)
        for item in items:
            outcome = "kept" if item.dropped is None else "dropped"
            metrics.DOWNLOAD_FILES.labels(outcome).inc()
            metrics.DOWNLOAD_BYTES.labels(outcome).inc(item.size_bytes)
        dropped = [i for i in items if i.dropped]
        if dropped:
            log.warning("downloads not kept", extra={"session_id": str(session_id), "files": len(dropped),
                                                     "reasons": sorted({i.dropped for i in dropped})})

    # --- the RPC -------------------------------------------------------------------------------

    async def serve(self, req: DownloadsRequest) -> DownloadsReply:
        async with self.uow.connect() as tx:
            repo = DownloadsRepository(tx.repo.conn)
            if req.op == "list":
                rows = await repo.list_kept(tenant_id=req.tenant_id, session_id=req.session_id)
                if not rows and await repo.session_tenant(session_id=req.session_id) not in (None, req.tenant_id):
                    return DownloadsReply(ok=False, error="not_found")
                return DownloadsReply(ok=True, files=[DownloadInfo(**dict(r)) for r in rows])
            row = None if req.name is None or not store.plain(req.name) else await repo.get_kept(
                tenant_id=req.tenant_id, session_id=req.session_id, name=req.name)
        if row is None:
            return DownloadsReply(ok=False, error="not_found")
        chunk = await asyncio.to_thread(store.read_chunk, self.root, str(req.tenant_id), str(req.session_id),
                                        row["name"], offset=req.offset, length=req.length)
        if chunk is None:
            log.warning("a recorded download is missing from the store", extra={"session_id": str(req.session_id)})
            return DownloadsReply(ok=False, error="not_found")
        data, size = chunk
        return DownloadsReply(ok=True, data=data, size_bytes=size)

    # --- retention -----------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Remove the files (and rows) past their expiry, whatever their tenant's state; then
        store directories no row names any more (a collection cut off before it was recorded)."""
        removed = 0
        while True:
            async with self.uow.begin() as tx:
                rows = await DownloadsRepository(tx.repo.conn).delete_expired()
            for r in rows:
                if r["dropped"] is None:
                    await asyncio.to_thread(store.remove, self.root, str(r["tenant_id"]), str(r["session_id"]),
                                            r["name"])
                    metrics.DOWNLOAD_FILES.labels("expired").inc()
                    metrics.DOWNLOAD_BYTES.labels("expired").inc(r["size_bytes"])
                    removed += 1
            if len(rows) < 1000:
                break
        await self._sweep_orphans()
        return removed

    async def _sweep_orphans(self) -> None:
        old = [(t, s) for t, s, mtime in await asyncio.to_thread(store.session_dirs, self.root)
               if time.time() - mtime > self.retention_s]
        ids = []
        for _, s in old:
            try:
                ids.append(UUID(s))
            except ValueError:
                continue
        if not ids:
            return
        async with self.uow.connect() as tx:
            named = await DownloadsRepository(tx.repo.conn).sessions_with_rows(session_ids=ids)
        for tenant, session in old:
            if session in {str(i) for i in ids} and UUID(session) not in named:
                await asyncio.to_thread(store.remove_session, self.root, tenant, session)
