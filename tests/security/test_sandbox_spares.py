"""Network namespaces built ahead of launches (sandbox.py's spares) are single-use: a tenant's
browser may leave anything in its namespace (links, sockets, conntrack entries, a changed
sysctl), and no later browser ever gets that namespace. Each browser is marked by what it
leaves in its namespace; no spare and no later browser carries the mark. A spare built before
the host's filter rules changed is never handed out."""
import os
import subprocess
from uuid import uuid4

import pytest

from tests import sandbox_audit
from tests.chromium import sandboxed_pool_chromium
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


def marked(name: str) -> bool:
    return subprocess.run(["ip", "-n", name, "link", "show", "bfused"], capture_output=True).returncode == 0


def netns_names() -> set[str]:
    return {line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                       text=True).stdout.splitlines() if line}


def processes_in(name: str) -> str:
    return subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.strip()


@pytest.fixture
async def backend(tmp_path):
    async with sandboxed_pool_chromium(tmp_path, spare_networks=2) as backend:
        yield backend


async def test_a_browsers_network_namespace_is_never_anyone_elses(backend):
    sandbox, tenant, slots, from_spares = backend.sandbox, uuid4(), set(), 0
    for i in range(4):
        spares = {s.net.name for s in sandbox.slots.spares}
        browser_id = uuid4()
        launched = await backend.launch(browser_id, tenant_id=tenant, urgent=True)
        net = backend._sandboxed[browser_id].net
        slots.add(net.slot)
        from_spares += net.name in spares
        assert not marked(net.name)  # no earlier browser's
        assert os.stat(f"/proc/{launched.pid}/ns/net").st_ino == os.stat(net.path).st_ino  # started inside it
        # What a tenant may leave behind (it has a whole browser; here the test does it for it).
        subprocess.run(["ip", "-n", net.name, "link", "add", "bfused", "type", "veth", "peer", "name", "bfused2"], check=True)
        await backend.kill(browser_id)
        assert not any(marked(name) for name in netns_names() if name.startswith("browserfleet-"))
        spares = await eventually(lambda: len(sandbox.slots.spares) == 2 and sandbox.slots.spares, what="two spares")
        for spare in spares:
            assert processes_in(spare.net.name) == ""  # nothing ever ran there
            assert not marked(spare.net.name)
            slots.add(spare.net.slot)
    assert from_spares == 3  # the first launch built its own; the others took spares
    await backend.close()
    assert sandbox_audit.leftovers(os.getpid(), slots) == {}  # spares go with the stop


async def test_a_spare_from_before_the_host_joined_a_network_is_not_used(backend):
    sandbox, tenant = backend.sandbox, uuid4()
    first = uuid4()
    await backend.launch(first, tenant_id=tenant, urgent=True)
    old = await eventually(lambda: len(sandbox.slots.spares) == 2 and list(sandbox.slots.spares), what="two spares")
    sandbox.host._networks = [*sandbox.host._networks, "192.0.2.0/24"]  # as `ensure` does when the host joins it
    second = uuid4()
    await backend.launch(second, tenant_id=tenant, urgent=True)
    net = backend._sandboxed[second].net
    assert net.name not in {s.net.name for s in old}
    rules = subprocess.run(["ip", "netns", "exec", net.name, "nft", "list", "set", "inet", "browserfleet_egress",
                            "blocked4"], capture_output=True, text=True, check=True).stdout
    assert "192.0.2.0/24" in rules
    await eventually(lambda: not {s.net.name for s in old} & netns_names(), what="the stale spares removed")
