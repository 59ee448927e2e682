from typing import Literal

from pydantic import SecretStr

from shared.settings import ServiceSettings


class ProvisionerSettings(ServiceSettings):
    http_port: int = 8002
    # This service's own database login, for an operator who manages roles (DATABASE_URL unused then).
    provisioner_database_url: SecretStr | None = None
    provisioner_backend: Literal["local", "kubernetes"] = "local"

    # Kubernetes API: an explicit URL (tests, kubectl proxy), else KUBECONFIG, else in-cluster.
    kube_api_url: str | None = None
    kubeconfig: str | None = None
    kube_context: str | None = None
    kube_field_manager: str = "browserfleet-provisioner"
    kube_request_timeout_s: float = 10.0
    kube_retry_attempts: int = 6
    kube_retry_base_s: float = 0.2
    kube_retry_max_s: float = 5.0
    kube_terminating_timeout_s: float = 300.0
    reconcile_interval_s: float = 30.0
    # A tenant still `provisioning` this long after its last change is taken over by the reconciler.
    reconcile_stale_s: float = 300.0

    # What goes into a tenant's namespace.
    gateway_namespace: str = "browserfleet"
    gateway_pod_labels: dict[str, str] = {"app.kubernetes.io/name": "browserfleet-sessions"}
    # warm_pool checks a pod's DevTools (/json/version) when it leases it.
    warm_pool_namespace: str = "browserfleet"
    warm_pool_pod_labels: dict[str, str] = {"app.kubernetes.io/name": "browserfleet-warm-pool"}
    cluster_pod_cidr: str = "10.244.0.0/16"
    cluster_service_cidr: str = "10.96.0.0/12"
    browser_image: str = "chromedp/headless-shell:stable"
    browser_cpu_request: str = "100m"
    browser_cpu_limit: str = "100m"
    browser_memory_request: str = "128Mi"
    browser_memory_limit: str = "128Mi"
    browser_shm_size: str = "64Mi"
    hpa_cpu_utilization: int = 70

    def own_database_url(self) -> str | None:
        return self.provisioner_database_url.get_secret_value() if self.provisioner_database_url else None
