"""The command a sandboxed browser is launched with, and the files it is given in place of the host's:
    sh (join cgroups) → setpriv (uid, no groups, no caps) → bwrap → chromium"""
from pathlib import Path

from services.warm_pool.adapters import netns

ETC_FROM_HOST = ("fonts", "ssl", "ca-certificates", "alternatives", "ld.so.cache", "localtime",
                 "mime.types")
# In place of the host's: no user, host or resolver of the host is visible to the browser.
SYNTHESIZED_ETC = {
    "passwd": "root:x:0:0::/:/usr/sbin/nologin\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n",
    "group": "root:x:0:\nnogroup:x:65534:\n",
    "hosts": "127.0.0.1 localhost\n::1 localhost\n",
    "resolv.conf": "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
}
# Joins the browser's cgroups before anything else runs, and offers it first to the kernel's OOM killer.
JOIN_CGROUPS = ('echo 1000 > /proc/self/oom_score_adj; n=$1; shift; '
                'while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 97; shift; n=$((n-1)); done; exec "$@"')


def write_etc(etc_dir: Path) -> None:
    etc_dir.mkdir(parents=True, exist_ok=True)
    etc_dir.chmod(0o755)
    for name, text in SYNTHESIZED_ETC.items():
        (etc_dir / name).write_text(text)


def namespaces_probe(uid: int) -> list[str]:
    """The same chain on `true`: it succeeds only where `uid` may create namespaces."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=-all", "bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev",
            "/usr/bin/true"]


def launch_command(*, cgroup_procs: list[str], uid: int, home_fd: int, marker: Path, etc_dir: Path,
                   chromium: str, flags: list[str]) -> list[str]:
    # No chrt: a pool browser's low priority is its cgroup's weight (a thread's scheduling
    # class would count only against the threads of its own group).
    return ["/bin/sh", "-c", JOIN_CGROUPS, "sh", str(len(cgroup_procs)), *cgroup_procs,
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--", *bwrap(home_fd, marker=marker, etc_dir=etc_dir), chromium, *flags,
            "--user-data-dir=/browser/profile", f"--remote-debugging-port={netns.DEVTOOLS_PORT}",
            "about:blank"]


def bwrap(home_fd: int, *, marker: Path, etc_dir: Path) -> list[str]:
    # The host directory is named on bwrap's command line only (ps, audits, `pgrep -f`): set and
    # unset again, so the browser's environment never holds it.
    args = ["bwrap", "--setenv", "BROWSERFLEET_DIR", str(marker), "--unsetenv", "BROWSERFLEET_DIR", "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--hostname", "browser",
            "--ro-bind", "/usr", "/usr", "--tmpfs", "/usr/local",  # what the host installed by hand stays out
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm"]
    for name in ETC_FROM_HOST:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    # The host's font cache: without it fontconfig rescans every font at each launch.
    args += ["--ro-bind-try", "/var/cache/fontconfig", "/var/cache/fontconfig"]
    for name in SYNTHESIZED_ETC:
        args += ["--ro-bind", str(etc_dir / name), f"/etc/{name}"]
    args += ["--bind-fd", str(home_fd), "/browser", "--chdir", "/browser",
             "--clearenv", "--setenv", "HOME", "/browser", "--setenv", "PATH", "/usr/bin:/bin",
             "--setenv", "TMPDIR", "/tmp", "--setenv", "XDG_CONFIG_HOME", "/browser/.config",
             "--setenv", "XDG_CACHE_HOME", "/browser/.cache", "--"]
    return args
