"""A hostile tenant against the local sandbox (issue 14).

Two paying tenants on one host. Tenant A, through nothing but its own session's CDP URL (as any
customer has), tries to read the host's and tenant B's files, reach the host's and the
platform's ports, private addresses and B's browser, write files onto the host, and exhaust the
host. Each probe has a control that shows the same probe works where it is allowed, so a
failure means the sandbox stopped it.
"""
import asyncio
import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import asyncpg
import httpx
import pytest
from playwright.async_api import async_playwright

from shared.settings import DEFAULT_PLANS_FILE
from tests import infra
from tests.e2e.platform import bearer, keep_alive_session, paying_tenant, running_platform
from tests.helpers import eventually, local_page_server, page_port
from tests.security.nettest import Canary, make_test_hosts

pytestmark = pytest.mark.e2e
BROWSER_MEMORY_MIB = 512
DISK_MIB = 64

FETCH = """async (url) => {
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 4000);
    try { await fetch(url, {mode: 'no-cors', cache: 'no-store', signal: abort.signal}); return 'ok'; }
    catch (e) { return 'error: ' + e.name; }
}"""
STUN = """async (server) => {
    const pc = new RTCPeerConnection({iceServers: [{urls: 'stun:' + server}]});
    pc.createDataChannel('x');
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise(done => { pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && done();
                                setTimeout(done, 4000); });
    pc.close();
    return 'gathered';
}"""


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    with make_test_hosts(tmp_path_factory.mktemp("testhosts")) as pair:
        yield pair


@pytest.fixture(scope="module")
def platform(module_db, module_mq, tmp_path_factory, hosts):
    workdir = tmp_path_factory.mktemp("sandbox")
    plans = json.loads(DEFAULT_PLANS_FILE.read_text())
    plans["professional"]["prewarm_browsers"] = 1
    (workdir / "plans.json").write_text(json.dumps(plans))
    with running_platform(module_db, module_mq, workdir, PLANS_FILE=str(workdir / "plans.json"),
                          BROWSER_MEMORY_MIB=str(BROWSER_MEMORY_MIB), BROWSER_DISK_MIB=str(DISK_MIB)) as running:
        yield running


@pytest.fixture(scope="module")
async def tenants(platform):
    return await asyncio.gather(paying_tenant(platform), paying_tenant(platform))


async def browser_row(platform, session_id: str):
    conn = await asyncpg.connect(platform.database_url)
    try:
        return await conn.fetchrow("SELECT * FROM warm_pool.browsers WHERE session_id = $1", session_id)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def attack(platform, tenants):
    """Tenant A's browser, driven through its CDP URL, on a page served from a listed host port;
    and tenant B's session beside it."""
    (_, key_a), (_, key_b) = tenants
    a, b = await asyncio.gather(keep_alive_session(platform, key_a), keep_alive_session(platform, key_b))
    async with async_playwright() as pw:
        browser = await pw.chromium.connect_over_cdp(a["cdp_url"])
        page = await browser.contexts[0].new_page()
        with local_page_server() as url:
            await page.goto(url)
            yield {"browser": browser, "page": page, "a": a, "b": b, "page_url": url,
                   "row_a": await browser_row(platform, a["id"]), "row_b": await browser_row(platform, b["id"])}
        await browser.close()


async def read_file_url(page, url: str) -> str | None:
    """The text a file:// URL shows in the browser, or None if the browser cannot open it."""
    probe = await page.context.new_page()
    try:
        await probe.goto(url)
        return await probe.content()  # a file's text, or a listing's addRow("name", ...) calls
    except Exception as exc:
        if "ERR_FILE_NOT_FOUND" in str(exc) or "ERR_ACCESS_DENIED" in str(exc):
            return None
        raise
    finally:
        await probe.close()


# --- files ------------------------------------------------------------------------------------

async def test_a_browser_sees_no_file_of_the_host_or_of_another_tenant(attack, platform):
    page = attack["page"]
    b_dir = attack["row_b"]["profile_dir"]
    for target in [str(platform.profile_root), b_dir, f"{b_dir}/home/profile/", str(infra.ROOT),
                   f"{infra.ROOT}/.env", f"{infra.ROOT}/pyproject.toml", str(platform.workdir),
                   "/root", "/run/browserfleet", "/var/lib/postgresql", "/etc/shadow"]:
        assert await read_file_url(page, f"file://{target}") is None, target
    # Control: file:// works, on what the sandbox does show (a read-only system and its own files).
    assert "localhost" in await read_file_url(page, "file:///etc/hosts")
    assert "profile" in await read_file_url(page, "file:///browser/")


async def test_a_browser_sees_only_its_own_processes_and_a_clean_environment(attack, platform):
    page = attack["page"]
    warm_pool_pid = platform.procs["warm_pool"].proc.pid
    listing = await read_file_url(page, "file:///proc/")
    pids = {int(pid) for pid in re.findall(r'addRow\("(\d+)"', listing)}
    assert pids and warm_pool_pid not in pids and len(pids) < 50, pids
    assert await read_file_url(page, f"file:///proc/{warm_pool_pid}/environ") is None
    # The browser's own environment (read from the host: procfs files read as empty over file://).
    for pid in processes_of(attack["row_a"]["pid"]):
        environ = proc_file(pid, "environ")
        for secret_name in ("ADMIN_TOKEN", "DATABASE_URL", "RABBITMQ_URL", "STRIPE", "SECRET", "PASSWORD"):
            assert secret_name not in environ, (pid, cmdline(pid))


async def test_the_browser_runs_unprivileged_in_namespaces_of_its_own(attack, platform):
    warm_pool_pid = platform.procs["warm_pool"].proc.pid
    pids = [p for p in processes_of(attack["row_a"]["pid"]) if proc_file(p, "status")]
    assert pids, "the browser's processes are found by its launcher's process group"
    host_pidns = os.readlink(f"/proc/{warm_pool_pid}/ns/pid")
    host_netns = os.readlink(f"/proc/{warm_pool_pid}/ns/net")
    chromium = [p for p in pids if "chromium" in proc_file(p, "cmdline").split("\0")[0]]
    assert chromium
    for pid in pids:
        uids = [line for line in proc_file(pid, "status").splitlines() if line.startswith("Uid:")]
        if not uids:
            continue  # gone meanwhile
        assert all(int(u) != 0 for u in uids[0].split()[1:]), (pid, cmdline(pid), uids)
        assert ns(pid, "net") != host_netns
    for pid in chromium:
        assert ns(pid, "pid") != host_pidns
        assert "--no-sandbox" not in cmdline(pid)  # Chromium's own sandbox is on


def processes_of(launcher_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(launcher_pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def cmdline(pid: int) -> str:
    return proc_file(pid, "cmdline").replace("\0", " ")


def proc_file(pid: int, name: str) -> str:
    """A /proc file of a process ("" once the process is gone: renderers come and go)."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def ns(pid: int, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


# --- network ----------------------------------------------------------------------------------

async def test_host_loopback_only_the_listed_ports(attack, platform):
    page = attack["page"]
    canary = Canary()
    try:
        # Control: the listed port is the host's, at 127.0.0.1 and at localhost.
        assert await page.evaluate(FETCH, f"http://127.0.0.1:{page_port()}/") == "ok"
        assert await page.evaluate(FETCH, f"http://localhost:{page_port()}/") == "ok"
        own_ip = ipaddress.IPv4Address(attack["row_a"]["cdp_ws_url"].split("//")[1].split(":")[0])
        targets = [f"http://127.0.0.1:{canary.port}/", f"http://localhost:{canary.port}/",
                   f"http://[::1]:{canary.port}/", f"http://{own_ip - 1}:{canary.port}/",  # its gateway
                   *[f"http://{address}:{canary.port}/" for address in host_ipv4_addresses()]]
        for name, url in platform.urls.items():
            targets += [f"{url}/healthz", url.replace("127.0.0.1", "localhost") + "/metrics"]
        targets += ["http://127.0.0.1:5432/", "http://127.0.0.1:5672/", "http://127.0.0.1:15672/"]
        for target in targets:
            assert (await page.evaluate(FETCH, target)).startswith("error"), target
        assert canary.connections == []
    finally:
        canary.close()


def host_ipv4_addresses() -> list[str]:
    out = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True).stdout)
    return [a["local"] for link in out for a in link.get("addr_info", [])
            if not link["ifname"].startswith("bfh") and not a["local"].startswith("127.")]


async def test_no_other_browsers_devtools(attack):
    page = attack["page"]
    b_devtools = attack["row_b"]["cdp_ws_url"].replace("ws://", "http://").split("/devtools")[0]
    # Control: the platform reaches B's DevTools.
    assert httpx.get(f"{b_devtools}/json/version", timeout=5).status_code == 200
    assert (await page.evaluate(FETCH, f"{b_devtools}/json/version")).startswith("error")
    assert (await page.evaluate(FETCH, f"{b_devtools}/json/list")).startswith("error")


async def test_private_destinations_are_unreachable_public_ones_are_not(attack, hosts):
    private, public = hosts
    page = attack["page"]
    assert await page.evaluate(FETCH, f"http://{public.address}:8080/") == "ok"
    await eventually(lambda: public.hits("tcp"), what="the public test host saw the browser")
    for url in [f"http://{private.address}:8080/", "http://169.254.169.254/latest/meta-data/",
                "http://100.100.100.200/", "http://[fd00::1]:8080/", "http://[fe80::1]:8080/"]:
        assert (await page.evaluate(FETCH, url)).startswith("error"), url
    assert private.hits("tcp") == []


async def test_udp_and_webrtc_follow_the_same_rules(attack, hosts):
    private, public = hosts
    page = attack["page"]
    await page.evaluate(STUN, f"{public.address}:3478")
    await eventually(lambda: public.hits("udp"), what="a STUN packet at the public test host")
    await page.evaluate(STUN, f"{private.address}:3478")
    assert private.hits("udp") == []


async def test_a_context_with_its_own_proxy_is_still_inside(attack, hosts):
    private, _ = hosts
    canary = Canary()
    try:
        for proxy in (f"http://127.0.0.1:{canary.port}", f"http://{private.address}:8080", "direct://"):
            context = await attack["browser"].new_context(proxy={"server": proxy})
            page = await context.new_page()
            result = await page.evaluate(FETCH, f"http://{private.address}:8080/")
            assert result.startswith("error"), (proxy, result)
            await context.close()
        assert canary.connections == [] and private.hits("tcp") == []
    finally:
        canary.close()


# --- downloads --------------------------------------------------------------------------------

async def test_downloads_aimed_at_host_paths_land_nowhere_on_the_host(attack, tmp_path):
    browser, page = attack["browser"], attack["page"]
    cdp = await browser.new_browser_cdp_session()
    landing = tmp_path / "landing"
    landing.mkdir()
    site_packages = Path(sysconfig.get_paths()["purelib"])  # a .pth there runs at the next Python start
    home = Path(attack["row_a"]["profile_dir"]) / "home"
    results = {}
    for target in (str(landing), str(site_packages), "/root", "/browser/downloads"):
        done = asyncio.get_running_loop().create_future()

        def progress(event, done=done):
            if event["state"] in ("completed", "canceled") and not done.done():
                done.set_result(event["state"])
        cdp.on("Browser.downloadProgress", progress)
        await cdp.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": target,
                                                      "eventsEnabled": True})
        await page.evaluate("""() => { const a = document.createElement('a');
            a.href = URL.createObjectURL(new Blob(['import os; os.system("touch /tmp/pwned")']));
            a.download = 'evil.pth'; document.body.appendChild(a); a.click(); }""")
        results[target] = await asyncio.wait_for(done, 15)
    # Control: inside the sandbox a download lands in the browser's own directory (the relay keeps
    # every downloadPath a client sets pointed at its session's: /browser/downloads/<session>).
    assert results["/browser/downloads"] == "completed"
    landed = list((home / "downloads").glob("*/evil*.pth"))
    assert landed and all(p.read_bytes().startswith(b"import os") for p in landed)
    assert list(landing.iterdir()) == []
    assert not (site_packages / "evil.pth").exists()
    assert not Path("/root/evil.pth").exists()
    assert not Path("/tmp/pwned").exists()


# --- resources --------------------------------------------------------------------------------

async def test_a_browser_past_its_memory_limit_dies_alone(platform, tenants, attack):
    (_, key_a), _ = tenants
    victim = await keep_alive_session(platform, key_a)
    async with async_playwright() as pw:
        browser = await pw.chromium.connect_over_cdp(victim["cdp_url"])
        page = await browser.contexts[0].new_page()
        with pytest.raises(Exception):
            await page.evaluate("""() => { const hold = [];
                for (let i = 0; i < 64; i++) hold.push(new Uint8Array(64 * 1024 * 1024).fill(1));
                return hold.length; }""")

    async def crashed():
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"{platform.urls['sessions']}/v1/sessions/{victim['id']}", headers=bearer(key_a))
            return r.json() if r.json()["status"] == "completed" else None

    ended = await eventually(crashed, timeout=30, what="the session to end")
    assert ended["end_reason"] == "browser_crashed"
    # The other tenant's browser, and A's first one, go on working.
    assert await attack["page"].evaluate("1 + 1") == 2
    cdp_b = attack["b"]["cdp_url"]
    async with async_playwright() as pw:
        b = await pw.chromium.connect_over_cdp(cdp_b)
        assert await (await b.contexts[0].new_page()).evaluate("6 * 7") == 42
        await b.close()


# --- found by the red team (each failed before its fix) ----------------------------------------

async def test_a_browser_cannot_fill_the_storage_everyone_shares(platform, tenants):
    """Its directory is a filesystem of its own, BROWSER_DISK_MIB large: a 3x larger download
    fails there, and the host's PROFILE_ROOT does not fill. (A session of its own: the download
    may take its browser down with it.)"""
    (_, key_a), _ = tenants
    mine = await keep_alive_session(platform, key_a)
    home = Path((await browser_row(platform, mine["id"]))["profile_dir"]) / "home"
    assert os.path.ismount(home)
    size = os.statvfs(home)
    assert size.f_blocks * size.f_frsize <= DISK_MIB * 2**20
    free_before = shutil.disk_usage(platform.profile_root).free
    huge = bytes(3 * DISK_MIB * 2**20)  # served by the test's page server, streamed to the browser
    with local_page_server() as page_url, local_page_server(huge) as huge_url:
        async with async_playwright() as pw:
            browser = await pw.chromium.connect_over_cdp(mine["cdp_url"])
            page = await browser.contexts[0].new_page()
            await page.goto(page_url)
            cdp = await browser.new_browser_cdp_session()
            done = asyncio.get_running_loop().create_future()
            cdp.on("Browser.downloadProgress", lambda e: e["state"] in ("completed", "canceled")
                   and not done.done() and done.set_result(e["state"]))
            await cdp.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": "/browser/downloads",
                                                          "eventsEnabled": True})
            await page.evaluate("""url => { const a = document.createElement('a');
                a.href = url; a.download = 'huge.bin'; document.body.appendChild(a); a.click(); }""", huge_url)
            assert await asyncio.wait_for(done, 120) == "canceled"
            await browser.close()
    assert shutil.disk_usage(platform.profile_root).free > free_before - 2 * DISK_MIB * 2**20


async def test_a_flushed_host_ruleset_opens_nothing_and_is_put_back(attack, platform, hosts):
    private, _ = hosts
    page = attack["page"]
    table = f"browserfleet_{platform.procs['warm_pool'].proc.pid}"
    subprocess.run(["nft", "delete", "table", "inet", table], check=True)  # a firewall reload's flush
    b_devtools = attack["row_b"]["cdp_ws_url"].replace("ws://", "http://").split("/devtools")[0]
    assert (await page.evaluate(FETCH, f"{b_devtools}/json/version")).startswith("error")
    assert (await page.evaluate(FETCH, f"http://{private.address}:8080/")).startswith("error")
    assert private.hits("tcp") == []
    await eventually(lambda: table in subprocess.run(["nft", "list", "tables"], capture_output=True,
                                                     text=True).stdout, what="the filter table restored")


async def test_relayed_connections_are_capped_per_browser(attack, platform, tenants):
    """A context proxied into the DNS relay (and DNS over TCP) cannot make warm_pool hold
    descriptors without bound; other tenants' browsers still launch."""
    warm_pool = platform.procs["warm_pool"].proc.pid
    fds_before = len(os.listdir(f"/proc/{warm_pool}/fd"))
    context = await attack["browser"].new_context(proxy={"server": "http://127.0.0.1:53"})
    page = await context.new_page()
    await page.evaluate("""() => Promise.all([...Array(300).keys()].map(i =>
        fetch(`http://site${i}.example/`, {mode: 'no-cors'}).catch(() => null)))""")
    assert len(os.listdir(f"/proc/{warm_pool}/fd")) < fds_before + 100
    await context.close()
    _, (_, key_b) = tenants
    fresh = await keep_alive_session(platform, key_b)  # a launch for the other tenant still works
    assert fresh["status"] == "running"


def test_only_root_on_the_host_reaches_a_browsers_devtools(attack):
    devtools = attack["row_b"]["cdp_ws_url"].replace("ws://", "http://").split("/devtools")[0]
    probe = [sys.executable, "-c", f"import urllib.request; urllib.request.urlopen('{devtools}/json/version', timeout=3)"]
    assert subprocess.run(probe, capture_output=True).returncode == 0  # control: root (the platform)
    as_nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *probe],
                               capture_output=True)
    assert as_nobody.returncode != 0


async def test_what_the_host_installed_by_hand_is_not_shown(attack):
    page = attack["page"]
    assert "lib" in await read_file_url(page, "file:///usr/")  # control: the system is there
    listing = await read_file_url(page, "file:///usr/local/")
    assert listing is None or "addRow(" not in listing.split("<tbody")[-1].replace('addRow("..",', "")


async def test_a_network_the_host_joins_later_is_blocked_too(attack, platform, tmp_path):
    page = attack["page"]
    n = random.randrange(1, 250)
    ns, veth = f"bftest-late-{n}", f"bftla{n}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns],
                    ["addr", "add", f"198.51.100.1/24", "dev", veth], ["link", "set", veth, "up"],
                    ["-n", ns, "addr", "add", "198.51.100.2/24", "dev", "eth0"],
                    ["-n", ns, "link", "set", "eth0", "up"],
                    ["-n", ns, "link", "set", "lo", "up"]):
            subprocess.run(["ip", *cmd], check=True)
        lan = "198.51.100.2"  # the host's new LAN (TEST-NET-2, public-looking, on a link of the host's)
        assert json.loads(subprocess.run(["ip", "-j", "route", "get", lan], capture_output=True,
                                         text=True).stdout)[0]["dev"] == veth
        log = tmp_path / "late.log"
        listener = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                                     "import socket,sys\ns=socket.socket();s.setsockopt(1,2,1);s.bind(('0.0.0.0',8080));s.listen()\n"
                                     "while True:\n c,a=s.accept();open(sys.argv[1],'a').write(a[0]+'\\n');c.close()",
                                     str(log)])
        try:
            table = f"browserfleet_{platform.procs['warm_pool'].proc.pid}"

            def blocked() -> bool:  # warm_pool's reconcile (every second) learns the new network
                return "198.51.100.0/24" in subprocess.run(["nft", "list", "set", "inet", table, "blocked4"],
                                                           capture_output=True, text=True).stdout
            await eventually(blocked, timeout=15, what="warm_pool's filter table blocking the new network")
            await eventually(lambda: ":8080" in subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltnH"],
                                                               capture_output=True, text=True).stdout,
                             what="the listener on the new network")  # else a refusal would prove nothing
            assert (await page.evaluate(FETCH, f"http://{lan}:8080/")).startswith("error")
            assert not log.exists() or log.read_text() == ""
        finally:
            listener.kill()
            listener.wait()
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
