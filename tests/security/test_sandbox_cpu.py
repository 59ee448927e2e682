"""A sandboxed browser's CPU share is its own cgroup's (beneath this test process's own cgroup):
every process of the browser is in that cgroup, a pool browser warms there at the idle weight,
and a lease (`LocalChromium.prioritize`) raises that one cgroup's weight, without walking the
host's processes (the fallback kept for unsandboxed browsers, which have no cgroup of their own)."""
import socket
from pathlib import Path
from uuid import uuid4

import pytest

from services.warm_pool.adapters import cpu_priority
from services.warm_pool.adapters.sandbox_config import IDLE_CPU_WEIGHT
from tests.chromium import sandboxed_pool_chromium

pytestmark = pytest.mark.e2e


@pytest.fixture
async def backend(tmp_path):
    async with sandboxed_pool_chromium(tmp_path, spare_networks=0) as backend:
        yield backend


def cpu_weight(tree, parts: tuple[str, ...]) -> int:
    """In cgroup v2 units (v1's cpu.shares converted back)."""
    if tree.version == 1:
        return round(int(tree.bases["cpu"].joinpath(*parts, "cpu.shares").read_text()) * 100 / 1024)
    return int(tree.base.joinpath(*parts, "cpu.weight").read_text())


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it (read from each process's /proc stat)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # not a process, or gone meanwhile
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in found]
        found.update(children)
        frontier.extend(children)
    return found


async def test_a_leased_browsers_own_cgroup_holds_all_its_processes_and_gets_the_full_weight(backend, monkeypatch):
    monkeypatch.setattr(cpu_priority, "PROMOTE_AFTER_S", 3600)  # a slow start on a loaded host is not promoted meanwhile
    walks = []
    monkeypatch.setattr(cpu_priority, "normal_priority", lambda pgid: walks.append(pgid))
    tree = backend.sandbox.cgroups
    browser_id = uuid4()

    launched = await backend.launch(browser_id, tenant_id=uuid4())  # a refill: not urgent
    parts = backend._sandboxed[browser_id].cgroup

    browser = descendants(launched.pid)
    assert len(browser) >= 3  # the launcher, Chromium and its helpers
    for procs in tree.procs_files(parts):
        assert browser <= {int(p) for p in procs.read_text().split()}, procs
    assert cpu_weight(tree, parts) == IDLE_CPU_WEIGHT

    backend.prioritize(pid=launched.pid, host=socket.gethostname())

    assert cpu_weight(tree, parts) == backend.sandbox.config.browser_cpu_weight
    assert walks == []
