"""CPU priority of local browsers.

Browsers start and wait in the pool under SCHED_IDLE: they only get CPU nobody else wants, so
launches refilling the pool never starve the control plane or the sessions in use. (A nice
value is not enough: Chromium running as root re-nices its own processes.) A leased browser
is moved back to the normal policy (LocalChromium.prioritize), every thread of its process group;
a sandboxed one gets its cgroup's full weight instead (Sandbox.prioritize).
"""
import contextlib
import os
from pathlib import Path

PROMOTE_AFTER_S = 3.0  # a launch still starting by then gets normal priority: a saturated host must not starve it


def set_autogroup_nice(pid: int, nice: int) -> None:
    """Each browser runs in a session of its own, which Linux's autogroup scheduling turns into
    a CPU group of its own, weighed against other groups by this nice value alone: without it,
    SCHED_IDLE inside a launching browser's group holds nothing back from the sessions in use."""
    with contextlib.suppress(OSError):  # no autogroup support, or not permitted: stays as it is
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def normal_priority(pgid: int) -> None:
    """SCHED_OTHER for every thread of every process in the group (the policy is per thread)."""
    set_autogroup_nice(pgid, 0)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            for tid in os.listdir(f"/proc/{entry.name}/task"):
                os.sched_setscheduler(int(tid), os.SCHED_OTHER, os.sched_param(0))
        except OSError:  # gone meanwhile, or not permitted (no CAP_SYS_NICE): stays idle-class
            continue

