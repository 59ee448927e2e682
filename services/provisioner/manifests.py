"""Pure: the Kubernetes objects a tenant gets, as plain dicts (what `render` prints and the backend applies).

Sizing: every browser pod requests and is limited to the per-browser CPU/memory settings
(requests == limits, Guaranteed QoS), and the quota allows `max_concurrent_sessions` such pods:
professional = 50 pods × 128Mi = 6400Mi memory, 50 × 100m = 5 CPU.

The Deployment's selector includes `browserfleet.io/pool: warm`; warm_pool leases a pod by
relabelling it `leased`, taking it out of the ReplicaSet while the network policies (which
select on `app.kubernetes.io/component: browser`) still fence it.

A plan with no pre-warmed browsers (starter) gets no HPA — autoscaling/v2 needs minReplicas ≥ 1 —
and a Deployment with replicas 0; its browsers are started on demand. With an HPA, the
Deployment leaves `replicas` to it.
"""
import ipaddress
import json
import re
from decimal import Decimal

from services.provisioner.domain import TenantSpec
from shared.browsers import (BROWSER_COMPONENT, CHROMIUM_FLAGS, COMPONENT_LABEL, DEVTOOLS_PORT, DEVTOOLS_PORT_NAME,
                             POOL_LABEL, TENANT_LABEL, WARM)

MANAGED_BY = "browserfleet-provisioner"
BROWSER = BROWSER_COMPONENT
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10")
# The pool's flags less what the image's entrypoint sets itself: chromedp/headless-shell is the
# headless shell, and its run.sh passes --no-sandbox and DevTools on 9223 (socat forwards 9222 to
# it), then appends these.
BROWSER_ARGS = list(CHROMIUM_FLAGS)


def managed_selector() -> str:
    return f"app.kubernetes.io/managed-by={MANAGED_BY}"


def labels(spec: TenantSpec, component: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "browserfleet-tenant",
        "app.kubernetes.io/instance": spec.namespace,
        "app.kubernetes.io/part-of": "browserfleet",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        TENANT_LABEL: str(spec.tenant_id),
    }
    if component:
        out.update({"app.kubernetes.io/name": "browserfleet-browser", COMPONENT_LABEL: component})
    return out


def times(quantity: str, n: int) -> str:
    """`times("128Mi", 50)` → "6400Mi": scale a Kubernetes quantity, keeping its suffix."""
    number, suffix = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity).groups()
    value = Decimal(number) * n
    return f"{value.normalize():f}{suffix}"


def egress_denied(settings) -> list[str]:
    nets = [ipaddress.ip_network(c) for c in (*PRIVATE_RANGES, settings.cluster_pod_cidr, settings.cluster_service_cidr)]
    return [str(n) for n in ipaddress.collapse_addresses(n for n in nets if n.version == 4)]


def build(spec: TenantSpec, settings) -> list[dict]:
    objects = [namespace(spec), resource_quota(spec, settings), limit_range(spec, settings),
               *network_policies(spec, settings), deployment(spec, settings)]
    if has_hpa(spec):
        objects.append(hpa(spec, settings))
    return json.loads(json.dumps(objects))  # plain, unshared data (no YAML anchors)


def has_hpa(spec: TenantSpec) -> bool:
    return spec.limits.prewarm_browsers >= 1 and spec.limits.max_concurrent_sessions >= 1


def _meta(spec: TenantSpec, name: str, component: str | None = None) -> dict:
    return {"name": name, "namespace": spec.namespace, "labels": labels(spec, component)}


def namespace(spec: TenantSpec) -> dict:
    meta_labels = {**labels(spec), "pod-security.kubernetes.io/enforce": "restricted",
                   "pod-security.kubernetes.io/enforce-version": "latest"}
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": spec.namespace, "labels": meta_labels,
                         "annotations": {"browserfleet.io/plan": spec.plan}}}


def resource_quota(spec: TenantSpec, settings) -> dict:
    pods = spec.limits.max_concurrent_sessions
    hard = {
        "pods": str(pods),
        "requests.cpu": times(settings.browser_cpu_request, pods),
        "limits.cpu": times(settings.browser_cpu_limit, pods),
        "requests.memory": times(settings.browser_memory_request, pods),
        "limits.memory": times(settings.browser_memory_limit, pods),
        "services": "0",
        "persistentvolumeclaims": "0",
    }
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": _meta(spec, "tenant-quota"),
            "spec": {"hard": hard}}


def _resources(settings) -> dict:
    return {"requests": {"cpu": settings.browser_cpu_request, "memory": settings.browser_memory_request},
            "limits": {"cpu": settings.browser_cpu_limit, "memory": settings.browser_memory_limit}}


def limit_range(spec: TenantSpec, settings) -> dict:
    res = _resources(settings)
    return {"apiVersion": "v1", "kind": "LimitRange", "metadata": _meta(spec, "browser-defaults"),
            "spec": {"limits": [{"type": "Container", "default": res["limits"], "defaultRequest": res["requests"],
                                 "max": res["limits"]}]}}


def network_policies(spec: TenantSpec, settings) -> list[dict]:
    browsers = {"matchLabels": {COMPONENT_LABEL: BROWSER, TENANT_LABEL: str(spec.tenant_id)}}
    policy = lambda name, body: {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                 "metadata": _meta(spec, name), "spec": body}
    return [
        policy("default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        # The platform's two DevTools clients: sessions' relay, and warm_pool's /json/version at lease.
        policy("allow-gateway-ingress", {
            "podSelector": browsers, "policyTypes": ["Ingress"],
            "ingress": [_devtools_from(settings.gateway_namespace, settings.gateway_pod_labels),
                        _devtools_from(settings.warm_pool_namespace, settings.warm_pool_pod_labels)],
        }),
        policy("allow-dns-egress", {
            "podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{
                "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            }],
        }),
        policy("allow-internet-egress", {
            "podSelector": browsers, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": egress_denied(settings)}}]}],
        }),
    ]


def _devtools_from(namespace: str, pod_labels: dict[str, str]) -> dict:
    return {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                      "podSelector": {"matchLabels": dict(pod_labels)}}],
            "ports": [{"protocol": "TCP", "port": DEVTOOLS_PORT}]}


def deployment(spec: TenantSpec, settings) -> dict:
    pod_labels = {**labels(spec, BROWSER), POOL_LABEL: WARM}
    selector = {COMPONENT_LABEL: BROWSER, TENANT_LABEL: str(spec.tenant_id), POOL_LABEL: WARM}
    container = {
        "name": "chromium",
        "image": settings.browser_image,
        "args": list(BROWSER_ARGS),
        "ports": [{"name": DEVTOOLS_PORT_NAME, "containerPort": DEVTOOLS_PORT, "protocol": "TCP"}],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": _resources(settings),
        "readinessProbe": {"httpGet": {"path": "/json/version", "port": DEVTOOLS_PORT},
                           "periodSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 3},
        "livenessProbe": {"tcpSocket": {"port": DEVTOOLS_PORT}, "initialDelaySeconds": 10, "periodSeconds": 10},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_spec = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 5,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.browser_shm_size}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
    }
    body = {"selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec}}
    if not has_hpa(spec):
        body = {"replicas": 0, **body}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(spec, "browsers", BROWSER), "spec": body}


def hpa(spec: TenantSpec, settings) -> dict:
    maximum = spec.limits.max_concurrent_sessions
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(spec, "browsers", BROWSER),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "browsers"},
                     "minReplicas": min(spec.limits.prewarm_browsers, maximum), "maxReplicas": maximum,
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu", "target": {"type": "Utilization",
                                                   "averageUtilization": settings.hpa_cpu_utilization}}}]}}
