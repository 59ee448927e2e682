"""deploy/: render each kustomization (deploy/render.py, checked against `kubectl kustomize`), validate
every built-in object with kubernetes-validate in strict mode, and check what matters for operating it.

The operators' custom resources (RabbitmqCluster, CloudNativePG Cluster/ScheduledBackup, Barman
ObjectStore, PrometheusRule) have no schema in kubernetes-validate; they get a hand-written
check of the fields we rely on below, not a validation against the operators' own CRDs.
"""
import importlib.util
import re
from pathlib import Path

import kubernetes_validate
import pytest

from tests import kube_schemas

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = ["base", "overlays/production"]
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
CUSTOM_KINDS = {("rabbitmq.com/v1beta1", "RabbitmqCluster"), ("postgresql.cnpg.io/v1", "Cluster"),
                ("postgresql.cnpg.io/v1", "ScheduledBackup"), ("barmancloud.cnpg.io/v1", "ObjectStore"),
                ("monitoring.coreos.com/v1", "PrometheusRule")}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                  "ValidatingAdmissionPolicyBinding"}
SERVICES = {"sessions": "services.sessions", "billing": "services.billing",
            "provisioner": "services.provisioner", "warm-pool": "services.warm_pool"}


def _load_renderer():
    spec = importlib.util.spec_from_file_location("deploy_render", DEPLOY / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_renderer().render


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request) -> list[dict]:
    return render(DEPLOY / request.param)


def of_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def by_name(objects, kind, name):
    [obj] = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    return obj


def builtin(objects):
    return [o for o in objects if (o["apiVersion"], o["kind"]) not in CUSTOM_KINDS]


def test_the_shipped_kubernetes_versions_include_the_ones_we_target():
    assert "1.30.0" in kubernetes_validate.utils.all_versions()
    assert K8S_VERSIONS[-1] >= "1.37"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_builtin_object_validates_strictly(rendered, version):
    """Only the operators' kinds listed in CUSTOM_KINDS escape: any other kind without a schema
    raises SchemaNotFoundError here."""
    objects = builtin(rendered)
    assert len(objects) >= 20
    for obj in objects:
        try:
            kube_schemas.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} @ {version}: {path}: {exc.message}")


def test_every_object_is_namespaced_and_labelled(rendered):
    for obj in rendered:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "browserfleet"
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == "browserfleet", obj["metadata"]["name"]


def test_each_service_runs_its_own_entrypoint_from_the_right_image(rendered):
    deployments = {d["metadata"]["name"]: d for d in of_kind(rendered, "Deployment")}
    assert set(deployments) == set(SERVICES)
    for name, module in SERVICES.items():
        [container] = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert container["args"] == [module]
        image = container["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1]
        assert image == ("browserfleet-warm-pool" if name == "warm-pool" else "browserfleet")


def _env(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def test_settings_come_from_the_configmap_and_secrets_from_secret_refs(rendered):
    config = by_name(rendered, "ConfigMap", "browserfleet-config")["data"]
    assert config["HTTP_HOST"] == "0.0.0.0" and config["HTTP_PORT"] == "8000"
    secret_keys = set()
    for deployment in of_kind(rendered, "Deployment"):
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert {"configMapRef": {"name": "browserfleet-config"}} in container["envFrom"]
        env = _env(container)
        wanted = {"DATABASE_URL", "RABBITMQ_URL", "ADMIN_TOKEN"}
        if deployment["metadata"]["name"] == "billing":
            wanted |= {"STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET"}
        else:  # least privilege: only billing holds Stripe credentials
            assert not {"STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET"} & set(env)
        for name in wanted:
            ref = env[name]["valueFrom"]["secretKeyRef"]
            secret_keys.add((ref["name"], ref["key"]))
        assert not any("secret" in k.lower() or "token" in k.lower() or "key" in k.lower() for k in config)
    assert ("browserfleet-pg-app", "uri") in secret_keys  # written by CloudNativePG for Cluster browserfleet-pg
    operations = (ROOT / "docs" / "OPERATIONS.md").read_text()
    for name, key in secret_keys:
        assert name in operations and key in operations, f"docs/OPERATIONS.md does not say how to make {name}/{key}"


def _settings_fields() -> dict[str, set[str]]:
    """Service → the environment variables its settings class reads."""
    import importlib
    import inspect
    from shared.settings import ServiceSettings
    fields = {}
    for service in SERVICES.values():
        module = importlib.import_module(f"{service}.settings")
        [cls] = [c for _, c in inspect.getmembers(module, inspect.isclass)
                 if issubclass(c, ServiceSettings) and c is not ServiceSettings and c.__module__ == module.__name__]
        fields[service] = {name.upper() for name in cls.model_fields}
    return fields


def test_every_configured_variable_is_a_setting_some_service_reads(rendered):
    fields = _settings_fields()
    known = set().union(*fields.values()) | {"PYTHONDONTWRITEBYTECODE", "HOME"}
    config = by_name(rendered, "ConfigMap", "browserfleet-config")["data"]
    assert set(config) <= known, f"no service reads {set(config) - known}"
    for deployment in of_kind(rendered, "Deployment"):
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        service = container["args"][0]
        assert set(_env(container)) <= fields[service] | {"HOME"}, f"{service} does not read {set(_env(container)) - fields[service]}"


def test_every_container_is_probed_limited_and_unprivileged(rendered):
    for deployment in of_kind(rendered, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            where = f"{deployment['metadata']['name']}/{container['name']}"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert "memory" in container["resources"]["limits"], where
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: read-only root needs a writable /tmp"


def test_only_the_api_clients_get_a_service_account_token(rendered):
    for deployment in of_kind(rendered, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        account = by_name(rendered, "ServiceAccount", pod["serviceAccountName"])
        mounted = pod.get("automountServiceAccountToken", account.get("automountServiceAccountToken", True))
        assert mounted == (deployment["metadata"]["name"] in {"provisioner", "warm-pool"})


def test_warm_pool_has_a_memory_backed_dev_shm(rendered):
    pod = by_name(rendered, "Deployment", "warm-pool")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"
    assert "sizeLimit" in volumes[mount["name"]]["emptyDir"]


def _min_replicas(objects, deployment) -> int:
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]:
            assert "replicas" not in deployment["spec"], "an HPA-managed Deployment must leave replicas to the HPA"
            return hpa["spec"]["minReplicas"]
    return deployment["spec"].get("replicas", 1)


def test_pdbs_cover_every_deployment_with_more_than_one_replica(rendered):
    for deployment in of_kind(rendered, "Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        covering = [p for p in of_kind(rendered, "PodDisruptionBudget")
                    if p["spec"]["selector"]["matchLabels"].items() <= selector.items()]
        if _min_replicas(rendered, deployment) > 1:
            assert len(covering) == 1, deployment["metadata"]["name"]
            assert covering[0]["spec"].get("maxUnavailable", 0) == 1 or covering[0]["spec"].get("minAvailable") == 1


def test_sessions_and_warm_pool_autoscale(rendered):
    targets = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(rendered, "HorizontalPodAutoscaler")}
    assert set(targets) == {"sessions", "warm-pool"}
    for hpa in targets.values():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_services_select_their_pods_and_ingress_routes_only_public_paths(rendered):
    for service in of_kind(rendered, "Service"):
        deployment = by_name(rendered, "Deployment", service["metadata"]["name"])
        assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    [ingress] = of_kind(rendered, "Ingress")
    routes = {(p["path"], p["pathType"]): p["backend"]["service"]["name"]
              for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    # Which requests each rule lets in: tests/security/test_ingress_paths.py.
    assert routes == {("/webhooks/stripe", "Exact"): "billing", ("/v1/checkout-sessions", "Exact"): "billing",
                      ("/v1/sessions", "Prefix"): "sessions", ("/v1/connect", "Exact"): "sessions",
                      ("/v1/usage", "Prefix"): "sessions", ("/v1/api-keys", "Prefix"): "sessions",
                      ("/v1/profiles", "Prefix"): "sessions", ("/v1/dashboard", "Prefix"): "sessions",
                      ("/dashboard", "Prefix"): "sessions"}
    assert "defaultBackend" not in ingress["spec"]
    timeout = int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    assert timeout >= 6 * 3600, "websocket idle timeout shorter than the longest plan's session"
    public_url = by_name(rendered, "ConfigMap", "browserfleet-config")["data"]["PUBLIC_URL"]
    assert public_url == f"https://{ingress['spec']['rules'][0]['host']}"


def test_tenant_network_policies_admit_the_sessions_and_warm_pool_pods():
    """The provisioner's tenant NetworkPolicy admits pods labelled like our sessions and warm-pool pods."""
    from services.provisioner.settings import ProvisionerSettings
    settings = ProvisionerSettings()
    objects = render(DEPLOY / "base")
    config = by_name(objects, "ConfigMap", "browserfleet-config")["data"]
    namespace = by_name(objects, "Namespace", "browserfleet")["metadata"]["name"]
    for deployment, pod_labels in (("sessions", settings.gateway_pod_labels), ("warm-pool", settings.warm_pool_pod_labels)):
        labels = by_name(objects, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
        assert dict(pod_labels).items() <= labels.items(), deployment
    assert config["GATEWAY_NAMESPACE"] == config["WARM_POOL_NAMESPACE"] == namespace == "browserfleet"


def test_the_configured_browser_image_is_the_one_the_provisioner_reads(rendered):
    from services.provisioner.settings import ProvisionerSettings
    config = by_name(rendered, "ConfigMap", "browserfleet-config")["data"]
    assert ProvisionerSettings(browser_image=config["BROWSER_IMAGE"]).browser_image == config["BROWSER_IMAGE"]
    assert "BROWSER_IMAGE" in _settings_fields()["services.provisioner"]


RBAC_EXPECTED = {
    "browserfleet-provisioner": {
        ("", "namespaces"), ("", "resourcequotas"), ("", "limitranges"),
        ("networking.k8s.io", "networkpolicies"), ("apps", "deployments"), ("autoscaling", "horizontalpodautoscalers")},
    "browserfleet-warm-pool": {("", "pods"), ("apps", "deployments")},
}
FULL = {"get", "list", "watch", "create", "patch", "delete"}


def test_rbac_is_least_privilege(rendered):
    roles = of_kind(rendered, "ClusterRole") + of_kind(rendered, "Role")
    assert {r["metadata"]["name"] for r in roles} == set(RBAC_EXPECTED)
    for role in roles:
        grants: dict[tuple[str, str], set[str]] = {}
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    assert "/" not in resource, f"subresource {resource} not expected"
                    grants.setdefault((group, resource), set()).update(rule["verbs"])
        assert set(grants) == RBAC_EXPECTED[role["metadata"]["name"]]
        if role["metadata"]["name"] == "browserfleet-provisioner":
            assert all(verbs == FULL for verbs in grants.values())
        else:
            assert grants[("", "pods")] == {"get", "list", "watch", "patch", "delete"}
            assert grants[("apps", "deployments")] == {"get", "list"}
    bindings = {b["roleRef"]["name"]: b for b in of_kind(rendered, "ClusterRoleBinding")}
    assert bindings["browserfleet-provisioner"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "provisioner", "namespace": "browserfleet"}]
    assert bindings["browserfleet-warm-pool"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "warm-pool", "namespace": "browserfleet"}]


# --- admission policies: their CEL evaluated on sample requests (RBAC alone is cluster-wide) ---

def admit(policy: dict, request: dict, *, obj=None, old=None, namespace=None, params=None) -> bool | None:
    """None when the policy does not match the request, else whether it admits it. Like the API
    server: a variable that fails (e.g. `object.spec` on a DELETE) is an error only where it is
    used, and a validation that errors denies (failurePolicy: Fail)."""
    import cel
    context = {"request": request, "object": obj, "oldObject": old, "namespaceObject": namespace, "params": params}
    if not all(cel.evaluate(c["expression"], context) for c in policy["spec"]["matchConditions"]):
        return None
    variables = {}
    for variable in policy["spec"].get("variables", []):
        try:
            variables[variable["name"]] = cel.evaluate(variable["expression"], {**context, "variables": variables})
        except Exception:  # noqa: BLE001 - left out: a validation using it errors, and so denies
            pass

    def holds(expression: str) -> bool:
        try:
            return cel.evaluate(expression, {**context, "variables": variables}) is True
        except Exception:  # noqa: BLE001
            return False
    return all(holds(v["expression"]) for v in policy["spec"]["validations"])


def _ns(name, managed):
    labels = {"kubernetes.io/metadata.name": name}
    if managed:
        from services.provisioner.manifests import MANAGED_BY
        labels.update({"app.kubernetes.io/managed-by": MANAGED_BY, "pod-security.kubernetes.io/enforce": "restricted",
                       "pod-security.kubernetes.io/enforce-version": "latest"})
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def _browser_deployment(rendered) -> dict:
    """The browser Deployment the provisioner writes, with the image this kustomization configures."""
    from uuid import UUID
    from services.provisioner import manifests
    from services.provisioner.domain import TenantSpec, namespace_for
    from services.provisioner.settings import ProvisionerSettings
    from shared.plans import load_plans
    config = by_name(rendered, "ConfigMap", "browserfleet-config")["data"]
    settings = ProvisionerSettings(browser_image=config["BROWSER_IMAGE"])
    plan, tenant = load_plans(settings.plans_file)["professional"], UUID(int=1)
    return manifests.deployment(TenantSpec(tenant, namespace_for(tenant), plan.name, plan.limits), settings)


def _request(user, kind, operation):
    return {"userInfo": {"username": f"system:serviceaccount:browserfleet:{user}"},
            "kind": {"kind": kind}, "operation": operation}


def test_admission_confines_the_provisioner_to_tenant_namespaces(rendered):
    policy = by_name(rendered, "ValidatingAdmissionPolicy", "browserfleet-provisioner-tenants-only")
    binding = by_name(rendered, "ValidatingAdmissionPolicyBinding", "browserfleet-provisioner-tenants-only")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"
    tenant, system = _ns("tenant-abc", True), _ns("kube-system", False)
    ns = lambda op: _request("provisioner", "Namespace", op)  # noqa: E731
    assert admit(policy, ns("CREATE"), obj=tenant) is True
    assert admit(policy, ns("CREATE"), obj=_ns("tenant-x", False)) is False
    assert admit(policy, ns("UPDATE"), obj=tenant, old=tenant) is True
    assert admit(policy, ns("UPDATE"), obj=_ns("kube-system", True), old=system) is False  # no self-labelling
    assert admit(policy, ns("DELETE"), old=tenant) is True
    assert admit(policy, ns("DELETE"), old=system) is False
    deployment = _browser_deployment(rendered)
    for op in ("CREATE", "UPDATE", "DELETE"):
        obj = None if op == "DELETE" else deployment
        assert admit(policy, _request("provisioner", "Deployment", op), obj=obj, old=deployment, namespace=tenant) is True
        assert admit(policy, _request("provisioner", "Deployment", op), obj=obj, old=deployment, namespace=system) is False
    assert admit(policy, _request("warm-pool", "Namespace", "DELETE"), old=system) is None
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    covered = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert covered == RBAC_EXPECTED["browserfleet-provisioner"]
    # What the policies pin in a tenant's objects: tests/security/test_kube_policies.py.


def test_the_tenant_config_policy_reads_the_configmap_and_binds_to_tenant_namespaces_only(rendered):
    policy = by_name(rendered, "ValidatingAdmissionPolicy", "browserfleet-provisioner-tenant-config")
    binding = by_name(rendered, "ValidatingAdmissionPolicyBinding", "browserfleet-provisioner-tenant-config")
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert policy["spec"]["paramKind"] == {"apiVersion": "v1", "kind": "ConfigMap"}
    config = by_name(rendered, "ConfigMap", "browserfleet-config")["metadata"]
    assert binding["spec"]["paramRef"] == {"name": config["name"], "namespace": config["namespace"],
                                           "parameterNotFoundAction": "Deny"}
    from services.provisioner.manifests import MANAGED_BY
    assert binding["spec"]["matchResources"] == {
        "namespaceSelector": {"matchLabels": {"app.kubernetes.io/managed-by": MANAGED_BY}}}
    params = by_name(rendered, "ConfigMap", "browserfleet-config")
    deployment = _browser_deployment(rendered)
    assert admit(policy, _request("provisioner", "Deployment", "CREATE"), obj=deployment, params=params) is True


def test_admission_confines_warm_pool_to_tenant_pods(rendered):
    policy = by_name(rendered, "ValidatingAdmissionPolicy", "browserfleet-warm-pool-tenants-only")
    pod = {"kind": "Pod", "metadata": {"name": "browsers-1", "labels": {
        "app.kubernetes.io/component": "browser", "browserfleet.io/pool": "warm"}}, "spec": {"containers": []}}
    leased = {**pod, "metadata": {**pod["metadata"], "labels": {**pod["metadata"]["labels"], "browserfleet.io/pool": "leased"}}}
    for op in ("UPDATE", "DELETE"):
        request = _request("warm-pool", "Pod", op)
        obj = None if op == "DELETE" else leased
        assert admit(policy, request, obj=obj, old=pod, namespace=_ns("tenant-abc", True)) is True
        assert admit(policy, request, obj=obj, old=pod, namespace=_ns("browserfleet", False)) is False
    assert admit(policy, _request("sessions", "Pod", "DELETE"), old=pod, namespace=_ns("x", False)) is None


def test_admission_policies_name_the_rendered_service_accounts(rendered):
    accounts = {f"system:serviceaccount:{a['metadata']['namespace']}:{a['metadata']['name']}"
                for a in of_kind(rendered, "ServiceAccount")}
    for policy in of_kind(rendered, "ValidatingAdmissionPolicy"):
        [condition] = policy["spec"]["matchConditions"]
        username = re.search(r"'(system:serviceaccount:[^']+)'", condition["expression"]).group(1)
        assert username in accounts


# --- custom resources: the fields we rely on, checked by hand (no CRD schema offline) ---

def test_rabbitmq_cluster_runs_three_nodes_for_quorum_queues(rendered):
    [mq] = of_kind(rendered, "RabbitmqCluster")
    assert mq["apiVersion"] == "rabbitmq.com/v1beta1"
    spec = mq["spec"]
    assert set(spec) <= {"replicas", "persistence", "resources", "rabbitmq", "image", "service", "affinity",
                         "tolerations", "override", "tls", "terminationGracePeriodSeconds"}
    assert spec["replicas"] >= 3 and spec["replicas"] % 2 == 1
    assert re.fullmatch(r"\d+Gi", spec["persistence"]["storage"])
    assert {"rabbitmq_shovel", "rabbitmq_shovel_management"} <= set(spec["rabbitmq"]["additionalPlugins"])
    assert set(spec["rabbitmq"]) <= {"additionalPlugins", "additionalConfig", "advancedConfig", "envConfig"}
    assert "memory" in spec["resources"]["limits"]


def test_postgres_cluster_is_replicated_and_lets_services_make_their_roles(rendered):
    [pg] = of_kind(rendered, "Cluster")
    assert pg["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = pg["spec"]
    assert set(spec) <= {"instances", "primaryUpdateStrategy", "bootstrap", "postgresql", "storage", "resources",
                         "affinity", "plugins", "monitoring", "backup", "imageName"}
    assert spec["instances"] >= 2
    assert re.fullmatch(r"\d+Gi", spec["storage"]["size"])
    initdb = spec["bootstrap"]["initdb"]
    assert initdb["database"] == initdb["owner"] == "browserfleet"
    assert f"ALTER ROLE {initdb['owner']} CREATEROLE" in initdb["postInitApplicationSQL"]
    # The app Secret CloudNativePG writes is `<cluster>-app`; the services read its `uri`.
    [deployment] = [d for d in of_kind(rendered, "Deployment") if d["metadata"]["name"] == "sessions"]
    ref = _env(deployment["spec"]["template"]["spec"]["containers"][0])["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == f"{pg['metadata']['name']}-app"
    for plugin in spec.get("plugins", []):
        assert set(plugin) <= {"name", "isWALArchiver", "parameters", "enabled"}


def test_production_backs_up_postgres_continuously_and_nightly():
    objects = render(DEPLOY / "overlays/production")
    [store] = of_kind(objects, "ObjectStore")
    [scheduled] = of_kind(objects, "ScheduledBackup")
    [cluster] = of_kind(objects, "Cluster")
    [plugin] = cluster["spec"]["plugins"]
    assert plugin["isWALArchiver"] is True
    assert plugin["parameters"]["barmanObjectName"] == store["metadata"]["name"]
    assert store["spec"]["configuration"]["destinationPath"].startswith("s3://")
    assert re.fullmatch(r"\d+[dwm]", store["spec"]["retentionPolicy"])
    assert scheduled["spec"]["cluster"]["name"] == cluster["metadata"]["name"]
    assert scheduled["spec"]["method"] == "plugin"
    assert scheduled["spec"]["pluginConfiguration"]["name"] == plugin["name"]
    assert len(scheduled["spec"]["schedule"].split()) == 6  # CloudNativePG's cron has seconds first


def _defined_metrics() -> set[str]:
    names = set()
    for path in [*ROOT.joinpath("shared").rglob("*.py"), *ROOT.joinpath("services").rglob("*.py")]:
        names |= set(re.findall(r"(?:Counter|Gauge|Histogram|Summary)\(\s*\"([a-z_:]+)\"", path.read_text()))
    return names


PROMQL_FUNCTIONS = {"histogram_quantile", "clamp_min", "clamp_max", "label_replace", "absent_over_time",
                    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers left once strings, label matchers,
    grouping clauses, ranges and function names are taken out."""
    expr = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^]]*\]', " ", expr)
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", expr)
    tokens = set(re.findall(r"\b[a-z_][a-z0-9_:]*\b", expr))
    return {t for t in tokens if "_" in t and t not in PROMQL_FUNCTIONS}


def test_metric_names_are_found_in_promql():
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket{route="/a_b"}[5m]))) > 2'
                        ' or max(y_pending) > 0') == {"x_seconds_bucket", "y_pending"}


def test_alerts_use_only_metrics_the_code_exports_and_are_documented():
    objects = render(DEPLOY / "overlays/production")
    [rule] = of_kind(objects, "PrometheusRule")
    defined = _defined_metrics()
    operations = (ROOT / "docs" / "OPERATIONS.md").read_text()
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert len(alerts) >= 8
    for alert in alerts:
        assert {"alert", "expr", "labels", "annotations"} <= set(alert)
        assert alert["labels"]["severity"] in {"warning", "critical"}
        used = {re.sub(r"_(bucket|count|sum)$", "", m) for m in metric_names(alert["expr"])}
        assert used and used <= defined, f"{alert['alert']}: {used - defined} not exported by any service"
        assert alert["alert"] in operations, f"{alert['alert']} is not explained in docs/OPERATIONS.md"


def test_the_production_overlay_changes_only_what_it_says():
    base, production = render(DEPLOY / "base"), render(DEPLOY / "overlays/production")
    assert by_name(production, "HorizontalPodAutoscaler", "sessions")["spec"]["minReplicas"] == 3
    assert by_name(production, "HorizontalPodAutoscaler", "sessions")["spec"]["metrics"] == \
        by_name(base, "HorizontalPodAutoscaler", "sessions")["spec"]["metrics"]
    assert by_name(production, "Deployment", "billing")["spec"]["replicas"] == 3
    for deployment in of_kind(production, "Deployment"):
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].startswith("registry.example.com/")
        assert not deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":latest")
    config = by_name(production, "ConfigMap", "browserfleet-config")["data"]
    assert re.fullmatch(r"[a-z0-9.-]+(:\d+)?/[a-z0-9._/-]+@sha256:[0-9a-f]{64}", config["BROWSER_IMAGE"])
    assert {k: v for k, v in config.items() if k not in {"PUBLIC_URL", "BROWSER_IMAGE"}} == \
        {k: v for k, v in by_name(base, "ConfigMap", "browserfleet-config")["data"].items()
         if k not in {"PUBLIC_URL", "BROWSER_IMAGE"}}
    ingress = lambda objects: by_name(objects, "Ingress", "browserfleet")["spec"]  # noqa: E731
    assert [r["http"] for r in ingress(production)["rules"]] == [r["http"] for r in ingress(base)["rules"]]
    assert [r["host"] for r in ingress(production)["rules"]] == ingress(production)["tls"][0]["hosts"] == \
        ["browsers.browserfleet.example"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_renderer_prints_what_kubectl_kustomize_prints(kustomization):
    import shutil
    import subprocess
    import yaml
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (>= 1.32, for its kustomize) is needed to check deploy/render.py against it"
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / kustomization)], capture_output=True, text=True, check=True)
    key = lambda o: (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])  # noqa: E731
    theirs = sorted((o for o in yaml.safe_load_all(out.stdout) if o), key=key)
    assert sorted(render(DEPLOY / kustomization), key=key) == theirs


def test_the_renderer_applies_json_patches_and_refuses_others(tmp_path):
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: '1', l: x}\n")
    (tmp_path / "ops.yaml").write_text("- {op: replace, path: /data/a, value: '2'}\n- {op: add, path: /data/b, value: '3'}\n"
                                       "- {op: remove, path: /data/l}\n")
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n  - {path: ops.yaml, target: {kind: ConfigMap, name: c}}\n")
    [cm] = render(tmp_path)
    assert cm["data"] == {"a": "2", "b": "3"}
    (tmp_path / "ops.yaml").write_text("- {op: move, from: /data/a, path: /data/c}\n")
    with pytest.raises(ValueError, match="only add, replace and remove"):
        render(tmp_path)
    (tmp_path / "ops.yaml").write_text("- {op: remove, path: /data/nothing}\n")
    with pytest.raises(ValueError, match="no such member"):
        render(tmp_path)


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nconfigMapGenerator: []\n")
    with pytest.raises(ValueError, match="configMapGenerator"):
        render(tmp_path)
