"""BrowserContexts in a context host: over one kept DevTools connection per browser, and each
context's downloads directory on the host.

The directory is `<home>/downloads/<session_id>`, where `<home>` is the browser's sandbox home
(`/browser` inside it), writable by the browser's uid. The tenant's browser may have replaced
`downloads` (or anything below it) with a symlink, so root never resolves a path through it:
every step is opened relative to a directory fd with O_NOFOLLOW, and removal walks by fd too.
"""
import asyncio
import contextlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import websockets

from services.warm_pool.ports import Keeper
from shared.cdp import CdpCommands

NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class OpenedContext:
    context_id: str
    downloads_path: str  # as the browser sees it


class _Connection:
    def __init__(self, url: str, timeout_s: float):
        self.url, self.timeout_s = url, timeout_s
        self.ws = None
        self.cdp: CdpCommands | None = None
        self.lock = asyncio.Lock()  # CdpCommands reads replies in line: one command at a time

    async def _open(self) -> None:
        if self.ws is None:
            async with asyncio.timeout(self.timeout_s):
                self.ws = await websockets.connect(self.url, max_size=None, open_timeout=None, ping_interval=None)
            self.cdp = CdpCommands(self.ws, timeout_s=self.timeout_s)

    async def open(self) -> None:
        async with self.lock:
            await self._open()

    async def call(self, method: str, params: dict) -> dict:
        async with self.lock:
            for attempt in (1, 2):  # a dropped connection is reopened once
                await self._open()
                try:
                    return await self.cdp.call(method, params)
                except websockets.ConnectionClosed:
                    await self.close()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    async def close(self) -> None:
        ws, self.ws, self.cdp = self.ws, None, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()


class ContextHosts:
    def __init__(self, *, timeout_s: float = 10, keeper: Keeper | None = None):
        self.timeout_s = timeout_s
        self.keeper = keeper
        self._conns: dict[UUID, _Connection] = {}
        self._watchers: set[asyncio.Task] = set()

    def _conn(self, browser_id: UUID, url: str) -> _Connection:
        conn = self._conns.get(browser_id)
        if conn is None or conn.url != url:
            conn = self._conns[browser_id] = _Connection(url, self.timeout_s)
        return conn

    async def open(self, browser_id: UUID, *, cdp_ws_url: str, home: Path, browser_home: str, session_id: UUID,
                   first_page: bool) -> OpenedContext:
        await asyncio.to_thread(make_downloads_dir, home, str(session_id))
        downloads = f"{browser_home}/downloads/{session_id}"
        conn = self._conn(browser_id, cdp_ws_url)
        context_id = (await conn.call("Target.createBrowserContext", {"disposeOnDetach": False}))["browserContextId"]
        try:
            await conn.call("Browser.setDownloadBehavior", {"behavior": "allow", "browserContextId": context_id,
                                                            "downloadPath": downloads})
            if first_page:  # what a browser of its own starts with (`pages()[0]`)
                await conn.call("Target.createTarget", {"url": "about:blank", "browserContextId": context_id})
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.call("Target.disposeBrowserContext", {"browserContextId": context_id})
            raise
        return OpenedContext(context_id=context_id, downloads_path=downloads)

    async def close_context(self, browser_id: UUID, *, cdp_ws_url: str, context_id: str | None, home: Path,
                            session_id: UUID) -> None:
        """Dispose the context (its pages, cookies, storage, cache), keep its downloads (the
        keeper moves them to the store), then remove its directory."""
        try:
            if context_id is not None:
                await self._conn(browser_id, cdp_ws_url).call("Target.disposeBrowserContext",
                                                              {"browserContextId": context_id})
        finally:
            if self.keeper is not None:
                await self.keeper.keep(browser_id, home, session_id=session_id)
            await asyncio.to_thread(remove_downloads_dir, home, str(session_id))

    async def preconnect(self, browser_id: UUID, *, cdp_ws_url: str) -> None:
        """Open the kept connection now (at launch), so a lease pays one command, not a handshake."""
        await self._conn(browser_id, cdp_ws_url).open()

    async def browser_downloads(self, browser_id: UUID, *, cdp_ws_url: str, browser_home: str,
                                session_id: UUID) -> str:
        """A browser of one session's own downloads into `<browser_home>/downloads/<session_id>`
        (Chromium makes the directory, as the browser's uid). Set over the kept connection: a
        connection's download behaviour lasts only as long as the connection."""
        downloads = f"{browser_home}/downloads/{session_id}"
        conn = self._conn(browser_id, cdp_ws_url)
        await conn.call("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
        task = asyncio.create_task(self._forget_when_closed(browser_id, conn))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return downloads

    async def _forget_when_closed(self, browser_id: UUID, conn: "_Connection") -> None:
        """A browser another replica kills closes this connection: forget it then."""
        ws = conn.ws
        if ws is not None:
            await ws.wait_closed()
            if self._conns.get(browser_id) is conn and conn.ws is ws:
                self._conns.pop(browser_id, None)

    async def forget(self, browser_id: UUID) -> None:
        conn = self._conns.pop(browser_id, None)
        if conn is not None:
            await conn.close()

    async def close(self) -> None:
        for task in list(self._watchers):
            task.cancel()
        for browser_id in list(self._conns):
            await self.forget(browser_id)


def _open_downloads(home: Path) -> tuple[int, int]:
    """(fd of home, fd of home/downloads), neither reached through a symlink; downloads is made
    if missing (an unsandboxed browser's directory has none)."""
    home_fd = os.open(home, NOFOLLOW_DIR)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir("downloads", 0o700, dir_fd=home_fd)
        return home_fd, os.open("downloads", NOFOLLOW_DIR, dir_fd=home_fd)
    except BaseException:
        os.close(home_fd)
        raise


def make_downloads_dir(home: Path, name: str) -> None:
    """`<home>/downloads/<name>`, mode 0700, owned by the owner of `home` (the browser's uid)."""
    home_fd, downloads_fd = _open_downloads(home)
    try:
        uid, gid = os.fstat(home_fd).st_uid, os.fstat(home_fd).st_gid
        with contextlib.suppress(FileExistsError):  # a retried lease
            os.mkdir(name, 0o700, dir_fd=downloads_fd)
        fd = os.open(name, NOFOLLOW_DIR, dir_fd=downloads_fd)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    finally:
        os.close(downloads_fd)
        os.close(home_fd)


def remove_downloads_dir(home: Path, name: str) -> None:
    """Remove `<home>/downloads/<name>` and what is in it, following no symlink on the way."""
    try:
        home_fd, downloads_fd = _open_downloads(home)
    except OSError:
        return  # the browser's directory is gone (it died): nothing of it is left
    try:
        if not shutil.rmtree.avoids_symlink_attacks:
            raise RuntimeError("this platform's rmtree could be led outside the directory by a symlink")
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(name, dir_fd=downloads_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=downloads_fd)
            else:
                os.unlink(name, dir_fd=downloads_fd)  # a link or file planted in its place
    finally:
        os.close(downloads_fd)
        os.close(home_fd)
