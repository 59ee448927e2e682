"""Chromium launched directly, without the platform: the floor and the cold-launch baseline."""
import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass

from services.warm_pool.adapters.chromium_launch import FLAGS as POOL_FLAGS
from services.warm_pool.settings import default_chromium

# The same binary and flags as the platform's pool, so the baselines are as lean as its browsers.
FLAGS = POOL_FLAGS


@dataclass
class Browser:
    proc: subprocess.Popen
    profile: str
    ws_url: str

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def launch(binary: str = default_chromium(), timeout: float = 20) -> Browser:
    profile = tempfile.mkdtemp(prefix="bf-bench-")
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "HOME": profile, "XDG_CONFIG_HOME": profile, "TMPDIR": profile})
    deadline = time.monotonic() + timeout
    port_file = os.path.join(profile, "DevToolsActivePort")
    while time.monotonic() < deadline:
        try:
            port = int(open(port_file).read().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=1) as r:
                return Browser(proc, profile, json.load(r)["webSocketDebuggerUrl"])
        except (OSError, ValueError, IndexError):
            time.sleep(0.01)
    Browser(proc, profile, "").kill()
    raise TimeoutError("chromium did not start")


async def launch_async() -> Browser:
    return await asyncio.to_thread(launch)
