"""Per-browser resource readings from /proc: PSS and CPU time of a Chromium process tree."""
import os
from collections import defaultdict

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def browser_groups(marker: str) -> dict[int, list[int]]:
    """Process groups (one per browser) of Chromium processes whose leader mentions `marker`."""
    groups: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            pid = int(entry)
            pgid = _pgid(pid)
            if pgid is not None and "chrom" in _cmdline(pid):
                groups[pgid].append(pid)
    return {pgid: pids for pgid, pids in groups.items() if marker in _cmdline(pgid)}


def pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError):
            pass
    return total / CLK_TCK


def mem_available_kib() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0
