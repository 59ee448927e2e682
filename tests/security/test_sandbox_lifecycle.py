"""The sandbox's life on the host: it is built or warm_pool does not start; without it a host
serves one tenant; and a stop, a kill -9 and a restart leave nothing of it behind."""
import asyncio
import os
import signal

import httpx
import pytest

from tests import infra, sandbox_audit
from tests.e2e.platform import bearer, keep_alive_session, paying_tenant, running_platform
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


def test_warm_pool_refuses_to_start_where_no_sandbox_can_be_built(fresh_db, fresh_mq, tmp_path):
    service = infra.ServiceProcess("warm_pool", {
        "DATABASE_URL": fresh_db, "RABBITMQ_URL": fresh_mq, "HTTP_PORT": str(infra.free_port()),
        "PROFILE_ROOT": str(infra.browser_root(tmp_path)), "LOG_FORMAT": "text",
        "PATH": str(tmp_path / "no-tools")}, tmp_path)  # bubblewrap, nftables, iproute2 all missing
    service.start()
    assert service.proc.wait(60) != 0
    log = service.log_path.read_text()
    assert "cannot sandbox browsers" in log and "bwrap" in log and "BROWSER_SANDBOX=off" in log


async def test_without_a_sandbox_a_host_serves_one_tenant(module_db, module_mq, tmp_path):
    with running_platform(module_db, module_mq, tmp_path, BROWSER_SANDBOX="off") as platform:
        _, key_a = await paying_tenant(platform)
        first = await keep_alive_session(platform, key_a)  # the first tenant this host runs browsers for
        _, key_b = await paying_tenant(platform)
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"{platform.urls['sessions']}/v1/sessions", headers=bearer(key_b), json={})
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "no_capacity"
            assert "BROWSER_SANDBOX=off" in r.json()["error"]["message"]
            again = await http.post(f"{platform.urls['sessions']}/v1/sessions", headers=bearer(key_a), json={})
            assert again.status_code == 201, again.text  # the tenant it serves goes on
            await http.post(f"{platform.urls['sessions']}/v1/sessions/{first['id']}/end", headers=bearer(key_a))
        log = (platform.logs / "warm_pool.log").read_text()
        assert "serves one tenant only" in log


async def test_stop_kill_and_restart_leave_nothing_of_a_sandbox(module_db, module_mq, tmp_path):
    with running_platform(module_db, module_mq, tmp_path) as platform:
        (_, key), = await asyncio.gather(paying_tenant(platform))
        await keep_alive_session(platform, key)
        first = platform.procs["warm_pool"]
        first_pid = first.proc.pid
        slots = await eventually(lambda: sandbox_audit.slots_of(first_pid), what="sandboxes of the first warm_pool")
        assert sandbox_audit.leftovers(first_pid, slots)  # control: the audit sees a live sandbox

        os.kill(first_pid, signal.SIGKILL)  # no clean-up runs
        first.proc.wait(10)
        first.start()
        first.wait_ready()
        second_pid = first.proc.pid
        # The successor removes what the dead one left: processes, namespaces, veths, cgroups, table.
        await eventually(lambda: not sandbox_audit.leftovers(first_pid, slots), timeout=30,
                         what=f"the dead warm_pool's sandboxes removed: {sandbox_audit.leftovers(first_pid, slots)}")
        second_slots = await eventually(lambda: sandbox_audit.slots_of(second_pid), what="the successor's pool")
    # A clean stop (SIGTERM, as Ctrl-C) removes everything of the successor's too.
    assert sandbox_audit.leftovers(second_pid, second_slots) == {}
