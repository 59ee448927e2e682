"""The objects a tenant gets: schema-valid on Kubernetes 1.30 and the newest schema shipped, and secure."""
import ipaddress
from uuid import UUID, uuid4

import kubernetes_validate
import pytest
import yaml

from services.provisioner import __main__ as provisioner_cli
from services.provisioner import manifests
from services.provisioner.domain import TenantSpec, namespace_for
from services.provisioner.settings import ProvisionerSettings
from shared.plans import load_plans
from tests import kube_schemas

SETTINGS = ProvisionerSettings(cluster_pod_cidr="10.244.0.0/16", cluster_service_cidr="10.96.0.0/12")
PLANS = load_plans(SETTINGS.plans_file)
TENANT = UUID("0b4c3a8e-8a55-4c1c-9f0e-3e7f6d1f2a10")


def objects(plan: str, settings=SETTINGS, tenant=TENANT) -> list[dict]:
    p = PLANS[plan]
    return manifests.build(TenantSpec(tenant, namespace_for(tenant), p.name, p.limits), settings)


def by_kind(objs, kind, name=None):
    return next(o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name))


@pytest.mark.parametrize("version", ["1.30.0", kubernetes_validate.latest_version()])
@pytest.mark.parametrize("plan", sorted(PLANS))
def test_every_object_is_valid_in_strict_mode(plan, version):
    assert version in ("1.30.0", "1.37.0")
    for obj in objects(plan):
        kube_schemas.validate(obj, version, strict=True)  # raises on any error


def test_strict_validation_rejects_an_unknown_field():
    bad = by_kind(objects("professional"), "Deployment")
    bad["spec"]["template"]["spec"]["containers"][0]["runAsRoot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kube_schemas.validate(bad, "1.30.0", strict=True)


def test_professional_quota_is_fifty_browsers():
    hard = by_kind(objects("professional"), "ResourceQuota")["spec"]["hard"]
    assert hard["pods"] == "50"
    assert hard["requests.memory"] == hard["limits.memory"] == "6400Mi"
    assert hard["requests.cpu"] == hard["limits.cpu"] == "5000m"


def test_every_object_is_labelled_for_the_tenant_and_lives_in_its_namespace():
    objs = objects("professional")
    assert [o["kind"] for o in objs] == ["Namespace", "ResourceQuota", "LimitRange", "NetworkPolicy",
                                         "NetworkPolicy", "NetworkPolicy", "NetworkPolicy", "Deployment",
                                         "HorizontalPodAutoscaler"]
    for obj in objs:
        labels = obj["metadata"]["labels"]
        assert labels["browserfleet.io/tenant"] == str(TENANT)
        assert labels["app.kubernetes.io/managed-by"] == "browserfleet-provisioner"
        assert labels["app.kubernetes.io/part-of"] == "browserfleet"
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "tenant-0b4c3a8e8a55"
    assert by_kind(objs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_browser_pods_are_locked_down():
    pod = by_kind(objects("professional"), "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert container["resources"]["limits"] == {"cpu": "100m", "memory": "128Mi"}
    assert container["readinessProbe"]["httpGet"]["port"] == 9222


def test_ingress_only_from_the_gateway_and_warm_pool_and_egress_never_to_private_or_cluster_ranges():
    objs = objects("professional")
    deny = by_kind(objs, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    gateway, warm_pool = by_kind(objs, "NetworkPolicy", "allow-gateway-ingress")["spec"]["ingress"]
    for rule, namespace, pod_labels in ((gateway, SETTINGS.gateway_namespace, SETTINGS.gateway_pod_labels),
                                        (warm_pool, SETTINGS.warm_pool_namespace, SETTINGS.warm_pool_pod_labels)):
        (peer,) = rule["from"]
        assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
        assert peer["podSelector"] == {"matchLabels": pod_labels}
        assert rule["ports"] == [{"protocol": "TCP", "port": 9222}]  # DevTools only
    (egress,) = by_kind(objs, "NetworkPolicy", "allow-internet-egress")["spec"]["egress"]
    (block,) = egress["to"]
    assert block["ipBlock"]["cidr"] == "0.0.0.0/0"
    denied = [ipaddress.ip_network(c) for c in block["ipBlock"]["except"]]
    for must in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.169.254/32", "100.64.0.0/10",
                 "10.244.3.7/32", "10.96.0.1/32"):
        assert any(ipaddress.ip_network(must).subnet_of(d) for d in denied), must
    assert not any(ipaddress.ip_network("8.8.8.8/32").subnet_of(d) for d in denied)


def test_warm_pool_pods_are_configurable_like_the_gateway():
    settings = SETTINGS.model_copy(update={"warm_pool_namespace": "platform",
                                           "warm_pool_pod_labels": {"app": "pool", "tier": "browsers"}})
    _, rule = by_kind(objects("professional", settings), "NetworkPolicy", "allow-gateway-ingress")["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "platform"}},
                             "podSelector": {"matchLabels": {"app": "pool", "tier": "browsers"}}}]


def test_browser_pods_run_the_pools_chromium_flags():
    """The pod's Chromium gets the flags warm_pool's local browsers get, less those the image's
    entrypoint sets itself (chromedp/headless-shell: the headless shell, --no-sandbox, DevTools port)."""
    from services.warm_pool.adapters.chromium_launch import FLAGS
    (container,) = by_kind(objects("professional"), "Deployment")["spec"]["template"]["spec"]["containers"]
    # A subset, not equality: the local backend may add flags of its own (its sandbox).
    assert container["args"] and set(container["args"]) <= set(FLAGS)
    assert any(a.startswith("--disable-features=WebUIOmniboxPopup") for a in container["args"])
    assert not any(a.startswith(("--remote-debugging", "--user-data-dir")) for a in container["args"])


def test_cluster_ranges_outside_rfc1918_are_denied_too():
    settings = SETTINGS.model_copy(update={"cluster_pod_cidr": "198.18.0.0/15"})
    egress = by_kind(objects("professional", settings), "NetworkPolicy", "allow-internet-egress")
    assert "198.18.0.0/15" in egress["spec"]["egress"][0]["to"][0]["ipBlock"]["except"]


def test_hpa_spans_prewarmed_to_concurrency_limit():
    hpa = by_kind(objects("enterprise"), "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (20, 500)
    assert "replicas" not in by_kind(objects("enterprise"), "Deployment")["spec"]


def test_a_plan_without_prewarmed_browsers_gets_no_hpa_and_zero_replicas():
    objs = objects("starter")
    assert not [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"]
    assert by_kind(objs, "Deployment")["spec"]["replicas"] == 0
    assert by_kind(objs, "ResourceQuota")["spec"]["hard"]["pods"] == "1"


def render_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`python -m services.provisioner render ARGV…` in this process: its exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exited:
        provisioner_cli.main(["render", *argv])
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


def test_render_prints_exactly_the_objects_as_yaml(capsys):
    tenant = uuid4()
    code, out, _ = render_cli(capsys, "--plan", "professional", "--tenant-id", str(tenant))
    assert code == 0
    assert list(yaml.safe_load_all(out)) == objects("professional", ProvisionerSettings(), tenant)
    assert "&id" not in out


def test_render_refuses_an_unknown_plan(capsys):
    code, _, err = render_cli(capsys, "--plan", "gold", "--tenant-id", str(uuid4()))
    assert code == 2 and "unknown plan" in err


@pytest.mark.parametrize("concurrent,prewarm", [(0, 0), (1, 1), (3, 10), (2000, 0)])
def test_operator_defined_plans_are_valid_too(concurrent, prewarm):
    from shared.plans import Limits

    limits = Limits(max_concurrent_sessions=concurrent, max_session_seconds=60, prewarm_browsers=prewarm)
    objs = manifests.build(TenantSpec(TENANT, namespace_for(TENANT), "custom", limits), SETTINGS)
    for obj in objs:
        kube_schemas.validate(obj, "1.30.0", strict=True)
        kube_schemas.validate(obj, "1.37.0", strict=True)
    hpas = [o["spec"] for o in objs if o["kind"] == "HorizontalPodAutoscaler"]
    assert all(1 <= h["minReplicas"] <= h["maxReplicas"] == concurrent for h in hpas)
