"""The local Chromium backend on its own: launch, kill, and clean-up of what a dead owner left."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from services.warm_pool.adapters.local import LocalChromium
from services.warm_pool.settings import default_chromium


def pgrep(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture
async def backend(tmp_path):
    chromium = LocalChromium(chromium_path=default_chromium(), profile_root=tmp_path / "profiles")
    yield chromium
    await chromium.close()
    for pid in pgrep(str(tmp_path)):
        os.killpg(os.getpgid(pid), signal.SIGKILL)


async def test_launch_gives_a_ready_browser_in_its_own_group_and_kill_removes_everything(backend):
    browser_id = uuid.uuid4()
    launched = await backend.launch(browser_id)
    version = httpx.get(f"http://127.0.0.1:{launched.port}/json/version", timeout=2).json()
    assert version["webSocketDebuggerUrl"] == launched.cdp_ws_url
    assert os.getpgid(launched.pid) == launched.pid != os.getpgrp()
    assert pgrep(launched.profile_dir)

    await backend.kill(browser_id)
    assert not pgrep(launched.profile_dir)
    assert not os.path.exists(launched.profile_dir)
    assert backend.owned() == []


async def test_the_full_browser_leaves_nothing_in_tmp_either(tmp_path):
    """CHROMIUM_PATH may name the full browser, which (unlike the headless shell) keeps its
    singleton socket in a directory of its own in /tmp and removes it only on a clean exit."""
    backend = LocalChromium(chromium_path="/usr/bin/chromium", profile_root=tmp_path / "profiles")
    try:
        launched = await backend.launch(uuid.uuid4())
        singleton = os.readlink(Path(launched.profile_dir) / "profile" / "SingletonSocket")
        assert os.path.exists(singleton)
        await backend.kill(backend.owned()[0])
        assert not os.path.exists(os.path.dirname(singleton)) and not os.path.exists(launched.profile_dir)
    finally:
        await backend.close()


async def test_a_browser_that_dies_is_reported_as_exited(backend):
    browser_id = uuid.uuid4()
    launched = await backend.launch(browser_id)
    os.kill(launched.pid, signal.SIGKILL)
    for _ in range(100):
        if backend.exited():
            break
        await asyncio.sleep(0.02)
    assert backend.exited() == [browser_id]
    await backend.kill(browser_id)
    assert not pgrep(launched.profile_dir) and not os.path.exists(launched.profile_dir)


async def test_orphans_of_a_dead_owner_are_removed_but_a_live_owners_are_kept(backend, tmp_path):
    mine = await backend.launch(uuid.uuid4())
    orphan_id = uuid.uuid4()
    orphan = await backend.launch(orphan_id)
    # Pretend the orphan was started by a warm_pool process that has since died.
    backend._procs.pop(orphan_id)
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()
    owner_file = os.path.join(orphan.profile_dir, "owner.json")
    with open(owner_file, "w") as f:
        json.dump({"owner_pid": dead_owner.pid, "pid": orphan.pid}, f)

    assert await backend.remove_orphans() == [orphan_id]
    assert not pgrep(orphan.profile_dir) and not os.path.exists(orphan.profile_dir)
    assert pgrep(mine.profile_dir) and os.path.exists(mine.profile_dir)


async def test_a_cancelled_launch_leaves_no_process_or_directory(backend, tmp_path):
    for delay in (0, 0.005, 0.05, 0.2):
        browser_id = uuid.uuid4()
        task = asyncio.create_task(backend.launch(browser_id))
        await asyncio.sleep(delay)
        task.cancel()
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
        if not isinstance(outcome, BaseException):
            # The launch finished as the cancel arrived (Python 3.11's wait_for then returns the
            # result): the caller got a tracked browser, which it owns and kills like any other.
            assert backend.owned() == [browser_id]
            await backend.kill(browser_id)
    assert backend.owned() == []
    assert not pgrep(str(tmp_path)) and not any((tmp_path / "profiles").iterdir())


async def test_browsers_can_be_exposed_beyond_loopback_for_sessions_in_another_container(tmp_path):
    """Under Compose sessions reaches warm_pool's browsers by address; headless Chromium only
    binds 127.0.0.1, so warm_pool forwards a port on all interfaces and advertises it."""
    import json as _json

    import websockets

    chromium = LocalChromium(chromium_path=default_chromium(), profile_root=tmp_path / "profiles",
                             advertise_host="127.0.0.2")  # any address of this host but the one Chromium binds
    browser_id = uuid.uuid4()
    try:
        launched = await chromium.launch(browser_id)
        assert launched.cdp_ws_url.startswith("ws://127.0.0.2:")
        assert f":{launched.port}/" not in launched.cdp_ws_url
        async with websockets.connect(launched.cdp_ws_url, max_size=None) as ws:
            await ws.send(_json.dumps({"id": 1, "method": "Browser.getVersion"}))
            reply = _json.loads(await ws.recv())
        assert reply["id"] == 1 and "Chrome" in reply["result"]["product"]
        await chromium.kill(browser_id)
        port = int(launched.cdp_ws_url.split(":")[2].split("/")[0])
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.2", port)
    finally:
        await chromium.close()


def _autogroup_nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="kernel without autogroup scheduling")
async def test_a_warming_browser_yields_the_cpu_until_it_is_leased(backend):
    """Each browser has a session, so Linux schedules it as a CPU group of its own: a pool
    browser's group runs at nice 19 while it warms and sits idle, and at 0 once leased."""
    launched = await backend.launch(uuid.uuid4())
    assert _autogroup_nice(launched.pid) == 19
    backend.prioritize(pid=launched.pid, host=socket.gethostname())
    for _ in range(100):
        if _autogroup_nice(launched.pid) == 0:
            break
        await asyncio.sleep(0.02)
    assert _autogroup_nice(launched.pid) == 0
    urgent = await backend.launch(uuid.uuid4(), urgent=True)  # a session waits for this one
    assert _autogroup_nice(urgent.pid) == 0
