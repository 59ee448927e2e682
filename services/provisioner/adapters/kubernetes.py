"""Kubernetes backend: server-side apply of a tenant's objects, pruning, deletion that waits out Terminating.

The official sync client runs in a worker thread (asyncio.to_thread). Requests go through
shared.kube (retries of transient failures) with a small kind → path table, so one code path
serves every kind: apply = PATCH application/apply-patch+yaml with our field manager and force=true.
"""
import asyncio
import logging
import time
from dataclasses import dataclass
from uuid import UUID

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.provisioner import manifests
from services.provisioner.domain import TenantSpec
from shared.kube import KubeError, Rest, Retry, api_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kind:
    prefix: str
    plural: str
    namespaced: bool = True


KINDS = {
    "Namespace": Kind("/api/v1", "namespaces", namespaced=False),
    "ResourceQuota": Kind("/api/v1", "resourcequotas"),
    "LimitRange": Kind("/api/v1", "limitranges"),
    "NetworkPolicy": Kind("/apis/networking.k8s.io/v1", "networkpolicies"),
    "Deployment": Kind("/apis/apps/v1", "deployments"),
    "HorizontalPodAutoscaler": Kind("/apis/autoscaling/v2", "horizontalpodautoscalers"),
}
NAMESPACED = [k for k, v in KINDS.items() if v.namespaced]


@dataclass
class ClusterTenant:
    namespace: str
    terminating: bool
    objects: set[tuple[str, str]]  # (kind, name)


class KubernetesBackend:
    def __init__(self, api: client.ApiClient, settings):
        self.api = api
        self.settings = settings
        self.field_manager = settings.kube_field_manager
        self.rest = Rest(api, timeout_seconds=settings.kube_request_timeout_s,
                         retry=Retry(settings.kube_retry_attempts, settings.kube_retry_base_s,
                                     settings.kube_retry_max_s))

    @classmethod
    def from_settings(cls, settings) -> "KubernetesBackend":
        return cls(api_client(url=settings.kube_api_url, kubeconfig=settings.kubeconfig,
                              context=settings.kube_context), settings)

    # ---- the Backend interface -----------------------------------------------------------
    async def apply(self, spec: TenantSpec) -> None:
        await asyncio.to_thread(self._apply, spec)

    async def delete(self, namespace: str) -> None:
        await asyncio.to_thread(self._delete_namespace, namespace)

    async def inventory(self) -> dict[UUID, ClusterTenant]:
        return await asyncio.to_thread(self._inventory)

    def expected(self, spec: TenantSpec) -> set[tuple[str, str]]:
        return {(o["kind"], o["metadata"]["name"]) for o in manifests.build(spec, self.settings)}

    # ---- sync work, off the event loop ---------------------------------------------------
    def _apply(self, spec: TenantSpec) -> None:
        self._wait_until_gone_if_terminating(spec.namespace)
        desired = manifests.build(spec, self.settings)
        for obj in desired:
            self._server_side_apply(obj)
        self._prune(spec.namespace, {(o["kind"], o["metadata"]["name"]) for o in desired})

    def _server_side_apply(self, obj: dict) -> dict:
        return self._call("PATCH", self._path(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]),
                          query=[("fieldManager", self.field_manager), ("force", "true")],
                          body=obj, content_type="application/apply-patch+yaml")

    def _prune(self, namespace: str, keep: set[tuple[str, str]]) -> None:
        """Delete our objects the plan no longer has (an HPA after a downgrade to starter)."""
        for kind in NAMESPACED:
            for item in self._list(kind, namespace):
                name = item["metadata"]["name"]
                if (kind, name) not in keep:
                    self._delete_ignoring_missing(kind, namespace, name)

    def _delete_namespace(self, namespace: str) -> None:
        self._delete_ignoring_missing("Namespace", None, namespace)
        self._wait_gone(namespace)

    def _wait_until_gone_if_terminating(self, namespace: str) -> None:
        current = self._get("Namespace", None, namespace)
        if current and current["metadata"].get("deletionTimestamp"):
            log.info("namespace still terminating; waiting before recreating it", extra={"namespace": namespace})
            self._wait_gone(namespace)

    def _wait_gone(self, namespace: str) -> None:
        deadline = time.monotonic() + self.settings.kube_terminating_timeout_s
        delay = 0.05
        while self._get("Namespace", None, namespace) is not None:
            if time.monotonic() > deadline:
                raise KubeError(f"namespace {namespace} still terminating after "
                                f"{self.settings.kube_terminating_timeout_s:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _inventory(self) -> dict[UUID, ClusterTenant]:
        found: dict[UUID, ClusterTenant] = {}
        for ns in self._list("Namespace", None):
            tenant = _tenant_of(ns)
            if tenant:
                found[tenant] = ClusterTenant(ns["metadata"]["name"], bool(ns["metadata"].get("deletionTimestamp")),
                                              {("Namespace", ns["metadata"]["name"])})
        for kind in NAMESPACED:
            for item in self._list(kind, None):
                tenant = _tenant_of(item)
                if tenant in found and item["metadata"].get("namespace") == found[tenant].namespace:
                    found[tenant].objects.add((kind, item["metadata"]["name"]))
        return found

    # ---- REST ----------------------------------------------------------------------------
    @staticmethod
    def _path(kind: str, namespace: str | None, name: str | None = None) -> str:
        k = KINDS[kind]
        path = f"{k.prefix}/namespaces/{namespace}/{k.plural}" if k.namespaced and namespace else f"{k.prefix}/{k.plural}"
        return f"{path}/{name}" if name else path

    def _list(self, kind: str, namespace: str | None) -> list[dict]:
        return self._call("GET", self._path(kind, namespace),
                          query=[("labelSelector", manifests.managed_selector())])["items"]

    def _get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        try:
            return self._call("GET", self._path(kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _delete_ignoring_missing(self, kind: str, namespace: str | None, name: str) -> None:
        try:
            self._call("DELETE", self._path(kind, namespace, name),
                       body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _call(self, method: str, path: str, *, query=None, body=None, content_type="application/json"):
        return self.rest.call(method, path, query=query, body=body, content_type=content_type)


def _tenant_of(obj: dict) -> UUID | None:
    value = (obj["metadata"].get("labels") or {}).get(manifests.TENANT_LABEL)
    try:
        return UUID(value) if value else None
    except ValueError:
        return None
