"""A network namespace per browser: the public internet through NAT, and nothing else.

Host side (one nftables table per warm_pool process, `inet browserfleet_<pid>`, and a blackhole
route for the whole BROWSER_NET_CIDR beneath the browsers' own /30s):
- nothing that comes in from a browser's veth (`bfh*`) reaches the host itself (input: only
  replies to connections the host opened, e.g. to DevTools);
- nothing is forwarded into a browser but replies, so no browser reaches another;
- what a browser sends on is dropped when it is IPv6 or bound for a non-public IPv4 range
  (private, loopback, link-local and metadata, CGNAT, multicast, reserved) or for a network the
  host is attached to; the rest leaves masqueraded.
- at most `BROWSER_MAX_CONNECTIONS` tracked connections per browser (the host's conntrack table
  is shared by everyone);
- DevTools ports are reachable from the host by root only (the platform), not by any local user.
Browser side: the same egress rules once more (a flushed host ruleset opens nothing), and
`eth0` with one IPv4 address and a default route, no IPv6; DevTools, which
Chromium binds to the namespace's 127.0.0.1, is DNAT'ed from the veth address so the platform
reaches it. DNS and the `BROWSER_HOST_PORTS` are served inside the namespace by sockets this
process opens there (see relays.py), so the browser never needs a route to the host.
"""
import asyncio
import contextlib
import ctypes
import ipaddress
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000
DEVTOOLS_PORT = 9222
TABLE_PREFIX = "browserfleet_"

# Never reachable from a browser (IANA special-purpose registry, minus what is routed publicly).
BLOCKED_V4 = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
              "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
              "224.0.0.0/4", "240.0.0.0/4"]

_libc = ctypes.CDLL(None, use_errno=True)
# One thread enters namespaces, so no other work ever runs on a thread that is inside one.
NS_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netns")


class NetworkError(Exception):
    pass


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def in_netns(path: str, fn):
    """Run `fn` on this thread inside the network namespace at `path`, then come back.
    Sockets made meanwhile stay in that namespace for their whole life."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            return fn()
        finally:
            try:
                setns(own)
            except OSError:  # this thread is stranded in a browser's namespace: never reuse it
                os._exit(70)
    finally:
        os.close(own)


async def run(*args: str, stdin: str | None = None, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(args[:3])} failed: {err.decode(errors='replace').strip()[:300]}")
    return out.decode()


def run_sync(*args: str, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(args, input=stdin, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(args[:3])} failed: {proc.stderr.strip()[:300]}")
    return proc.stdout


def host_networks() -> list[str]:
    """IPv4 networks the host is attached to (its LAN, the gateway's subnet): as off-limits as
    private ranges, whatever their addresses."""
    routes = json.loads(run_sync("ip", "-j", "-4", "route", "show", "table", "all") or "[]")
    nets = set()
    for route in routes:
        dst, dev = route.get("dst", ""), route.get("dev", "")
        if dev.startswith("bfh") or dst in ("", "default") or route.get("type") in ("broadcast",):
            continue
        if route.get("scope") in ("link", "host") or route.get("type") == "local":
            with contextlib.suppress(ValueError):
                nets.add(str(ipaddress.ip_network(dst, strict=False)))
    return sorted(nets)


def blocked_set(extra: list[str]) -> str:
    return ", ".join(dict.fromkeys([*BLOCKED_V4, *extra]))


def host_table(*, name: str, cidr: str, extra_blocked: list[str], max_connections: int = 2048) -> str:
    """Atomic: the old table (if any) goes and the new one comes in one nft transaction."""
    return f"""
table inet {name} {{}}
delete table inet {name}
table inet {name} {{
  set blocked4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {blocked_set(extra_blocked)} }} }}
  set connections {{ type ipv4_addr; flags dynamic; size 65535; }}
  chain input {{
    type filter hook input priority filter - 5; policy accept;
    iifname "bfh*" ct state established,related accept
    iifname "bfh*" counter drop
  }}
  chain forward {{
    type filter hook forward priority filter - 5; policy accept;
    oifname "bfh*" ct state established,related accept
    oifname "bfh*" counter drop
    iifname "bfh*" meta nfproto ipv6 counter drop
    iifname "bfh*" ip daddr @blocked4 counter drop
    iifname "bfh*" ct state new add @connections {{ ip saddr ct count over {max_connections} }} counter drop
  }}
  chain output {{
    type filter hook output priority filter - 5; policy accept;
    oifname "bfh*" tcp dport {DEVTOOLS_PORT} meta skuid != 0 counter drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {cidr} oifname != "bfh*" masquerade
  }}
}}
"""


def browser_tables(*, ip: str, extra_blocked: list[str]) -> str:
    """Inside a browser's namespace: DevTools from its veth, and the same egress rules as the
    host's once more, so a flushed host ruleset (a firewall reload) does not open anything."""
    return f"""
table ip browserfleet {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "eth0" ip daddr {ip} tcp dport {DEVTOOLS_PORT} dnat to 127.0.0.1:{DEVTOOLS_PORT}
  }}
}}
table inet browserfleet_egress {{
  set blocked4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {blocked_set(extra_blocked)} }} }}
  chain output {{
    type filter hook output priority filter; policy accept;
    oifname "lo" accept
    ct state established,related accept
    meta nfproto ipv6 counter drop
    ip daddr @blocked4 counter drop
  }}
}}
"""


class HostNetwork:
    """The host's half: forwarding on, and this process's filter table."""

    def __init__(self, *, cidr: str, blocked: list[str], max_connections: int = 2048):
        self.cidr = ipaddress.ip_network(cidr)
        self.blocked = blocked
        self.max_connections = max_connections
        self.table = f"{TABLE_PREFIX}{os.getpid()}"
        self._forward_was = None
        self._networks: list[str] = []

    @property
    def all_blocked(self) -> list[str]:
        return [*self._networks, *self.blocked]

    def _apply(self) -> None:
        run_sync("nft", "-f", "-", stdin=host_table(name=self.table, cidr=str(self.cidr),
                                                    extra_blocked=self.all_blocked,
                                                    max_connections=self.max_connections))

    def ensure(self, tables: list[str] | None = None) -> str | None:
        """Put the table back if something removed it (a firewall reload flushes the ruleset),
        and follow networks the host joined since: what changed, or None. `tables`: this host's
        tables as just listed (one `nft` less)."""
        networks = host_networks()
        present = self.table in (self.tables() if tables is None else tables)
        if present and networks == self._networks:
            return None
        why = "the filter table was gone" if not present else f"host networks now {networks}"
        self._networks = networks
        self._apply()
        return why

    def setup(self) -> None:
        self._networks = host_networks()
        self._apply()  # replaces a dead namesake's table (pid reuse) in the same transaction
        # A browser's /30 is routed to its veth while it lives; the rest of the range (a browser
        # that has gone) is a black hole, never the default route.
        run_sync("ip", "route", "replace", "blackhole", str(self.cidr))
        forward = Path("/proc/sys/net/ipv4/ip_forward")
        self._forward_was = forward.read_text().strip()
        if self._forward_was != "1":
            forward.write_text("1")

    def teardown(self) -> None:
        run_sync("nft", "delete", "table", "inet", self.table, check=False)
        if not self.tables():  # the last warm_pool on this host
            run_sync("ip", "route", "del", "blackhole", str(self.cidr), check=False)
            if self._forward_was == "0":
                Path("/proc/sys/net/ipv4/ip_forward").write_text("0")

    @staticmethod
    def tables() -> list[str]:
        out = run_sync("nft", "-j", "list", "tables", check=False)
        with contextlib.suppress(ValueError):
            return [t["table"]["name"] for t in json.loads(out)["nftables"]
                    if "table" in t and t["table"]["name"].startswith(TABLE_PREFIX)]
        return []

    def remove_stale(self, alive, tables: list[str] | None = None) -> list[str]:
        stale = [t for t in (self.tables() if tables is None else tables) if t != self.table and t[len(TABLE_PREFIX):].isdigit()
                 and not alive(int(t[len(TABLE_PREFIX):]))]
        for table in stale:
            run_sync("nft", "delete", "table", "inet", table, check=False)
        return stale

    def addresses(self, slot: int) -> tuple[str, str]:
        """(host side, browser side) of the slot's /30."""
        base = int(self.cidr.network_address) + 4 * slot
        if base + 3 > int(self.cidr.broadcast_address):
            raise NetworkError(f"slot {slot} is outside BROWSER_NET_CIDR {self.cidr}")
        return str(ipaddress.IPv4Address(base + 1)), str(ipaddress.IPv4Address(base + 2))

    @property
    def slots(self) -> int:
        return self.cidr.num_addresses // 4


@dataclass(frozen=True)
class BrowserNet:
    slot: int
    host_ip: str
    ip: str

    @property
    def name(self) -> str:
        return f"browserfleet-{self.slot}"

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def veth(self) -> str:
        return f"bfh{self.slot}"


async def create(net: BrowserNet, *, blocked: list[str]) -> None:
    """Two processes: the host side in one `ip -batch`; the namespace's side (its links, the
    sysctl and both nft tables) from a thread inside the namespace, where `ip` and `nft` start
    already in it (no nsenter, no shell)."""
    await run("ip", "-batch", "-", stdin="\n".join([
        f"netns add {net.name}",
        f"link add {net.veth} type veth peer name eth0 netns {net.name}",
        f"link set dev {net.veth} addrgenmode none",
        f"addr add {net.host_ip}/30 dev {net.veth}",
        f"link set {net.veth} up", ""]))
    inside = "\n".join(["link set lo up", "link set dev eth0 addrgenmode none", f"addr add {net.ip}/30 dev eth0",
                        "link set eth0 up", f"route add default via {net.host_ip}", ""])
    tables = browser_tables(ip=net.ip, extra_blocked=blocked)

    def configure():
        run_sync("ip", "-batch", "-", stdin=inside)
        # /proc/sys/net is the namespace of the thread that opens it: this one's.
        with open("/proc/sys/net/ipv4/conf/eth0/route_localnet", "w") as f:
            f.write("1")
        run_sync("nft", "-f", "-", stdin=tables)
    await asyncio.get_running_loop().run_in_executor(NS_THREAD, in_netns, net.path, configure)


async def destroy(slot: int) -> None:
    """Its processes are gone: the veth pair, then the namespace. Deleting the host's end first
    (one `ip -batch`): a deleted namespace takes its veth with it only when the kernel gets round
    to freeing it, so the pair would outlive the release by a moment (and a slot reused at once
    would find its veth name taken)."""
    await run("ip", "-force", "-batch", "-", stdin=f"link del bfh{slot}\nnetns del browserfleet-{slot}\n",
              check=False)


def destroy_sync(slot: int) -> None:
    run_sync("ip", "link", "del", f"bfh{slot}", check=False)
    run_sync("ip", "netns", "del", f"browserfleet-{slot}", check=False)
