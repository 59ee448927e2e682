"""The sandbox's pure parts: which cgroup hierarchy, what limits, which filter rules. cgroup v2
is exercised on a directory laid out like cgroupfs (this host mounts v1 controllers only; the
v1 code runs for real in tests/security)."""
import ipaddress
from pathlib import Path

import pytest

from services.warm_pool.adapters import cgroups, netns
from services.warm_pool.adapters.sandbox import Sandbox
from services.warm_pool.adapters.sandbox_config import SandboxConfig, browser_and_tenant_limits

V1 = "9:name=systemd:/\n8:pids:/\n4:memory:/job/42\n2:cpuacct:/\n1:cpu:/\n0::/\n"
V2 = "0::/system.slice/browserfleet.service\n"


def fake_v2(root: Path, procs: str = "101\n102\n") -> Path:
    own = root / "system.slice" / "browserfleet.service"
    own.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (own / "cgroup.controllers").write_text("cpu memory pids\n")
    (own / "cgroup.subtree_control").write_text("")
    (own / "cgroup.procs").write_text(procs)
    return own


def test_v1_groups_are_made_beneath_each_controllers_own_cgroup(tmp_path):
    for controller in ("memory", "pids", "cpu"):
        (tmp_path / controller / "job" / "42").mkdir(parents=True)
    tree = cgroups.detect("browserfleet-7", root=tmp_path, proc_cgroup=V1)
    assert isinstance(tree, cgroups.CgroupsV1)
    assert tree.bases == {"memory": tmp_path / "memory/job/42/browserfleet-7",
                          "pids": tmp_path / "pids/browserfleet-7", "cpu": tmp_path / "cpu/browserfleet-7"}
    tree.setup()
    limits = cgroups.Limits(memory_bytes=2**30, pids=512, cpu_weight=100)
    tree.create(("tenant-a",), limits, subtree=True)
    tree.create(("tenant-a", "browser-b"), limits, subtree=False)
    browser = ("tenant-a", "browser-b")
    assert (tree.bases["memory"] / "tenant-a/browser-b/memory.limit_in_bytes").read_text() == str(2**30)
    assert (tree.bases["pids"] / "tenant-a/browser-b/pids.max").read_text() == "512"
    assert (tree.bases["cpu"] / "tenant-a/browser-b/cpu.shares").read_text() == "1024"
    assert len(tree.procs_files(browser)) == 3


def test_v1_oom_kill_counter_means_the_browser_hit_its_limit(tmp_path):
    for controller in ("memory", "pids", "cpu"):
        (tmp_path / controller).mkdir()
    tree = cgroups.detect("bf", root=tmp_path, proc_cgroup="3:memory:/\n2:pids:/\n1:cpu:/\n")
    tree.setup()
    tree.create(("t",), cgroups.Limits(memory_bytes=1, pids=1, cpu_weight=1), subtree=True)
    tree.create(("t", "b"), cgroups.Limits(memory_bytes=1, pids=1, cpu_weight=1), subtree=False)
    oom = tree.bases["memory"] / "t/b/memory.oom_control"
    oom.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    assert not tree.oom_killed(("t", "b"))
    oom.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert tree.oom_killed(("t", "b"))


def test_v2_moves_its_processes_to_a_leaf_then_delegates_controllers(tmp_path):
    own = fake_v2(tmp_path)
    tree = cgroups.detect("browserfleet-7", root=tmp_path, proc_cgroup=V2)
    assert isinstance(tree, cgroups.CgroupsV2) and tree.base == own / "browserfleet-7"
    tree.setup()
    assert (own / "service" / "cgroup.procs").read_text() in ("101", "102")  # a real cgroupfs keeps both
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    limits = cgroups.Limits(memory_bytes=512 * 2**20, pids=256, cpu_weight=50)
    tree.create(("tenant-a",), limits, subtree=True)
    tree.create(("tenant-a", "browser-b"), limits, subtree=False)
    browser = own / "browserfleet-7/tenant-a/browser-b"
    assert (browser / "memory.max").read_text() == str(512 * 2**20)
    assert (browser / "memory.oom.group").read_text() == "1"  # the whole browser dies, not one tab
    assert (browser / "cpu.weight").read_text() == "50"
    (browser / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert tree.oom_killed(("tenant-a", "browser-b"))


def test_v2_without_delegated_controllers_is_refused(tmp_path):
    own = fake_v2(tmp_path)
    (own / "cgroup.controllers").write_text("cpu\n")
    tree = cgroups.detect("bf", root=tmp_path, proc_cgroup=V2)
    with pytest.raises(cgroups.CgroupError, match="memory"):
        tree.setup()


def test_a_tenants_group_is_limited_by_its_first_browser_only(tmp_path):
    own = fake_v2(tmp_path)
    tree = cgroups.detect("bf", root=tmp_path, proc_cgroup=V2)
    tree.setup()
    tree.create(("t",), cgroups.Limits(memory_bytes=100, pids=1, cpu_weight=1), subtree=True)
    tree.create(("t",), cgroups.Limits(memory_bytes=5, pids=1, cpu_weight=1), subtree=True)
    assert (own / "bf/t/memory.max").read_text() == "100"


def test_no_hierarchy_at_all_is_refused(tmp_path):
    with pytest.raises(cgroups.CgroupError):
        cgroups.detect("bf", root=tmp_path, proc_cgroup="0::/\n")


def test_tenant_share_follows_the_plan_capped_by_the_host(monkeypatch):
    monkeypatch.setattr("services.warm_pool.adapters.sandbox_config.host_memory_bytes", lambda: 16 * 2**30)
    sandbox = Sandbox(SandboxConfig(host_ports=[], browser_memory_mib=1024, tenant_memory_fraction=0.5,
                                    total_memory_fraction=1.0),
                      chromium_path="/bin/true", profile_root=Path("/nonexistent"))
    browser, tenant = browser_and_tenant_limits(sandbox.config, tenant_browsers=3)
    assert browser.memory_bytes == 2**30 and tenant.memory_bytes == 3 * 2**30
    _, big = browser_and_tenant_limits(sandbox.config, tenant_browsers=500)
    assert big.memory_bytes == 8 * 2**30  # half the host, however large the plan


def test_filter_table_drops_every_non_public_destination_and_host_networks():
    table = netns.host_table(name="browserfleet_1", cidr="10.213.0.0/16", extra_blocked=["192.0.2.0/24"])
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
                 "127.0.0.0/8", "224.0.0.0/4", "192.0.2.0/24"):
        assert cidr in table
    assert 'iifname "bfh*" meta nfproto ipv6 counter drop' in table
    assert 'iifname "bfh*" counter drop' in table  # nothing of the host itself
    assert 'oifname "bfh*" counter drop' in table  # nothing into a browser but replies


def test_each_slot_gets_its_own_pair_of_addresses():
    host = netns.HostNetwork(cidr="10.213.0.0/16", blocked=[])
    assert host.addresses(0) == ("10.213.0.1", "10.213.0.2")
    assert host.addresses(5) == ("10.213.0.21", "10.213.0.22")
    assert host.slots == 16384
    last = ipaddress.IPv4Address(host.addresses(host.slots - 1)[1])
    assert last in ipaddress.ip_network("10.213.0.0/16")
    with pytest.raises(netns.NetworkError):
        host.addresses(host.slots)


@pytest.mark.parametrize("value", ["53", "9222", "80,abc", "70000"])
def test_host_ports_that_cannot_be_relayed_are_refused(value, monkeypatch):
    from pydantic import ValidationError
    from services.warm_pool.settings import WarmPoolSettings
    monkeypatch.setenv("BROWSER_HOST_PORTS", value)
    with pytest.raises(ValidationError, match="BROWSER_HOST_PORTS"):
        WarmPoolSettings()


def test_host_ports_are_a_sorted_set(monkeypatch):
    from services.warm_pool.settings import WarmPoolSettings
    monkeypatch.setenv("BROWSER_HOST_PORTS", "8080, 3000,3000")
    assert WarmPoolSettings().host_ports() == [3000, 8080]


def _weighed_sandbox(tmp_path):
    for controller in ("memory", "pids", "cpu"):
        (tmp_path / controller).mkdir()
    sandbox = Sandbox(SandboxConfig(host_ports=[]), chromium_path="/bin/true", profile_root=Path("/nonexistent"))
    sandbox.cgroups = cgroups.detect("bf", root=tmp_path, proc_cgroup="3:memory:/\n2:pids:/\n1:cpu:/\n")
    sandbox.cgroups.setup()
    return sandbox


def _browser(sandbox, tenant, *, plan_browsers: int, urgent: bool):
    from uuid import uuid4

    from services.warm_pool.adapters.sandbox import Prepared
    from services.warm_pool.adapters.sandbox_config import IDLE_CPU_WEIGHT
    _, tenant_limits = browser_and_tenant_limits(sandbox.config, plan_browsers)
    prepared = Prepared(slot=0, net=None, uid=0, tenant_id=tenant, browser_id=uuid4(), argv=[], relays=None,
                        tenant_cap=tenant_limits.cpu_weight, cpu_weight=100 if urgent else IDLE_CPU_WEIGHT)
    sandbox.cgroups.create(prepared.cgroup[:1], tenant_limits, subtree=True)
    sandbox.cgroups.create(prepared.cgroup, cgroups.Limits(memory_bytes=1, pids=1, cpu_weight=prepared.cpu_weight),
                           subtree=False)
    sandbox._live[prepared.browser_id] = prepared
    sandbox._reweigh(prepared.cgroup[0])
    return prepared


def test_cpu_pool_browsers_weigh_nothing_until_leased_and_a_tenant_weighs_its_browsers_in_use(tmp_path):
    from uuid import uuid4
    sandbox = _weighed_sandbox(tmp_path)
    cpu = sandbox.cgroups.bases["cpu"]

    def shares(*parts):
        return int((cpu.joinpath(*parts) / "cpu.shares").read_text())
    a, b = uuid4(), uuid4()
    waiting = [_browser(sandbox, a, plan_browsers=3, urgent=False) for _ in range(2)]
    assert shares(*waiting[0].cgroup) == 10 and shares(f"tenant-{a}") == 20  # nothing against sessions in use
    used = _browser(sandbox, b, plan_browsers=1, urgent=True)
    assert shares(*used.cgroup) == 1024 and shares(f"tenant-{b}") == 1024
    assert shares() == 1024 + 20  # all browsers: what their browsers in use weigh, as unsandboxed ones would
    sandbox.prioritize(waiting[0])
    sandbox.prioritize(waiting[1])
    assert shares(*waiting[0].cgroup) == 1024 and shares(f"tenant-{a}") == 2048 and shares() == 3072
    extra = _browser(sandbox, b, plan_browsers=1, urgent=True)  # past its plan: the tenant weighs no more
    assert shares(*extra.cgroup) == 1024 and shares(f"tenant-{b}") == 1024
