"""A stateful fake Kubernetes API server over real HTTP, for the unmodified `kubernetes` client.

Covers what browserfleet uses: core and named-group resources (cluster-scoped namespaces and
any namespaced kind in KINDS), GET / LIST (labelSelector) / POST / PUT / PATCH (merge,
strategic-merge treated as merge, both conditional on a resourceVersion they carry; server-side
apply with fieldManager) / DELETE, Status bodies
(404 NotFound, 409 AlreadyExists / Conflict, 403 for a terminating namespace), resourceVersion
that only moves on a real change, namespaces that stay `Terminating` for `terminating_seconds`
before they vanish with everything in them, and switchable failures (`fail_next`, `latency`).

Not modelled: watches, controllers (no Deployment → pods), admission, field ownership conflicts
between managers (apply always behaves as force=true), list-merge keys (lists are atomic).
"""
import copy
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import yaml

# plural -> (kind, namespaced)
KINDS = {
    "namespaces": ("Namespace", False),
    "nodes": ("Node", False),
    "pods": ("Pod", True),
    "services": ("Service", True),
    "configmaps": ("ConfigMap", True),
    "secrets": ("Secret", True),
    "serviceaccounts": ("ServiceAccount", True),
    "events": ("Event", True),
    "resourcequotas": ("ResourceQuota", True),
    "limitranges": ("LimitRange", True),
    "networkpolicies": ("NetworkPolicy", True),
    "deployments": ("Deployment", True),
    "replicasets": ("ReplicaSet", True),
    "horizontalpodautoscalers": ("HorizontalPodAutoscaler", True),
    "roles": ("Role", True),
    "rolebindings": ("RoleBinding", True),
}
_PATH = re.compile(
    r"^/(?P<prefix>api/v1|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+)(?=/))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>status))?/?$")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _prune(target: dict, old: dict, new: dict) -> None:
    """Remove from target the fields the manager applied before and no longer applies."""
    for key, value in old.items():
        if key not in new:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(new[key], dict) and isinstance(target.get(key), dict):
            _prune(target[key], value, new[key])


def _selector_matches(selector: str, labels: dict) -> bool:
    for term in filter(None, (t.strip() for t in re.split(r",(?![^()]*\))", selector or ""))):
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if (labels.get(key) in values) != (op == "in") or (op == "in" and key not in labels):
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None, headers=None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details, self.headers = code, reason, message, details, headers or {}

    def body(self) -> dict:
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            status["details"] = self.details
        return status


@dataclass
class _Fault:
    remaining: int
    status: int
    method: str | None
    path_contains: str | None
    skip: int
    delay: float = 0.0


class FakeKubeAPI:
    def __init__(self, *, terminating_seconds: float = 0.2):
        self.terminating_seconds = terminating_seconds
        self.latency = 0.0
        self.objects: dict[tuple, dict] = {}   # (group, plural, namespace, name) -> object
        self.applied: dict[tuple, dict] = {}   # (key, manager) -> last applied config
        self.requests: list[tuple[str, str]] = []
        self._faults: list[_Fault] = []
        self._rv = 0
        self._deadlines: dict[str, float] = {}  # terminating namespace -> when it disappears
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # ---- test controls -------------------------------------------------------------------
    def start(self) -> str:
        api = self

        class Handler(_Handler):
            fake = api

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll: stop() (shutdown) waits out one poll interval, 0.5 s by default.
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def fail_next(self, n: int, status: int | None = 500, *, method: str | None = None,
                  path_contains: str | None = None, after: int = 0, delay: float = 0.0) -> None:
        """The next n matching requests (after skipping `after` matching ones) wait `delay` seconds,
        then answer `status` (None: are served normally, late)."""
        with self._lock:
            self._faults.append(_Fault(n, status, method, path_contains, after, delay))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self, plural: str, namespace: str | None = None, selector: str = "") -> list[dict]:
        with self._lock:
            self._expire()
            return [copy.deepcopy(o) for (g, p, ns, _), o in sorted(self.objects.items())
                    if p == plural and (namespace is None or ns == namespace)
                    and _selector_matches(selector, o["metadata"].get("labels") or {})]

    def get(self, plural: str, name: str, namespace: str = "") -> dict | None:
        return next((o for o in self.list(plural, namespace) if o["metadata"]["name"] == name), None)

    def put_object(self, obj: dict) -> dict:
        """Create an object directly (as another actor would), bypassing faults."""
        plural = next(p for p, (k, _) in KINDS.items() if k == obj["kind"])
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        with self._lock:
            return self._create(group, obj["apiVersion"], plural, obj["metadata"].get("namespace", ""), obj)

    def delete_object(self, plural: str, name: str, namespace: str = "") -> None:
        with self._lock:
            self._delete(self._find_group(plural, namespace, name), plural, namespace, name)

    # ---- request handling ----------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, dict, dict]:
        if self.latency:
            time.sleep(self.latency)
        url = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self._lock:
            self.requests.append((method, url.path))
            fault = self._take_fault(method, url.path)
        if fault and fault.delay:
            time.sleep(fault.delay)
        if fault and fault.status == 429:
            raise ApiError(429, "TooManyRequests", "too many requests, please try again later",
                           {"retryAfterSeconds": 1}, {"Retry-After": "1"})
        if fault and fault.status:
            raise ApiError(fault.status, "InternalError", "Internal error occurred: injected fault")
        with self._lock:
            self._expire()
            if url.path == "/version":
                return 200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake"}, {}
            if url.path == "/api":
                return 200, {"kind": "APIVersions", "versions": ["v1"]}, {}
            m = _PATH.match(url.path)
            if not m or m["plural"] not in KINDS:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            group = m["group"] or ""
            api_version = f"{group}/{m['version']}" if group else "v1"
            plural, name, ns = m["plural"], m["name"], m["ns"] or ""
            kind, namespaced = KINDS[plural]
            if namespaced is False and m["ns"]:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            data = self._decode(headers.get("Content-Type", ""), body) if body else None
            if method == "GET" and name is None:
                items = [o for (g, p, n, _), o in sorted(self.objects.items())
                         if g == group and p == plural and (not m["ns"] or n == ns)
                         and _selector_matches(query.get("labelSelector", ""), o["metadata"].get("labels") or {})]
                return 200, {"kind": f"{kind}List", "apiVersion": api_version,
                             "metadata": {"resourceVersion": str(self._rv)}, "items": copy.deepcopy(items)}, {}
            if method == "GET":
                return 200, copy.deepcopy(self._must_get(group, plural, ns, name, kind)), {}
            if method == "POST" and name is None:
                return 201, self._create(group, api_version, plural, ns, data), {}
            if method == "PUT" and name:
                return 200, self._replace(group, plural, ns, name, kind, data, status_only=bool(m["sub"])), {}
            if method == "PATCH" and name:
                return self._patch(group, api_version, plural, ns, name, kind, headers, query, data)
            if method == "DELETE" and name:
                return 200, self._delete(group, plural, ns, name), {}
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {url.path}")

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if (fault.method and fault.method != method) or (fault.path_contains and fault.path_contains not in path):
                continue
            if fault.skip:
                fault.skip -= 1
                return None
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
            return fault
        return None

    @staticmethod
    def _decode(content_type: str, body: bytes):
        if "yaml" in content_type:
            return yaml.safe_load(body)
        try:
            return json.loads(body)
        except ValueError:
            raise ApiError(400, "BadRequest", "the request body is not valid JSON") from None

    def _find_group(self, plural, ns, name) -> str:
        return next((g for (g, p, n, nm) in self.objects if p == plural and n == ns and nm == name), "")

    def _must_get(self, group, plural, ns, name, kind) -> dict:
        obj = self.objects.get((group, plural, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{plural}{"." + group if group else ""} "{name}" not found',
                           {"name": name, "group": group, "kind": plural})
        return obj

    def _check_namespace(self, plural: str, ns: str) -> None:
        if not KINDS[plural][1]:
            return
        space = self.objects.get(("", "namespaces", "", ns))
        if space is None:
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found',
                           {"name": ns, "kind": "namespaces"})
        if space["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden", f"{plural} is forbidden: unable to create new content in "
                           f"namespace {ns} because it is being terminated",
                           {"name": ns, "kind": "namespaces",
                            "causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}]})

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _create(self, group, api_version, plural, ns, data) -> dict:
        kind = KINDS[plural][0]
        if not isinstance(data, dict) or not isinstance(data.get("metadata"), dict):
            raise ApiError(400, "BadRequest", "metadata is required")
        meta = data["metadata"]
        name = meta.get("name") or (meta.get("generateName", "") + uuid.uuid4().hex[:5])
        if not name:
            raise ApiError(422, "Invalid", f"{kind} is invalid: metadata.name: Required value")
        if ns and meta.get("namespace", ns) != ns:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                              "sent on the request")
        self._check_namespace(plural, ns)
        key = (group, plural, ns, name)
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{plural}{"." + group if group else ""} "{name}" already exists',
                           {"name": name, "group": group, "kind": plural})
        obj = copy.deepcopy(data)
        obj["kind"], obj["apiVersion"] = kind, api_version
        obj["metadata"].update(name=name, uid=str(uuid.uuid4()), creationTimestamp=_now(),
                               resourceVersion=self._next_rv(), generation=1)
        if ns:
            obj["metadata"]["namespace"] = ns
        if plural == "namespaces":
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def _store_update(self, key, old: dict, new: dict) -> dict:
        """Keep server-owned metadata; bump resourceVersion only when something changed."""
        for field in ("uid", "creationTimestamp", "resourceVersion", "generation", "deletionTimestamp", "name",
                      "namespace"):
            if field in old["metadata"]:
                new["metadata"][field] = old["metadata"][field]
        if key[1] == "namespaces":
            new["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = key[3]
        if "status" in old:  # status is only written through its subresource
            new.setdefault("status", old["status"])
        if new == old:
            return copy.deepcopy(old)
        if new.get("spec") != old.get("spec"):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[key] = new
        return copy.deepcopy(new)

    def _replace(self, group, plural, ns, name, kind, data, status_only=False) -> dict:
        old = self._must_get(group, plural, ns, name, kind)
        rv = (data.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": the object has '
                           "been modified; please apply your changes to the latest version and try again",
                           {"name": name, "group": group, "kind": plural})
        new = copy.deepcopy(old) if status_only else copy.deepcopy(data)
        if status_only:
            new["status"] = copy.deepcopy(data.get("status"))
        new["kind"], new["apiVersion"] = old["kind"], old["apiVersion"]
        return self._store_update((group, plural, ns, name), old, new)

    def _patch(self, group, api_version, plural, ns, name, kind, headers, query, data):
        content_type = headers.get("Content-Type", "").split(";")[0].strip()
        key = (group, plural, ns, name)
        if content_type == "application/apply-patch+yaml":
            manager = query.get("fieldManager")
            if not manager:
                raise ApiError(400, "BadRequest", "PATCH with apply requires a fieldManager")
            if not isinstance(data, dict) or data.get("kind") != kind or (data.get("metadata") or {}).get("name") != name:
                raise ApiError(400, "BadRequest", "the body's kind and name must match the request")
            if key not in self.objects:
                created = self._create(group, api_version, plural, ns, data)
                self.objects[key]["metadata"]["managedFields"] = [self._managed(manager, api_version)]
                self.applied[(key, manager)] = copy.deepcopy(data)
                return 201, copy.deepcopy(self.objects[key]), {}
            old = self.objects[key]
            new = copy.deepcopy(old)
            _prune(new, self.applied.get((key, manager), {}), data)
            new = merge_patch(new, data)
            mine = [f for f in old["metadata"].get("managedFields", []) if f["manager"] == manager]
            new["metadata"]["managedFields"] = mine or [self._managed(manager, api_version)]
            self.applied[(key, manager)] = copy.deepcopy(data)
            return 200, self._store_update(key, old, new), {}
        if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            old = self._must_get(group, plural, ns, name, kind)
            rv = ((data or {}).get("metadata") or {}).get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:  # a patch carrying resourceVersion is conditional
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": the object has '
                               "been modified; please apply your changes to the latest version and try again",
                               {"name": name, "group": group, "kind": plural})
            return 200, self._store_update(key, old, merge_patch(old, data)), {}
        raise ApiError(415, "UnsupportedMediaType", f"the media type {content_type!r} is not supported")

    @staticmethod
    def _managed(manager: str, api_version: str) -> dict:
        return {"manager": manager, "operation": "Apply", "apiVersion": api_version, "time": _now(),
                "fieldsType": "FieldsV1", "fieldsV1": {}}

    def _delete(self, group, plural, ns, name) -> dict:
        key = (group, plural, ns, name)
        obj = self._must_get(group, plural, ns, name, KINDS[plural][0])
        if plural != "namespaces":
            del self.objects[key]
            self.applied = {k: v for k, v in self.applied.items() if k[0] != key}
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": group, "kind": plural, "uid": obj["metadata"]["uid"]}}
        if not obj["metadata"].get("deletionTimestamp"):
            obj["metadata"]["deletionTimestamp"] = _now()
            obj["status"] = {"phase": "Terminating"}
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._deadlines[name] = time.monotonic() + self.terminating_seconds
        return copy.deepcopy(obj)

    def _expire(self) -> None:
        now = time.monotonic()
        for ns in [n for n, t in self._deadlines.items() if t <= now]:
            del self._deadlines[ns]
            gone = [k for k in self.objects if k[2] == ns or k == ("", "namespaces", "", ns)]
            for key in gone:
                del self.objects[key]
            self.applied = {k: v for k, v in self.applied.items() if k[0] not in gone}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKubeAPI
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            code, payload, extra = self.fake.handle(self.command, self.path, self.headers, body)
        except ApiError as exc:
            code, payload, extra = exc.code, exc.body(), exc.headers
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra.items():
            self.send_header(k, v)
        try:
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout); so does the answer
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
