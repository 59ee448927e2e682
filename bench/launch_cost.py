"""CPU-seconds one Chromium launch costs: the full browser with plain headless flags and with the
pool's flags, and the headless shell (the pool's default binary) with the pool's flags.

`python -m bench.launch_cost` — launches one at a time on an otherwise idle host, waits until
DevTools answers and then 2 s more, and sums the CPU time of the browser's process group."""
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request

from services.warm_pool.adapters.chromium_launch import FLAGS as POOL_FLAGS

PLAIN = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0"]


def group_cpu_seconds(pgid: int) -> float:
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != pgid:
                continue
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue
    return total


def one_launch(flags: list[str], binary: str = "/usr/bin/chromium") -> tuple[float, float]:
    """(seconds until DevTools answers, CPU-seconds 2 s after that)."""
    profile = tempfile.mkdtemp(prefix="bf-launch-")
    started = time.perf_counter()
    proc = subprocess.Popen([binary, *flags, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "TMPDIR": profile})
    try:
        while True:
            try:
                port = int(open(os.path.join(profile, "DevToolsActivePort")).read().split()[0])
                urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=1).read()
                break
            except (OSError, ValueError, IndexError):
                time.sleep(0.01)
        ready = time.perf_counter() - started
        time.sleep(2.0)
        return ready, group_cpu_seconds(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def main(samples: int = 6) -> None:
    shell = "/usr/bin/chromium-headless-shell"
    for name, binary, flags in (("chromium, plain headless flags", "/usr/bin/chromium", PLAIN),
                                ("chromium, the pool's flags", "/usr/bin/chromium", POOL_FLAGS),
                                ("headless shell, the pool's flags", shell, POOL_FLAGS)):
        if not os.access(binary, os.X_OK):
            print(f"{name:34} not installed")
            continue
        runs = [one_launch(flags, binary) for _ in range(samples)]
        print(f"{name:34} ready p50 {statistics.median(r[0] for r in runs) * 1000:5.0f} ms, "
              f"CPU per launch p50 {statistics.median(r[1] for r in runs):.2f} s (n={samples})")


if __name__ == "__main__":
    main()
