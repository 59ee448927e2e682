"""Test hosts of the test's own, in network namespaces it creates: one on a private address,
one on an address the sandbox treats as public. Traffic goes to them and to loopback only:
their routes are checked before anything is sent."""
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

LISTENER = r"""
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", 8080)); tcp.listen(64)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("0.0.0.0", 3478))
def serve_udp():
    while True:
        data, peer = udp.recvfrom(2048)
        log.write(f"udp {peer[0]}\n")
threading.Thread(target=serve_udp, daemon=True).start()
while True:
    conn, peer = tcp.accept()
    log.write(f"tcp {peer[0]}\n")
    try:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\naccess-control-allow-origin: *\r\n\r\ntest-host-ok")
    finally:
        conn.close()
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def route_dev(address: str) -> str:
    out = json.loads(subprocess.run(["ip", "-j", "route", "get", address], check=True,
                                    capture_output=True, text=True).stdout)
    return out[0]["dev"]


class NetHost:
    def __init__(self, name: str, veth: str, address: str, log: Path, proc: subprocess.Popen):
        self.name, self.veth, self.address, self.log, self.proc = name, veth, address, log, proc

    def hits(self, kind: str = "") -> list[str]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [line for line in lines if line.startswith(kind)]


@contextmanager
def make_test_hosts(workdir: Path):
    """Yields (private, public): a host at 10.99.N.2 (on a link of its own) and one at
    203.0.113.N (TEST-NET-3, routed through a link of its own: not on any of the host's links)."""
    n = random.randrange(1, 250)
    tag = f"{os.getpid() % 10000}{n}"[-6:]
    script = workdir / "listener.py"
    script.write_text(LISTENER)
    made, hosts = [], []
    try:
        specs = [("priv", f"10.99.{n}.1", f"10.99.{n}.2", None),
                 ("pub", f"10.98.{n}.1", f"10.98.{n}.2", f"203.0.113.{n}")]
        for kind, host_side, ns_side, extra in specs:
            ns, veth = f"bftest-{kind}-{tag}", f"bft{kind[:2]}{tag}"
            ip("netns", "add", ns)
            made.append((ns, veth))
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("addr", "add", f"{host_side}/30", "dev", veth)
            ip("link", "set", veth, "up")
            ip("-n", ns, "addr", "add", f"{ns_side}/30", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "route", "add", "default", "via", host_side)
            address = ns_side
            if extra:
                ip("-n", ns, "addr", "add", f"{extra}/32", "dev", "lo")
                ip("route", "add", f"{extra}/32", "via", ns_side, "dev", veth)
                address = extra
            # Never send anything unless it is sure to stay on this machine.
            assert route_dev(address) == veth, f"{address} is not routed to the test host"
            log = workdir / f"{kind}.log"
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(script), str(log)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            hosts.append(NetHost(ns, veth, address, log, proc))
        for host in hosts:  # listening before the test starts
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                probe = subprocess.run(["ip", "netns", "exec", host.name, "sh", "-c", "ss -ltn | grep -q :8080"])
                if probe.returncode == 0:
                    break
                time.sleep(0.05)
        yield hosts[0], hosts[1]
    finally:
        for host in hosts:
            host.proc.kill()
            host.proc.wait()
        for ns, veth in made:
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Canary:
    """A listener on a host port no browser may reach; records every connection."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.connections.append(peer[0])
            conn.close()

    def close(self):
        self.sock.close()
