"""`make run`: every service as its own process on this host, logs interleaved, until Ctrl-C."""
import asyncio
import os
import signal
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.settings import ServiceSettings

SERVICES = {"sessions": 8000, "billing": 8001, "provisioner": 8002, "warm_pool": 8003}
DEV_DEFAULTS = {"STRIPE_WEBHOOK_SECRET": "whsec_dev", "ADMIN_TOKEN": "dev-admin-token", "LOG_FORMAT": "text"}
COLORS = {"sessions": 36, "billing": 33, "provisioner": 35, "warm_pool": 32}


async def ensure_database(url: str) -> None:
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "postgres"
    admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    conn = await asyncpg.connect(admin)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
            print(f"[run] created database {name}", flush=True)
    finally:
        await conn.close()


async def pump(name: str, stream: asyncio.StreamReader) -> None:
    prefix = f"\033[{COLORS[name]}m{name:<11}\033[0m| " if sys.stdout.isatty() else f"{name:<11}| "
    while line := await stream.readline():
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


async def main() -> int:
    settings = ServiceSettings()
    await ensure_database(settings.database_url)
    env = {**DEV_DEFAULTS, **os.environ, "PYTHONUNBUFFERED": "1"}
    procs = {}
    for name, port in SERVICES.items():
        procs[name] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{name}", env={**env, "HTTP_PORT": env.get(f"{name.upper()}_PORT", str(port))},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    pumps = [asyncio.create_task(pump(n, p.stdout)) for n, p in procs.items()]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("[run] sessions http://127.0.0.1:8000  billing :8001  provisioner :8002  warm_pool :8003 — Ctrl-C stops",
          flush=True)
    exited = asyncio.create_task(asyncio.wait([asyncio.create_task(p.wait()) for p in procs.values()],
                                              return_when=asyncio.FIRST_COMPLETED))
    await asyncio.wait([exited, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    print("[run] stopping", flush=True)
    for proc in procs.values():
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs.values())), 30)
    except asyncio.TimeoutError:
        for proc in procs.values():
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
    await asyncio.gather(*pumps, return_exceptions=True)
    failed = {n: p.returncode for n, p in procs.items() if p.returncode not in (0, -15)}
    if failed:
        print(f"[run] exited: {failed}", flush=True)
    return 1 if failed and not stop.is_set() else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
