"""Real Chromium for tests: one launched as the pool launches its browsers (for tests that stand in
for warm_pool), and the flags of the browser Playwright opens to look at the dashboard as a person."""
import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path
from uuid import uuid4

from services.warm_pool.settings import default_chromium
from shared.browsers import CHROMIUM_FLAGS as BROWSER_FLAGS

POOL_FLAGS = ["--headless", "--no-sandbox", *BROWSER_FLAGS, "--remote-debugging-port=0"]  # as the pool's
VIEWER_ARGS = ["--no-sandbox", *BROWSER_FLAGS]  # Playwright's own browser, a person's view of the dashboard


class Chromium:
    def __init__(self, proc, profile: str, ws_url: str):
        self.id, self.proc, self.profile, self.ws_url = uuid4(), proc, profile, ws_url

    @classmethod
    async def launch(cls) -> "Chromium":
        profile = tempfile.mkdtemp(prefix="bf-sessions-test-")
        proc = await asyncio.create_subprocess_exec(
            default_chromium(), *POOL_FLAGS, f"--user-data-dir={profile}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "TMPDIR": profile})  # its temp files go when the profile does
        port_file = Path(profile) / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and len(port_file.read_text().splitlines()) >= 2:
                port, path = port_file.read_text().splitlines()[:2]
                return cls(proc, profile, f"ws://127.0.0.1:{port}{path}")
            await asyncio.sleep(0.05)
        proc.kill()
        raise RuntimeError("chromium did not start")

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # with its helper processes
        await self.proc.wait()
        for _ in range(20):  # helpers may still be exiting
            shutil.rmtree(self.profile, ignore_errors=True)
            if not Path(self.profile).exists():
                return
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def sandboxed_pool_chromium(tmp_path: Path, *, spare_networks: int):
    """warm_pool's own LocalChromium with a sandbox of this test's (no host ports), closed after."""
    from services.warm_pool.adapters.local import LocalChromium
    from services.warm_pool.adapters.sandbox import Sandbox
    from services.warm_pool.adapters.sandbox_config import SandboxConfig
    from tests import infra

    root = infra.browser_root(tmp_path)
    sandbox = Sandbox(SandboxConfig(host_ports=[], spare_networks=spare_networks), chromium_path=default_chromium(),
                      profile_root=root)
    sandbox.start()
    backend = LocalChromium(chromium_path=default_chromium(), profile_root=root / "browsers", sandbox=sandbox)
    try:
        yield backend
    finally:
        if not backend._closed:
            await backend.close()
