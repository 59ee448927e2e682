"""The public ingress routes the public API only: no admin, DLQ, dashboard-link, metrics or health
route of any service is reachable through it, however the path is spelled.

The attack: from the internet, call what an operator would call inside the cluster
(`/v1/admin/tenants`, `/v1/admin/dlq/<queue>/replay`, `/v1/admin/tenants/<id>/dashboard-links`, ...).
The routes come from the services' own source (every `@app.get(...)`-style decorator), so a new
admin route is covered without touching this file. For each request the test computes which
backend the rendered Ingress sends it to, with the Kubernetes matching rules (Exact; Prefix by
whole path elements; the longest match wins, Exact before Prefix on a tie), after the
normalisation ingress-nginx applies before matching (percent-decoding, merged slashes, `.`/`..`
resolved), and then whether that backend's router, which sees the path as sent, would run an
internal handler.
"""
import importlib.util
import re
from pathlib import Path
from urllib.parse import unquote
from uuid import UUID

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SERVICES = {"sessions", "billing", "provisioner", "warm_pool"}
BILLING_PUBLIC = {"/webhooks/stripe", "/v1/checkout-sessions"}
TENANT = UUID("0b4c3a8e-8a55-4c1c-9f0e-3e7f6d1f2a10")
SAMPLES = {"queue": "billing.sessions.session_completed", "name": "app.js"}

_DECORATOR = re.compile(r"""@\w+\.(get|post|put|patch|delete|websocket|api_route)\(\s*f?["']([^"']*)["']""")
_ADD_ROUTE = re.compile(r"""\.add_api_route\(\s*f?["']([^"']*)["']""")
_PREFIX = re.compile(r"""APIRouter\([^)]*prefix\s*=\s*["']([^"']*)["']""")


def _load_renderer():
    spec = importlib.util.spec_from_file_location("deploy_render", DEPLOY / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render


render = _load_renderer()


def http_routes() -> set[tuple[str, str]]:
    """(service, path template) for every HTTP and websocket route in the source. shared/ is
    mounted by every service (health, metrics, DLQ admin)."""
    routes = set()
    for path in [*ROOT.joinpath("services").rglob("*.py"), *ROOT.joinpath("shared").glob("*.py")]:
        text = path.read_text()
        prefixes = _PREFIX.findall(text)
        assert len(prefixes) <= 1, f"{path}: one prefixed router per file is all this scan understands"
        prefix = prefixes[0] if prefixes else ""
        found = [prefix + p for _, p in _DECORATOR.findall(text)] + [prefix + p for p in _ADD_ROUTE.findall(text)]
        parts = path.relative_to(ROOT).parts
        owners = SERVICES if parts[0] == "shared" else {parts[1]}
        routes |= {(owner, route) for owner in owners for route in found}
    return routes


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: SAMPLES.get(m.group(1), str(TENANT)), template)


def internal(service: str, template: str) -> bool:
    """What must stay inside the cluster: all admin routes (the DLQs and dashboard links are under
    /v1/admin), health and metrics, and everything of provisioner and warm_pool."""
    if template.startswith("/v1/admin") or service in {"provisioner", "warm_pool"}:
        return True
    if template in {"/healthz", "/readyz", "/metrics"}:
        return True
    return service == "billing" and template not in BILLING_PUBLIC


# --- what the ingress does with a request --------------------------------------------------------

def _elements(path: str) -> list[str]:
    return [e for e in path.split("/") if e]


def _matches(rule_path: str, path_type: str, path: str) -> bool:
    if path_type == "Exact":
        return path == rule_path
    assert path_type == "Prefix", f"{path_type}: matching is implementation-specific, use Exact or Prefix"
    prefix = _elements(rule_path)
    return _elements(path)[:len(prefix)] == prefix


def route(ingress: dict, host: str, path: str) -> str | None:
    """The Service the Ingress sends `path` on `host` to, or None (ingress-nginx answers 404)."""
    assert "defaultBackend" not in ingress["spec"], "a default backend would receive every unmatched path"
    candidates = []
    for rule in ingress["spec"]["rules"]:
        if rule.get("host", host) != host:
            continue
        for p in rule["http"]["paths"]:
            if _matches(p["path"], p["pathType"], path):
                candidates.append(((len(p["path"].rstrip("/")), p["pathType"] == "Exact"), p["backend"]["service"]["name"]))
    return max(candidates)[1] if candidates else None


def nginx_normalized(target: str, *, decode_slashes: bool = True) -> str | None:
    """The path nginx matches locations against; None where nginx refuses the request (400)."""
    path = target.split("?", 1)[0]
    path = unquote(path) if decode_slashes else re.sub(r"%(?!2[fF])[0-9a-fA-F]{2}", lambda m: unquote(m.group()), path)
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                return None
            segments.pop()
        else:
            segments.append(segment)
    trailing = "/" if path.endswith(("/", "/.", "/..")) and segments else ""
    return "/" + "/".join(segments) + trailing


def backend_handler(routes, service: str, target: str) -> str | None:
    """The route template the service's router (Starlette) runs for the path as sent: uvicorn
    percent-decodes it and resolves nothing; a parameter matches one path element."""
    path = unquote(target.split("?", 1)[0])
    for owner, template in routes:
        pattern = re.sub(r"\\\{\w+(?::\w+)?\\\}", "[^/]+", re.escape(template))
        if owner == service and re.fullmatch(pattern, path):
            return template
    return None


# --- the tests -------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["base", "overlays/production"])
def ingress(request) -> dict:
    [ingress] = [o for o in render(DEPLOY / request.param) if o["kind"] == "Ingress"]
    return ingress


def host_of(ingress) -> str:
    [host] = {rule["host"] for rule in ingress["spec"]["rules"]}
    return host


ROUTES = http_routes()


def test_the_route_scan_finds_the_admin_dlq_and_dashboard_link_routes():
    for expected in [("sessions", "/v1/admin/tenants"), ("sessions", "/v1/admin/tenants/{tenant_id}/api-keys"),
                     ("sessions", "/v1/admin/tenants/{tenant_id}/dashboard-links"),
                     ("billing", "/v1/admin/accounts/{tenant_id}"), ("billing", "/v1/admin/stripe-events"),
                     ("sessions", "/v1/admin/dlq"), ("billing", "/v1/admin/dlq/{queue}/replay"),
                     ("warm_pool", "/v1/pool"), ("provisioner", "/metrics"),
                     ("sessions", "/v1/sessions/{session_id}/cdp"), ("sessions", "/dashboard/static/{name}"),
                     ("billing", "/webhooks/stripe")]:
        assert expected in ROUTES, expected
    assert len(ROUTES) >= 40


@pytest.mark.parametrize("service,template", sorted(r for r in ROUTES if internal(*r)))
def test_no_internal_route_is_reachable_through_the_ingress(ingress, service, template):
    path = concrete(template)
    assert route(ingress, host_of(ingress), path) is None, f"{service} {template} is on the internet"


@pytest.mark.parametrize("service,template", sorted(r for r in ROUTES if not internal(*r)))
def test_every_public_route_is_routed_to_its_service(ingress, service, template):
    assert route(ingress, host_of(ingress), concrete(template)) == service


@pytest.mark.parametrize("path,service", [
    ("/v1/sessions", "sessions"), ("/v1/sessions/", "sessions"), (f"/v1/sessions/{TENANT}/cdp", "sessions"),
    ("/v1/connect", "sessions"), ("/v1/usage", "sessions"), ("/v1/usage/daily", "sessions"),
    ("/v1/api-keys", "sessions"), (f"/v1/profiles/{TENANT}", "sessions"), ("/v1/dashboard/sign-ins", "sessions"),
    ("/v1/dashboard/sign-ins/current", "sessions"), ("/dashboard", "sessions"), ("/dashboard/", "sessions"),
    ("/webhooks/stripe", "billing"), ("/v1/checkout-sessions", "billing"),
])
def test_the_public_api_of_the_design_is_routed(ingress, path, service):
    """DESIGN.md's public API, including routes other work adds (profiles, connect, sign-in revocation)."""
    assert route(ingress, host_of(ingress), path) == service


ATTACKS = [
    "/v1/admin/tenants", f"/v1/admin/tenants/{TENANT}/api-keys", f"/v1/admin/tenants/{TENANT}/dashboard-links",
    "/v1/admin/dlq", "/v1/admin/dlq/billing.sessions.session_completed/replay", "/v1/admin/stripe-events",
    "/v1/admin", "/v1/admin/", "/v1", "/v1/", "/", "/metrics", "/healthz", "/readyz", "/v1/pool", "/docs",
    "/openapi.json",
    # spellings: another segment, traversal, encodings, doubled slashes, a query, case
    "/v1/sessionsx", "/v1/sessions-admin/tenants", "/v1/sessions/../admin/tenants", "/v1/sessions/%2e%2e/admin/tenants",
    "/v1/sessions/..%2fadmin/tenants", "/v1/sessions%2f..%2fadmin%2ftenants", "/dashboard/../v1/admin/tenants",
    "/dashboard/..%2f..%2fv1/admin/dlq", "//v1/admin/tenants", "/v1//admin/tenants", "/./v1/admin/tenants",
    "/v1/admin/tenants?x=/v1/sessions", "/v1/admin/tenants#/v1/sessions", "/V1/admin/tenants", "/v1/ADMIN/tenants",
    "/webhooks/stripe/../../v1/admin/stripe-events", "/v1/checkout-sessions/../admin/accounts",
    f"/v1/admin/tenants/{TENANT}/../../../sessions", "/v1/admin/dlq/..%2f..%2f..%2fsessions/replay",
    f"/v1/sessions/{TENANT}/%2e%2e/%2e%2e/admin/tenants", "/dashboard/static/..%2f..%2f..%2fv1%2fadmin%2ftenants",
]


@pytest.mark.parametrize("target", ATTACKS)
def test_no_spelling_of_a_path_reaches_an_internal_handler(ingress, target):
    """Whatever ingress-nginx matches (full or partial normalisation, or none), the handler the
    chosen backend would run for the path as sent is never an internal one."""
    for normalized in {nginx_normalized(target), nginx_normalized(target, decode_slashes=False), target}:
        if normalized is None:
            continue  # nginx answers 400
        service = route(ingress, host_of(ingress), normalized)
        if service is None:
            continue
        handler = backend_handler(ROUTES, service, target)
        assert handler is None or not internal(service, handler), f"{target} -> {service} runs {handler}"
        assert not (normalized.startswith("/v1/admin") or normalized in {"/metrics", "/healthz", "/readyz"})


def test_other_hosts_get_nothing(ingress):
    assert route(ingress, "attacker.example", "/v1/sessions") is None
    assert route(ingress, "attacker.example", "/v1/admin/tenants") is None


def test_the_matcher_follows_the_kubernetes_rules():
    """Examples from the Ingress documentation's table, and precedence."""
    ing = lambda *paths: {"spec": {"rules": [{"http": {"paths": [  # noqa: E731
        {"path": p, "pathType": t, "backend": {"service": {"name": f"{t}:{p}"}}} for p, t in paths]}}]}}
    assert route(ing(("/", "Prefix")), "h", "/anything") == "Prefix:/"
    assert route(ing(("/foo", "Exact")), "h", "/foo/") is None
    assert route(ing(("/foo/", "Exact")), "h", "/foo") is None
    assert route(ing(("/foo", "Prefix")), "h", "/foo/") == "Prefix:/foo"
    assert route(ing(("/aaa/bb", "Prefix")), "h", "/aaa/bbb") is None
    assert route(ing(("/aaa/bbb/", "Prefix")), "h", "/aaa/bbb") == "Prefix:/aaa/bbb/"
    assert route(ing(("/aaa/bbb", "Prefix")), "h", "/aaa/bbb/ccc") == "Prefix:/aaa/bbb"
    both = ing(("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix"), ("/aaa", "Exact"))
    assert route(both, "h", "/aaa/bbb/c") == "Prefix:/aaa/bbb"  # longest wins
    assert route(both, "h", "/aaa") == "Exact:/aaa"  # Exact before Prefix on a tie
    assert route(both, "h", "/aaa/ccc") == "Prefix:/aaa"
    assert nginx_normalized("/a/./b/../c//d?q=/x") == "/a/c/d"
    assert nginx_normalized("/a/%2e%2e/b") == "/b"
    assert nginx_normalized("/../etc") is None
