"""Kubernetes defence in depth, on the rendered manifests (deploy/) and the tenant objects the
provisioner makes (services/provisioner/manifests.py).

- The provisioner's token, stolen or misused, cannot weaken a tenant: its admission policy refuses
  a tenant namespace without the `restricted` Pod Security Standard and a browser pod template
  that runs another image, as root, privileged, on the host's namespaces or volumes, without limits.
- warm_pool's token can change nothing of a tenant pod but its lease labels.
- The platform namespace denies all traffic but the flows it needs; a tenant's browser reaches
  the internet and DNS only, and only sessions and warm_pool reach its DevTools port.

Admission policies are checked by evaluating their CEL (the `common-expression-language`
package) on the requests the API server would send them; network policies by a small evaluator
of the NetworkPolicy rules (below) over a model cluster.
"""
import copy
import importlib.util
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import cel
import pytest

from services.provisioner import manifests
from services.provisioner.domain import TenantSpec, namespace_for
from services.provisioner.settings import ProvisionerSettings
from shared.plans import load_plans

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = ["base", "overlays/production"]
TENANT_A = UUID("0b4c3a8e-8a55-4c1c-9f0e-3e7f6d1f2a10")
TENANT_B = UUID("7d1e0f52-3b6a-4f0e-8c1d-2a9b8c7d6e5f")


def _load_renderer():
    spec = importlib.util.spec_from_file_location("deploy_render", DEPLOY / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render


render = _load_renderer()


def by_name(objects, kind, name):
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request) -> list[dict]:
    return render(DEPLOY / request.param)


def provisioner_settings(rendered) -> ProvisionerSettings:
    """The provisioner's settings as the rendered ConfigMap gives them."""
    config = by_name(rendered, "ConfigMap", "browserfleet-config")["data"]
    fields = {k.lower(): v for k, v in config.items() if k.lower() in ProvisionerSettings.model_fields}
    return ProvisionerSettings(**{k: v for k, v in fields.items() if k not in {"http_host", "http_port", "log_level",
                                                                                 "log_format", "public_url"}})


def tenant_objects(rendered, tenant: UUID = TENANT_A) -> list[dict]:
    settings = provisioner_settings(rendered)
    plan = load_plans(settings.plans_file)["professional"]
    return manifests.build(TenantSpec(tenant, namespace_for(tenant), plan.name, plan.limits), settings)


# --- admission: the policies' CEL on sample requests ----------------------------------------------

def admit(policy: dict, request: dict, *, obj=None, old=None, namespace=None, params=None) -> bool | None:
    """None when the policy does not match the request, else whether it admits it. As the API
    server does: variables are lazy (one that fails is an error only where it is used) and a
    validation that errors denies (failurePolicy: Fail)."""
    context = {"request": request, "object": obj, "oldObject": old, "namespaceObject": namespace, "params": params}
    if not all(cel.evaluate(c["expression"], context) for c in policy["spec"]["matchConditions"]):
        return None
    variables = {}
    for variable in policy["spec"].get("variables", []):
        try:
            variables[variable["name"]] = cel.evaluate(variable["expression"], {**context, "variables": variables})
        except Exception:  # noqa: BLE001
            pass

    def holds(expression: str) -> bool:
        try:
            return cel.evaluate(expression, {**context, "variables": variables}) is True
        except Exception:  # noqa: BLE001
            return False
    return all(holds(v["expression"]) for v in policy["spec"]["validations"])


RESOURCES = {"Namespace": ("", "namespaces"), "ResourceQuota": ("", "resourcequotas"),
             "LimitRange": ("", "limitranges"), "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
             "Deployment": ("apps", "deployments"), "HorizontalPodAutoscaler": ("autoscaling", "horizontalpodautoscalers"),
             "Pod": ("", "pods")}


def verdicts(rendered, req: dict, *, obj=None, old=None, namespace=None, configmaps=None) -> dict[str, bool]:
    """Each binding's verdict on a request, in the order the API server's dispatcher reaches it:
    the policy's resource rules, the binding's matchResources (namespaceSelector), its parameter
    (looked up before the policy's matchConditions: a missing one under `Deny` denies), then the
    CEL. Bindings that do not apply are left out."""
    if configmaps is None:
        configmaps = [o for o in rendered if o["kind"] == "ConfigMap"]
    found = {(c["metadata"].get("namespace"), c["metadata"]["name"]): c for c in configmaps}
    group, resource = RESOURCES[req["kind"]["kind"]]
    out = {}
    for binding in (o for o in rendered if o["kind"] == "ValidatingAdmissionPolicyBinding"):
        policy = by_name(rendered, "ValidatingAdmissionPolicy", binding["spec"]["policyName"])
        if not any(group in r["apiGroups"] and resource in r["resources"] and req["operation"] in r["operations"]
                   for r in policy["spec"]["matchConstraints"]["resourceRules"]):
            continue
        selector = (binding["spec"].get("matchResources") or {}).get("namespaceSelector")
        if selector is not None:
            ns = (obj or old) if req["kind"]["kind"] == "Namespace" else namespace
            if not _selects(selector, ns["metadata"].get("labels") or {}):
                continue
        params = None
        if ref := binding["spec"].get("paramRef"):
            params = found.get((ref["namespace"], ref["name"]))
            if params is None:
                out[binding["metadata"]["name"]] = ref.get("parameterNotFoundAction") != "Deny"
                continue
        verdict = admit(policy, req, obj=obj, old=old, namespace=namespace, params=params)
        if verdict is not None:
            out[binding["metadata"]["name"]] = verdict
    return out


def allowed(rendered, req: dict, **kw) -> bool:
    return all(verdicts(rendered, req, **kw).values())


def request(user: str, kind: str, operation: str) -> dict:
    return {"userInfo": {"username": f"system:serviceaccount:browserfleet:{user}"},
            "kind": {"kind": kind}, "operation": operation}


def platform_namespace() -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "browserfleet", "labels": {"kubernetes.io/metadata.name": "browserfleet"}}}


def tenant_namespace(rendered) -> dict:
    ns = copy.deepcopy(next(o for o in tenant_objects(rendered) if o["kind"] == "Namespace"))
    ns["metadata"]["labels"]["kubernetes.io/metadata.name"] = ns["metadata"]["name"]
    return ns


def browser_deployment(rendered) -> dict:
    return next(o for o in tenant_objects(rendered) if o["kind"] == "Deployment")


def _set(path: str, value):
    """A change to a Deployment: `path` is dotted (list indices as numbers); value None deletes."""
    def change(obj):
        *parents, last = path.split(".")
        node = obj
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if value is None:
            node.pop(last, None) if isinstance(node, dict) else node.pop(int(last))
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return change


POD = "spec.template.spec."
CONTAINER = POD + "containers.0."
WEAKENED_TEMPLATES = {
    "another image": _set(CONTAINER + "image", "docker.io/attacker/chromium:latest"),
    "a second container": lambda d: d["spec"]["template"]["spec"]["containers"].append(
        {**d["spec"]["template"]["spec"]["containers"][0], "name": "sidecar", "image": "busybox"}),
    "an init container": _set(POD + "initContainers", [{"name": "init", "image": "busybox"}]),
    "container runs as root": _set(CONTAINER + "securityContext.runAsUser", 0),
    "container not runAsNonRoot": _set(CONTAINER + "securityContext.runAsNonRoot", False),
    "no runAsNonRoot anywhere": lambda d: (_set(CONTAINER + "securityContext.runAsNonRoot", None)(d),
                                           _set(POD + "securityContext.runAsNonRoot", None)(d)),
    "pod runs as root": _set(POD + "securityContext.runAsUser", 0),
    "privilege escalation": _set(CONTAINER + "securityContext.allowPrivilegeEscalation", True),
    "privilege escalation unset": _set(CONTAINER + "securityContext.allowPrivilegeEscalation", None),
    "privileged": _set(CONTAINER + "securityContext.privileged", True),
    "added capability": _set(CONTAINER + "securityContext.capabilities.add", ["SYS_ADMIN"]),
    "capabilities kept": _set(CONTAINER + "securityContext.capabilities.drop", ["NET_RAW"]),
    "writable root": _set(CONTAINER + "securityContext.readOnlyRootFilesystem", False),
    "seccomp unconfined": _set(CONTAINER + "securityContext.seccompProfile", {"type": "Unconfined"}),
    "no seccomp anywhere": lambda d: (_set(CONTAINER + "securityContext.seccompProfile", None)(d),
                                      _set(POD + "securityContext.seccompProfile", None)(d)),
    "no security context": _set(CONTAINER + "securityContext", None),
    "host network": _set(POD + "hostNetwork", True),
    "host PID": _set(POD + "hostPID", True),
    "host IPC": _set(POD + "hostIPC", True),
    "shared process namespace": _set(POD + "shareProcessNamespace", True),
    "host port": _set(CONTAINER + "ports.0.hostPort", 9222),
    "hostPath volume": lambda d: d["spec"]["template"]["spec"]["volumes"].append(
        {"name": "host", "hostPath": {"path": "/"}}),
    "secret volume": lambda d: d["spec"]["template"]["spec"]["volumes"].append(
        {"name": "s", "secret": {"secretName": "browserfleet-secrets"}}),
    "claimed volume": lambda d: d["spec"]["template"]["spec"]["volumes"].append(
        {"name": "c", "persistentVolumeClaim": {"claimName": "x"}}),
    "a fixed node": _set(POD + "nodeName", "control-plane-1"),
    "service-account token": _set(POD + "automountServiceAccountToken", True),
    "token by default": _set(POD + "automountServiceAccountToken", None),
    "no CPU limit": _set(CONTAINER + "resources.limits.cpu", None),
    "no memory limit": _set(CONTAINER + "resources.limits.memory", None),
    "no limits": _set(CONTAINER + "resources", {"requests": {"cpu": "100m"}}),
    "out of the network policies": lambda d: d["spec"]["template"]["metadata"]["labels"].pop(
        "app.kubernetes.io/component"),
}


def test_the_provisioner_may_write_the_tenant_objects_it_makes(rendered):
    ns = tenant_namespace(rendered)
    for obj in tenant_objects(rendered):
        for op in ("CREATE", "UPDATE"):
            namespace = None if obj["kind"] == "Namespace" else ns
            kw = dict(obj=obj, old=obj if op == "UPDATE" else None, namespace=namespace)
            assert allowed(rendered, request("provisioner", obj["kind"], op), **kw), (obj["kind"], op)
    assert set(verdicts(rendered, request("provisioner", "Deployment", "CREATE"), obj=browser_deployment(rendered),
                        namespace=ns)) == {"browserfleet-provisioner-tenants-only", "browserfleet-provisioner-tenant-config"}


@pytest.mark.parametrize("weakening", sorted(WEAKENED_TEMPLATES))
@pytest.mark.parametrize("operation", ["CREATE", "UPDATE"])
def test_the_provisioner_cannot_weaken_a_browser_pod(rendered, weakening, operation):
    good = browser_deployment(rendered)
    bad = copy.deepcopy(good)
    WEAKENED_TEMPLATES[weakening](bad)
    assert bad != good
    assert not allowed(rendered, request("provisioner", "Deployment", operation), obj=bad,
                       old=good if operation == "UPDATE" else None, namespace=tenant_namespace(rendered))


def test_the_browser_image_is_the_configured_one_exactly(rendered):
    """In production that is a digest: the same image by tag (which can be moved) is refused."""
    image = by_name(rendered, "ConfigMap", "browserfleet-config")["data"]["BROWSER_IMAGE"]
    by_tag = copy.deepcopy(browser_deployment(rendered))
    by_tag["spec"]["template"]["spec"]["containers"][0]["image"] = image.split("@")[0].rsplit(":", 1)[0] + ":latest"
    assert by_tag != browser_deployment(rendered)
    assert not allowed(rendered, request("provisioner", "Deployment", "CREATE"), obj=by_tag,
                       namespace=tenant_namespace(rendered))


def test_without_the_configmap_tenant_browsers_are_refused_and_nothing_else_is_blocked(rendered):
    """The API server looks the parameter up before matchConditions, for every user: bound to
    tenant namespaces only, a missing ConfigMap (or key) cannot block writes anywhere else."""
    deployment = browser_deployment(rendered)
    no_key = [{"kind": "ConfigMap", "metadata": {"name": "browserfleet-config", "namespace": "browserfleet"}, "data": {}}]
    for configmaps in ([], no_key):
        assert not allowed(rendered, request("provisioner", "Deployment", "CREATE"), obj=deployment,
                           namespace=tenant_namespace(rendered), configmaps=configmaps)
        elsewhere = {"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": "default", "labels": {"kubernetes.io/metadata.name": "default"}}}
        operator = {"userInfo": {"username": "kubernetes-admin"}, "kind": {"kind": "Deployment"}, "operation": "CREATE"}
        assert verdicts(rendered, operator, obj=deployment, namespace=elsewhere, configmaps=configmaps) == {}
        assert allowed(rendered, {**operator, "kind": {"kind": "Namespace"}}, obj=elsewhere, configmaps=configmaps)


def _policy(name):
    def pick(objects):
        return next(o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == name)
    return pick


def _ingress_peer(peer):
    return lambda objects: _policy("allow-gateway-ingress")(objects)["spec"]["ingress"][0].update({"from": [peer]})


def _egress(rule):
    return lambda objects: _policy("allow-internet-egress")(objects)["spec"]["egress"].append(rule)


def _new_policy(spec):
    def add(objects):
        objects.append({**copy.deepcopy(_policy("default-deny")(objects)), "spec": spec})
        objects[-1]["metadata"]["name"] = "allow-all"
    return add


WEAKENED_POLICIES = {
    "default-deny selects nothing": lambda o: _policy("default-deny")(o)["spec"].update(
        {"podSelector": {"matchLabels": {"nothing": "here"}}}),
    "default-deny ingress only": lambda o: _policy("default-deny")(o)["spec"].update({"policyTypes": ["Ingress"]}),
    "default-deny allows all": lambda o: _policy("default-deny")(o)["spec"].update({"ingress": [{}]}),
    "ingress from anyone": lambda o: _policy("allow-gateway-ingress")(o)["spec"]["ingress"][0].pop("from"),
    "ingress on any port": lambda o: _policy("allow-gateway-ingress")(o)["spec"]["ingress"][0].pop("ports"),
    "ingress on another port": lambda o: _policy("allow-gateway-ingress")(o)["spec"]["ingress"][0].update(
        {"ports": [{"protocol": "TCP", "port": 9222}, {"protocol": "TCP", "port": 22}]}),
    "ingress from every namespace": _ingress_peer({"namespaceSelector": {}, "podSelector": {"matchLabels": {"a": "b"}}}),
    "ingress from another tenant": _ingress_peer({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace_for(TENANT_B)}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/component": "browser"}}}),
    "ingress from every pod of the platform": _ingress_peer({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "browserfleet"}}, "podSelector": {}}),
    "ingress from the tenant's own browsers": _ingress_peer({"podSelector": {"matchLabels": {"a": "b"}}}),
    "ingress from addresses": _ingress_peer({"ipBlock": {"cidr": "0.0.0.0/0"}}),
    "an allow-all policy": _new_policy({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{}],
                                        "egress": [{}]}),
    "egress anywhere": _egress({}),
    "egress to the metadata service": lambda o: _policy("allow-internet-egress")(o)["spec"]["egress"][0]["to"][0][
        "ipBlock"]["except"].remove("169.254.0.0/16"),
    "egress to private ranges": lambda o: _policy("allow-internet-egress")(o)["spec"]["egress"][0]["to"][0][
        "ipBlock"].pop("except"),
    "egress over IPv6": _egress({"to": [{"ipBlock": {"cidr": "::/0"}}]}),
    "egress to the cluster": _egress({"to": [{"namespaceSelector": {}}]}),
    "egress to the platform": _egress({"to": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "browserfleet"}}, "podSelector": {"matchLabels": {"a": "b"}}}]}),
    "egress to kube-dns on any port": lambda o: _policy("allow-dns-egress")(o)["spec"]["egress"][0].pop("ports"),
    "egress to all of kube-system": lambda o: _policy("allow-dns-egress")(o)["spec"]["egress"][0]["to"][0].update(
        {"podSelector": {}}),
}


@pytest.mark.parametrize("weakening", sorted(WEAKENED_POLICIES))
@pytest.mark.parametrize("operation", ["CREATE", "UPDATE"])
def test_the_provisioner_cannot_weaken_a_tenants_network_policies(rendered, weakening, operation):
    good = [o for o in tenant_objects(rendered) if o["kind"] == "NetworkPolicy"]
    bad = copy.deepcopy(good)
    WEAKENED_POLICIES[weakening](bad)
    changed = [b for b in bad if b not in good]
    assert changed
    for policy in changed:
        old = next((g for g in good if g["metadata"]["name"] == policy["metadata"]["name"]), None)
        assert not allowed(rendered, request("provisioner", "NetworkPolicy", operation), obj=policy,
                           old=old if operation == "UPDATE" else None, namespace=tenant_namespace(rendered))


def test_the_provisioner_cannot_delete_the_tenants_default_deny(rendered):
    ns = tenant_namespace(rendered)
    policies = {o["metadata"]["name"]: o for o in tenant_objects(rendered) if o["kind"] == "NetworkPolicy"}
    assert not allowed(rendered, request("provisioner", "NetworkPolicy", "DELETE"), old=policies["default-deny"],
                       namespace=ns)
    # It prunes what a plan no longer has; that may still go.
    assert allowed(rendered, request("provisioner", "NetworkPolicy", "DELETE"), old=policies["allow-dns-egress"],
                   namespace=ns)


@pytest.mark.parametrize("labels", [
    {"pod-security.kubernetes.io/enforce": "privileged"},
    {"pod-security.kubernetes.io/enforce": "baseline"},
    {"pod-security.kubernetes.io/enforce": None},
    {"pod-security.kubernetes.io/enforce-version": "v1.22"},
    {"pod-security.kubernetes.io/enforce-version": None},
])
@pytest.mark.parametrize("operation", ["CREATE", "UPDATE"])
def test_the_provisioner_cannot_weaken_a_tenant_namespace(rendered, labels, operation):
    good = tenant_namespace(rendered)
    bad = copy.deepcopy(good)
    for key, value in labels.items():
        if value is None:
            bad["metadata"]["labels"].pop(key)
        else:
            bad["metadata"]["labels"][key] = value
    assert not allowed(rendered, request("provisioner", "Namespace", operation), obj=bad,
                       old=good if operation == "UPDATE" else None)


def test_the_provisioner_may_still_delete_what_it_made(rendered):
    ns = tenant_namespace(rendered)
    assert allowed(rendered, request("provisioner", "Namespace", "DELETE"), old=ns)
    assert allowed(rendered, request("provisioner", "Deployment", "DELETE"), old=browser_deployment(rendered),
                   namespace=ns)


# --- warm_pool: the lease labels and nothing else ----------------------------------------------

def tenant_pod(rendered) -> dict:
    """A pod of the tenant's browser Deployment as the API server holds it."""
    template = browser_deployment(rendered)["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "browsers-6d4f9-abcde", "namespace": namespace_for(TENANT_A),
                         "resourceVersion": "4711", "labels": copy.deepcopy(template["metadata"]["labels"]),
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "browsers-6d4f9",
                                              "uid": "5f0c", "controller": True, "blockOwnerDeletion": True}]},
            "spec": {**copy.deepcopy(template["spec"]), "nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": "10.244.3.7",
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def merge_patch(target, patch):
    """RFC 7386, as the API server applies `application/merge-patch+json`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def warm_pool_lease_patch(pod: dict) -> dict:
    """The body warm_pool's Kubernetes backend really sends to lease `pod`."""
    from services.warm_pool.adapters.kubernetes import KubernetesPods
    sent = []

    class Api:
        def call(self, method, path, *, query=None, body=None, content_type=None):
            if method == "GET":
                return {"items": [pod]}
            sent.append((method, path, body))
            return {}

    pods = KubernetesPods(Api(), devtools_path=lambda ip, port: "/devtools/browser/x")
    assert pods._claim_one(UUID(int=7), pod["metadata"]["namespace"], UUID(int=8)) is not None
    [(method, _, body)] = sent
    assert method == "PATCH"
    return body


def test_warm_pool_may_lease_and_delete_a_tenant_pod(rendered):
    pod = tenant_pod(rendered)
    leased = merge_patch(pod, warm_pool_lease_patch(pod))
    assert leased["metadata"]["labels"]["browserfleet.io/pool"] == "leased"
    ns = tenant_namespace(rendered)
    assert verdicts(rendered, request("warm-pool", "Pod", "UPDATE"), obj=leased, old=pod, namespace=ns) == {
        "browserfleet-warm-pool-tenants-only": True}
    assert allowed(rendered, request("warm-pool", "Pod", "DELETE"), old=leased, namespace=ns)


WEAKENED_PODS = {
    "another image": {"spec": {"containers": [{"image": "docker.io/attacker/chromium:latest"}]}},
    "a deadline": {"spec": {"activeDeadlineSeconds": 1}},
    "tolerations": {"spec": {"tolerations": [{"operator": "Exists"}]}},
    "another tenant's label": {"metadata": {"labels": {"browserfleet.io/tenant": str(TENANT_B)}}},
    "out of the network policies": {"metadata": {"labels": {"app.kubernetes.io/component": None}}},
    "a new label": {"metadata": {"labels": {"app": "debug"}}},
    "no pool label": {"metadata": {"labels": {"browserfleet.io/pool": None}}},
    "another pool": {"metadata": {"labels": {"browserfleet.io/pool": "other"}}},
    "an annotation": {"metadata": {"annotations": {"kubectl.kubernetes.io/default-container": "chromium"}}},
    "a finalizer": {"metadata": {"finalizers": ["browserfleet.io/keep"]}},
    "orphaned": {"metadata": {"ownerReferences": None}},
}


@pytest.mark.parametrize("weakening", sorted(WEAKENED_PODS))
def test_warm_pool_can_change_nothing_but_the_lease_labels(rendered, weakening):
    pod = tenant_pod(rendered)
    patch = WEAKENED_PODS[weakening]
    if "containers" in patch.get("spec", {}):  # a merge patch replaces lists: keep the rest of the container
        container = {**pod["spec"]["containers"][0], **patch["spec"]["containers"][0]}
        patch = {"spec": {"containers": [container]}}
    for with_lease in (False, True):
        bad = merge_patch(pod, warm_pool_lease_patch(pod)) if with_lease else copy.deepcopy(pod)
        bad = merge_patch(bad, patch)
        assert bad != pod
        assert not allowed(rendered, request("warm-pool", "Pod", "UPDATE"), obj=bad, old=pod,
                           namespace=tenant_namespace(rendered)), (weakening, with_lease)


def test_warm_pool_cannot_relabel_other_pods(rendered):
    pod = tenant_pod(rendered)
    leased = merge_patch(pod, warm_pool_lease_patch(pod))
    assert not allowed(rendered, request("warm-pool", "Pod", "UPDATE"), obj=leased, old=pod,
                       namespace=platform_namespace())
    not_a_browser = merge_patch(pod, {"metadata": {"labels": {"app.kubernetes.io/component": "other"}}})
    relabelled = merge_patch(not_a_browser, warm_pool_lease_patch(not_a_browser))
    assert not allowed(rendered, request("warm-pool", "Pod", "UPDATE"), obj=relabelled, old=not_a_browser,
                       namespace=tenant_namespace(rendered))
    # Other users (the ReplicaSet controller orphaning the leased pod, an operator) are not its business.
    controller = {"userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                  "kind": {"kind": "Pod"}, "operation": "UPDATE"}
    assert verdicts(rendered, controller, obj=leased, old=pod, namespace=tenant_namespace(rendered)) == {}


# --- network policies -------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    name: str
    ip: str
    namespace: str | None = None  # None: outside the pod network (internet, API server)
    labels: dict = field(default_factory=dict, hash=False)
    ports: dict = field(default_factory=dict, hash=False)  # named container ports


def _selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return True
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


class Cluster:
    """NetworkPolicy semantics (networking.k8s.io/v1): a pod selected by some policy of a direction
    is isolated in it and allows only what a rule of those policies allows; a connection needs both
    the source's egress and the destination's ingress. ipBlock is also matched against pod IPs (the
    spec leaves that to the plugin: the permissive reading, so a denial here holds everywhere)."""

    def __init__(self, policies: list[dict], namespaces: dict[str, dict]):
        self.policies, self.namespaces = policies, namespaces

    def _types(self, policy) -> list[str]:
        spec = policy["spec"]
        return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))

    def _peer(self, peer: dict, endpoint: Endpoint, policy_namespace: str) -> bool:
        if "ipBlock" in peer:
            ip = ipaddress.ip_address(endpoint.ip)
            block = peer["ipBlock"]
            return ip in ipaddress.ip_network(block["cidr"]) and not any(
                ip in ipaddress.ip_network(e) for e in block.get("except") or [])
        if endpoint.namespace is None:
            return False
        if "namespaceSelector" in peer:
            if not _selects(peer["namespaceSelector"], self.namespaces[endpoint.namespace]):
                return False
        elif endpoint.namespace != policy_namespace:
            return False
        return _selects(peer.get("podSelector"), endpoint.labels)

    @staticmethod
    def _port(spec: dict, port: int, protocol: str, destination: Endpoint) -> bool:
        if spec.get("protocol", "TCP") != protocol:
            return False
        wanted = spec.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            return destination.ports.get(wanted) == port
        return wanted <= port <= spec.get("endPort", wanted)

    def _side(self, pod: Endpoint, other: Endpoint, port, protocol, destination, direction) -> bool:
        if pod.namespace is None:
            return True
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        policies = [p for p in self.policies if p["metadata"]["namespace"] == pod.namespace
                    and direction in self._types(p) and _selects(p["spec"]["podSelector"], pod.labels)]
        if not policies:
            return True
        return any((not rule.get(peers_key) or any(self._peer(peer, other, p["metadata"]["namespace"])
                                                   for peer in rule[peers_key]))
                   and (not rule.get("ports") or any(self._port(s, port, protocol, destination) for s in rule["ports"]))
                   for p in policies for rule in p["spec"].get(key) or [])

    def allows(self, source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
        return (self._side(source, destination, port, protocol, destination, "Egress")
                and self._side(destination, source, port, protocol, destination, "Ingress"))


def _pod_of(deployment: dict, ip: str) -> Endpoint:
    template = deployment["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])
             if "name" in p}
    return Endpoint(deployment["metadata"]["name"], ip, deployment["metadata"]["namespace"],
                    dict(template["metadata"]["labels"]), ports)


@pytest.fixture(scope="module")
def world(rendered):
    """The platform as rendered, two tenants as the provisioner makes them, the operators' and the
    cluster's own pods, and addresses outside the cluster. Pod IPs are in CLUSTER_POD_CIDR."""
    settings = provisioner_settings(rendered)
    tenants = {t: tenant_objects(rendered, t) for t in (TENANT_A, TENANT_B)}
    namespaces = {name: {"kubernetes.io/metadata.name": name} for name in
                  ("browserfleet", "kube-system", "ingress-nginx", "monitoring", "cnpg-system", "rabbitmq-system", "default")}
    namespaces["browserfleet"].update(by_name(rendered, "Namespace", "browserfleet")["metadata"]["labels"])
    policies = [o for o in rendered if o["kind"] == "NetworkPolicy"]
    ep = {}
    for n, deployment in enumerate(d for d in rendered if d["kind"] == "Deployment"):
        ep[deployment["metadata"]["name"]] = _pod_of(deployment, f"10.244.1.{10 + n}")
    for t, (key, objects) in zip("AB", tenants.items()):
        ns = next(o for o in objects if o["kind"] == "Namespace")
        namespaces[ns["metadata"]["name"]] = {**ns["metadata"]["labels"], "kubernetes.io/metadata.name": ns["metadata"]["name"]}
        policies += [o for o in objects if o["kind"] == "NetworkPolicy"]
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        ep[f"browser-{t}"] = _pod_of(deployment, f"10.244.{2 if t == 'A' else 3}.7")
        ep[f"browser-{t}2"] = _pod_of(deployment, f"10.244.{2 if t == 'A' else 3}.8")
    [pg] = [o for o in rendered if o["kind"] == "Cluster"]
    [mq] = [o for o in rendered if o["kind"] == "RabbitmqCluster"]
    ep |= {
        # what CloudNativePG and the RabbitMQ operator label their pods with
        "postgres-1": Endpoint("postgres-1", "10.244.1.30", "browserfleet", {"cnpg.io/cluster": pg["metadata"]["name"],
                                                                              "cnpg.io/instanceRole": "primary"}),
        "postgres-2": Endpoint("postgres-2", "10.244.1.31", "browserfleet", {"cnpg.io/cluster": pg["metadata"]["name"],
                                                                              "cnpg.io/instanceRole": "replica"}),
        "rabbitmq-0": Endpoint("rabbitmq-0", "10.244.1.40", "browserfleet", {
            "app.kubernetes.io/name": mq["metadata"]["name"], "app.kubernetes.io/component": "rabbitmq"}),
        "rabbitmq-1": Endpoint("rabbitmq-1", "10.244.1.41", "browserfleet", {
            "app.kubernetes.io/name": mq["metadata"]["name"], "app.kubernetes.io/component": "rabbitmq"}),
        "ingress-controller": Endpoint("ingress-controller", "10.244.0.5", "ingress-nginx", {
            "app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}),
        "kube-dns": Endpoint("kube-dns", "10.244.0.2", "kube-system", {"k8s-app": "kube-dns"}),
        "prometheus": Endpoint("prometheus", "10.244.0.9", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
        "cnpg-operator": Endpoint("cnpg-operator", "10.244.0.11", "cnpg-system", {"app.kubernetes.io/name": "cloudnative-pg"}),
        "mq-operator": Endpoint("mq-operator", "10.244.0.12", "rabbitmq-system", {
            "app.kubernetes.io/name": "rabbitmq-cluster-operator"}),
        "stranger": Endpoint("stranger", "10.244.4.4", "default", {"app": "whatever"}),
        "internet": Endpoint("internet", "93.184.216.34"),
        "metadata": Endpoint("metadata", "169.254.169.254"),
        "api-server": Endpoint("api-server", "10.0.0.1"),  # the endpoint address, not the Service IP
        "lan-host": Endpoint("lan-host", "192.168.1.10"),
    }
    assert ipaddress.ip_address(ep["browser-A"].ip) in ipaddress.ip_network(settings.cluster_pod_cidr)
    return Cluster(policies, namespaces), ep


SERVICES = ["sessions", "billing", "provisioner", "warm-pool"]

ALLOWED = [
    *[("ingress-controller", s, 8000, "TCP") for s in ("sessions", "billing")],
    *[(s, "postgres-1", 5432, "TCP") for s in SERVICES],
    *[(s, "rabbitmq-0", 5672, "TCP") for s in SERVICES],
    *[(s, "kube-dns", 53, proto) for s in SERVICES for proto in ("UDP", "TCP")],
    *[("prometheus", s, 8000, "TCP") for s in SERVICES],
    ("sessions", "browser-A", 9222, "TCP"), ("sessions", "browser-B", 9222, "TCP"),
    ("warm-pool", "browser-A", 9222, "TCP"), ("warm-pool", "browser-B", 9222, "TCP"),  # the /json/version check
    ("provisioner", "api-server", 443, "TCP"), ("warm-pool", "api-server", 443, "TCP"),
    ("provisioner", "api-server", 6443, "TCP"),
    ("billing", "internet", 443, "TCP"),  # Stripe
    ("postgres-2", "postgres-1", 5432, "TCP"), ("cnpg-operator", "postgres-1", 8000, "TCP"),
    ("postgres-1", "api-server", 443, "TCP"), ("postgres-1", "internet", 443, "TCP"),  # backups
    ("rabbitmq-1", "rabbitmq-0", 25672, "TCP"), ("rabbitmq-1", "rabbitmq-0", 4369, "TCP"),
    ("mq-operator", "rabbitmq-0", 15672, "TCP"),
    ("browser-A", "internet", 443, "TCP"), ("browser-A", "internet", 80, "TCP"), ("browser-A", "internet", 443, "UDP"),
    ("browser-A", "kube-dns", 53, "UDP"),
]

DENIED = [
    # the internet and other namespaces reach the platform only through the ingress controller
    ("internet", "sessions", 8000, "TCP"), ("stranger", "sessions", 8000, "TCP"), ("stranger", "billing", 8000, "TCP"),
    ("ingress-controller", "provisioner", 8000, "TCP"), ("ingress-controller", "warm-pool", 8000, "TCP"),
    ("ingress-controller", "postgres-1", 5432, "TCP"), ("ingress-controller", "rabbitmq-0", 5672, "TCP"),
    ("ingress-controller", "rabbitmq-0", 15672, "TCP"), ("stranger", "postgres-1", 5432, "TCP"),
    ("stranger", "rabbitmq-0", 5672, "TCP"), ("prometheus", "postgres-1", 5432, "TCP"),
    ("rabbitmq-0", "sessions", 8000, "TCP"), ("postgres-1", "billing", 8000, "TCP"),
    # a tenant's browser: the internet and DNS, nothing of the cluster, no other browser
    ("browser-A", "sessions", 8000, "TCP"), ("browser-A", "billing", 8000, "TCP"), ("browser-A", "warm-pool", 8000, "TCP"),
    ("browser-A", "provisioner", 8000, "TCP"), ("browser-A", "postgres-1", 5432, "TCP"),
    ("browser-A", "rabbitmq-0", 5672, "TCP"), ("browser-A", "api-server", 443, "TCP"),
    ("browser-A", "metadata", 80, "TCP"), ("browser-A", "lan-host", 80, "TCP"), ("browser-A", "browser-B", 9222, "TCP"),
    ("browser-A", "browser-A2", 9222, "TCP"), ("browser-A", "prometheus", 9090, "TCP"),
    ("browser-A", "kube-dns", 8080, "TCP"),
    # DevTools: only sessions and warm_pool, only on the DevTools port
    ("stranger", "browser-A", 9222, "TCP"), ("billing", "browser-A", 9222, "TCP"),
    ("provisioner", "browser-A", 9222, "TCP"), ("ingress-controller", "browser-A", 9222, "TCP"),
    ("prometheus", "browser-A", 9222, "TCP"), ("internet", "browser-A", 9222, "TCP"),
    ("sessions", "browser-A", 8080, "TCP"), ("warm-pool", "browser-A", 22, "TCP"),
    # the services: no way out they do not need
    ("sessions", "internet", 443, "TCP"), ("sessions", "api-server", 443, "TCP"), ("billing", "api-server", 443, "TCP"),
    ("billing", "metadata", 80, "TCP"), ("billing", "metadata", 443, "TCP"), ("billing", "internet", 80, "TCP"),
    ("billing", "lan-host", 443, "TCP"), ("provisioner", "internet", 80, "TCP"), ("warm-pool", "internet", 80, "TCP"),
    ("sessions", "stranger", 8000, "TCP"), ("provisioner", "sessions", 8000, "TCP"),
    ("sessions", "rabbitmq-0", 15672, "TCP"), ("sessions", "kube-dns", 8080, "TCP"),
]


@pytest.mark.parametrize("source,destination,port,protocol", ALLOWED)
def test_the_flows_the_platform_needs_are_allowed(world, source, destination, port, protocol):
    cluster, ep = world
    assert cluster.allows(ep[source], ep[destination], port, protocol)


@pytest.mark.parametrize("source,destination,port,protocol", DENIED)
def test_everything_else_is_denied(world, source, destination, port, protocol):
    cluster, ep = world
    assert not cluster.allows(ep[source], ep[destination], port, protocol)


def test_the_platform_namespace_denies_by_default(rendered):
    policies = [o for o in rendered if o["kind"] == "NetworkPolicy"]
    assert any(p["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]} for p in policies)
    cluster = Cluster(policies, {"browserfleet": {"kubernetes.io/metadata.name": "browserfleet"}})
    newcomer = Endpoint("new-service", "10.244.1.99", "browserfleet", {"app.kubernetes.io/name": "new"})
    sessions = _pod_of(by_name(rendered, "Deployment", "sessions"), "10.244.1.10")
    assert not cluster.allows(sessions, newcomer, 8000) and not cluster.allows(newcomer, sessions, 8000)
    assert not cluster.allows(newcomer, Endpoint("internet", "93.184.216.34"), 443)


def test_the_evaluator_reads_selectors_ports_and_blocks_as_the_spec_does():
    policy = {"metadata": {"namespace": "a"}, "spec": {
        "podSelector": {"matchExpressions": [{"key": "role", "operator": "In", "values": ["db"]}]},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}, "podSelector": {"matchLabels": {"app": "c"}}}],
                     "ports": [{"port": "pg"}, {"protocol": "TCP", "port": 7000, "endPort": 7002}]},
                    {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]}}
    cluster = Cluster([policy], {"a": {}, "b": {"team": "x"}, "c": {}})
    db = Endpoint("db", "10.9.0.1", "a", {"role": "db"}, {"pg": 5432})
    client = Endpoint("client", "192.168.0.1", "b", {"app": "c"})
    assert cluster.allows(client, db, 5432) and cluster.allows(client, db, 7001) and not cluster.allows(client, db, 7003)
    assert not cluster.allows(client, db, 5432, "UDP") and not cluster.allows(client, db, 6000)
    assert not cluster.allows(Endpoint("other", "192.168.0.2", "c", {"app": "c"}), db, 5432)  # namespace AND pod
    assert cluster.allows(Endpoint("ext", "10.2.0.1"), db, 1) and not cluster.allows(Endpoint("ext", "10.1.0.1"), db, 1)
    assert cluster.allows(client, Endpoint("web", "10.9.0.2", "a", {"role": "web"}), 80)  # not selected: not isolated
