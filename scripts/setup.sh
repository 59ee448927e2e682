#!/usr/bin/env bash
# Idempotent set-up for this host: system packages, local Postgres and RabbitMQ (unless
# DATABASE_URL / RABBITMQ_URL point elsewhere), the Python virtualenv. Safe to run every time.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
apt_updated=0
apt_install() {
  [ $apt_updated = 1 ] || { $SUDO apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# The pool runs the headless shell; the full browser stays for tools that want a window's build.
for pkg in chromium chromium-headless-shell; do
  command -v "$pkg" >/dev/null 2>&1 || { log "installing $pkg"; apt_install "$pkg"; }
done
# Every local browser runs in a sandbox (docs/SECURITY.md): bubblewrap, nftables, iproute2,
# util-linux's nsenter/setpriv/chrt.
need=()
for tool in bwrap:bubblewrap nft:nftables ip:iproute2 nsenter:util-linux setpriv:util-linux chrt:util-linux; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
[ ${#need[@]} = 0 ] || { log "installing ${need[*]}"; apt_install $(printf '%s\n' "${need[@]}" | sort -u); }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 1; done; return 1; }

if [ -z "${DATABASE_URL:-}" ] && ! port_open 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then log "installing postgresql"; apt_install postgresql; fi
  log "starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  wait_port 5432 || { log "postgresql did not come up"; exit 1; }
fi
if [ -z "${DATABASE_URL:-}" ]; then
  # Local dev: trust auth for 127.0.0.1 is what the defaults expect; make sure a role exists.
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='postgres'\"" >/dev/null 2>&1 || true
fi

if [ -z "${RABBITMQ_URL:-}" ] && ! port_open 5672; then
  command -v rabbitmq-server >/dev/null 2>&1 || { log "installing rabbitmq-server"; apt_install rabbitmq-server; }
  log "starting rabbitmq"
  rabbitmq-server -detached || true
  wait_port 5672 || { log "rabbitmq did not come up"; exit 1; }
  rabbitmqctl await_startup >/dev/null 2>&1 || true
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"; $PY -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  log "installing python dependencies"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  # The server's distribution was named browserfleet until the SDK (clients/python) took the name.
  if .venv/bin/python -I -c 'import importlib.metadata as m, sys
sys.exit("shared.cli" not in (m.distribution("browserfleet").read_text("entry_points.txt") or ""))' 2>/dev/null; then
    .venv/bin/pip uninstall -q -y browserfleet; rm -rf browserfleet.egg-info
  fi
  .venv/bin/pip install -q -e '.[test,bench]'
  rm -f .venv/.installed-*; touch "$stamp"
fi
# Puppeteer, for the tests that drive sessions as a Node.js customer would (tests/js).
if [ ! -d tests/js/node_modules ] || [ tests/js/package-lock.json -nt tests/js/node_modules ]; then
  command -v npm >/dev/null 2>&1 || { log "installing nodejs and npm"; apt_install nodejs npm; }
  log "installing tests/js (puppeteer-core)"
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
log "ready"
