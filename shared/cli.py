"""`browserfleet` — the operator CLI. Talks to each service's admin HTTP API with ADMIN_TOKEN.

    browserfleet tenants list | tenants show TENANT_ID
    browserfleet api-keys create TENANT_ID | api-keys revoke KEY_ID
    browserfleet sessions list [--tenant ID] [--status running] | sessions end SESSION_ID
    browserfleet dlq list | dlq replay SERVICE QUEUE
    browserfleet outbox parked | outbox replay SERVICE [--id ID] | outbox discard SERVICE ID
    browserfleet pool status
    browserfleet dashboard-link TENANT_ID
    browserfleet billing refused-events [--tenant ID] [--limit N]

Service URLs: SESSIONS_URL, BILLING_URL, PROVISIONER_URL, WARM_POOL_URL (default: this host's ports).
"""
import argparse
import os
import re
import sys

import httpx
from dotenv import dotenv_values

DEFAULT_URLS = {"sessions": "http://127.0.0.1:8000", "billing": "http://127.0.0.1:8001",
                "provisioner": "http://127.0.0.1:8002", "warm_pool": "http://127.0.0.1:8003"}


class Admin:
    def __init__(self, token: str, urls: dict[str, str]):
        self.urls = urls
        self.http = httpx.Client(headers={"authorization": f"Bearer {token}"}, timeout=15)

    def call(self, service: str, method: str, path: str, **kw):
        response = self.http.request(method, self.urls[service] + path, **kw)
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise SystemExit(f"{service}: {response.status_code} {error['code']}: {error['message']}")
            except (ValueError, KeyError):
                raise SystemExit(f"{service}: {response.status_code} {response.text[:200]}") from None
        return response.json() if response.content else None


_ISO_TIME = re.compile(r"^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]00:00)$")


def cell(value) -> str:
    """A table cell: empty for null, UTC timestamps to the second."""
    if value is None:
        return ""
    return _ISO_TIME.sub(r"\1 \2", str(value))


def table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([line([c.upper() for c in columns]), line(["-" * w for w in widths])] + [line(r) for r in cells])


def pairs(record: dict) -> str:
    width = max(len(k) for k in record) if record else 0
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in record.items())


def run(args, admin: Admin) -> str:
    if args.group == "tenants" and args.action == "list":
        data = admin.call("sessions", "GET", "/v1/admin/tenants")["data"]
        return table(data, ["tenant_id", "plan", "status", "provisioned", "credits_remaining", "sessions_running"])
    if args.group == "tenants" and args.action == "show":
        tenant = admin.call("sessions", "GET", f"/v1/admin/tenants/{args.id}")
        account = admin.call("billing", "GET", f"/v1/admin/accounts/{args.id}")
        return pairs({**tenant, **{f"billing_{k}": v for k, v in account.items() if k != "tenant_id"}})
    if args.group == "api-keys" and args.action == "create":
        created = admin.call("sessions", "POST", f"/v1/admin/tenants/{args.id}/api-keys")
        return pairs({**created, "note": "the key is shown once; store it now"})
    if args.group == "api-keys" and args.action == "revoke":
        admin.call("sessions", "DELETE", f"/v1/admin/api-keys/{args.id}")
        return f"revoked {args.id}"
    if args.group == "sessions" and args.action == "list":
        params = {k: v for k, v in {"tenant_id": args.tenant, "status": args.status, "limit": args.limit}.items() if v}
        data = admin.call("sessions", "GET", "/v1/admin/sessions", params=params)["data"]
        return table(data, ["id", "tenant_id", "status", "warm", "created_at", "duration_ms", "cost", "end_reason"])
    if args.group == "sessions" and args.action == "end":
        return pairs(admin.call("sessions", "POST", f"/v1/admin/sessions/{args.id}/end"))
    if args.group == "dlq" and args.action == "list":
        rows = []
        for service in DEFAULT_URLS:
            for entry in admin.call(service, "GET", "/v1/admin/dlq")["data"]:
                rows.append({"service": service, **entry})
        return table(rows, ["service", "queue", "dead_letter_queue", "messages"])
    if args.group == "dlq" and args.action == "replay":
        result = admin.call(args.service, "POST", f"/v1/admin/dlq/{args.queue}/replay")
        return f"replayed {result['replayed']} message(s) onto {result['queue']}"
    if args.group == "outbox":
        return outbox(args, admin)
    if args.group == "pool" and args.action == "status":
        pool = admin.call("warm_pool", "GET", "/v1/pool")
        rows = pool["tenants"]
        totals = {k: sum(r[k] for r in rows) for k in ("idle", "leased", "launching")}
        head = (f"replica {pool['replica_id']}: {totals['idle']} idle, {totals['leased']} leased, "
                f"{totals['launching']} launching (max {pool['max_browsers']} browsers)")
        return head + "\n\n" + table(rows, ["tenant_id", "plan", "status", "prewarm", "idle", "leased", "launching"])
    if args.group == "dashboard-link":
        link = admin.call("sessions", "POST", f"/v1/admin/tenants/{args.id}/dashboard-links")
        return pairs({"url": link["url"], "expires_at": link["expires_at"]})
    if args.group == "billing" and args.action == "refused-events":
        params = {k: v for k, v in {"tenant_id": args.tenant, "limit": args.limit}.items() if v}
        data = admin.call("billing", "GET", "/v1/admin/stripe-events/refused", params=params)["data"]
        return table(data, ["refused_at", "event_id", "type", "tenant_id", "account_customer", "event_customer",
                            "subscription_id"])
    raise SystemExit(f"unknown command: {args.group} {args.action}")


def outbox(args, admin: Admin) -> str:
    """Events parked because no queue took them: list, replay (once a consumer exists) or discard."""
    if args.action == "parked":
        rows = [{"service": service, **row} for service in DEFAULT_URLS
                for row in admin.call(service, "GET", "/v1/admin/outbox/parked")["data"]]
        return table(rows, ["service", "id", "routing_key", "created_at", "parked_at", "attempts", "last_error"])
    if args.action == "replay":
        params = {"id": args.id} if args.id else {}
        result = admin.call(args.service, "POST", "/v1/admin/outbox/parked/replay", params=params)
        return f"{result['replayed']} parked event(s) of {args.service} back in its outbox"
    admin.call(args.service, "DELETE", f"/v1/admin/outbox/parked/{args.id}")
    return f"discarded {args.id}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="browserfleet", description="browserfleet operator CLI")
    groups = p.add_subparsers(dest="group", required=True)
    tenants = groups.add_parser("tenants").add_subparsers(dest="action", required=True)
    tenants.add_parser("list")
    tenants.add_parser("show").add_argument("id")
    keys = groups.add_parser("api-keys").add_subparsers(dest="action", required=True)
    keys.add_parser("create").add_argument("id", metavar="TENANT_ID")
    keys.add_parser("revoke").add_argument("id", metavar="KEY_ID")
    sessions = groups.add_parser("sessions").add_subparsers(dest="action", required=True)
    listing = sessions.add_parser("list")
    listing.add_argument("--tenant")
    listing.add_argument("--status", choices=["starting", "running", "completed", "failed"])
    listing.add_argument("--limit", type=int, default=50)
    sessions.add_parser("end").add_argument("id", metavar="SESSION_ID")
    dlq = groups.add_parser("dlq").add_subparsers(dest="action", required=True)
    dlq.add_parser("list")
    replay = dlq.add_parser("replay")
    replay.add_argument("service", choices=list(DEFAULT_URLS))
    replay.add_argument("queue")
    parked = groups.add_parser("outbox", help="events parked as unroutable")
    parked = parked.add_subparsers(dest="action", required=True)
    parked.add_parser("parked")
    replay_parked = parked.add_parser("replay")
    replay_parked.add_argument("service", choices=list(DEFAULT_URLS))
    replay_parked.add_argument("--id", help="only this event (default: every parked one)")
    discard = parked.add_parser("discard")
    discard.add_argument("service", choices=list(DEFAULT_URLS))
    discard.add_argument("id")
    groups.add_parser("pool").add_subparsers(dest="action", required=True).add_parser("status")
    groups.add_parser("dashboard-link", help="a dashboard sign-in link for a tenant").add_argument(
        "id", metavar="TENANT_ID")
    billing = groups.add_parser("billing").add_subparsers(dest="action", required=True)
    refused = billing.add_parser("refused-events",
                                 help="Stripe events refused for tying a tenant to another Stripe customer")
    refused.add_argument("--tenant")
    refused.add_argument("--limit", type=int, default=100)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    urls = {name: os.environ.get(f"{name.upper()}_URL", url) for name, url in DEFAULT_URLS.items()}
    token = os.environ.get("ADMIN_TOKEN") or dotenv_values(".env").get("ADMIN_TOKEN")  # make run's .env
    if not token:
        sys.exit("ADMIN_TOKEN is not set (`make run` keeps it in .env)")
    admin = Admin(token, urls)
    try:
        print(run(args, admin))
    except httpx.HTTPError as exc:
        sys.exit(f"cannot reach the service: {exc}")


if __name__ == "__main__":
    main()
