"""Kubernetes backend: the tenant's browser Deployment (made by the provisioner, sized by its HPA)
is the warm pool; warm_pool never starts a browser itself.

Lease: take a Ready pod of the Deployment (`browserfleet.io/pool=warm`) out of its selector by
relabelling it `browserfleet.io/pool=leased` plus `browserfleet.io/session` / `browserfleet.io/browser`.
The merge patch carries the pod's resourceVersion, so of two replicas racing for one pod exactly
one wins and the other gets 409 and tries its next candidate. The ReplicaSet then starts a
replacement at once, and the HPA never scales a leased pod away. Destroy = delete the pod (grace 0).

No capacity beyond the Deployment: with no Ready pod, a lease polls for up to `wait_s` (the
replacements of earlier leases becoming Ready), then answers no_capacity. It does not scale the
Deployment: its replica count belongs to the HPA, which would undo ours at its next sync.

The CDP URL is `ws://<podIP>:9222/devtools/browser/<id>` (the port is the pod's `devtools`
container port, 9222 in the provisioner's Deployment). The browser id comes from Chromium's
`GET http://<podIP>:9222/json/version` (its webSocketDebuggerUrl names a host we cannot use, so
we keep only its path). That one network hop is `devtools_path(pod_ip, port)`, injectable so that
tests against a fake API server (which has no real pods) can stub just it.

Pods are listed cluster-wide by label for crash detection and the start-up sweep, so warm_pool's
service account needs get/list/patch/delete on pods in all namespaces.
"""
import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable
from uuid import UUID

import httpx
from kubernetes.client.exceptions import ApiException

from shared.browsers import (BROWSER_COMPONENT, BROWSER_LABEL, COMPONENT_LABEL, DEVTOOLS_PORT, DEVTOOLS_PORT_NAME,
                             LEASED, POOL_LABEL, SESSION_LABEL, WARM)
from shared.kube import Rest, Retry, api_client

log = logging.getLogger(__name__)

WARM_PODS = f"{COMPONENT_LABEL}={BROWSER_COMPONENT},{POOL_LABEL}={WARM}"
LEASED_PODS = f"{COMPONENT_LABEL}={BROWSER_COMPONENT},{POOL_LABEL}={LEASED},{BROWSER_LABEL}"


@dataclass(frozen=True)
class Claimed:
    port: int
    pod: str  # "<namespace>/<name>": where the browser lives
    cdp_ws_url: str


def fetch_devtools_path(pod_ip: str, port: int) -> str:
    """The browser target's path from Chromium itself, e.g. /devtools/browser/<uuid>."""
    resp = httpx.get(f"http://{pod_ip}:{port}/json/version", timeout=2, trust_env=False)
    resp.raise_for_status()
    url = httpx.URL(resp.json()["webSocketDebuggerUrl"])
    return url.raw_path.decode()


def ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    return (not pod["metadata"].get("deletionTimestamp") and status.get("phase") == "Running"
            and bool(status.get("podIP"))
            and any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []))


def devtools_port(pod: dict) -> int:
    for container in pod["spec"].get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == DEVTOOLS_PORT_NAME:
                return int(port["containerPort"])
    return DEVTOOLS_PORT


def _browser_of(pod: dict) -> UUID | None:
    try:
        return UUID(pod["metadata"]["labels"][BROWSER_LABEL])
    except (KeyError, ValueError):
        return None


class KubernetesPods:
    def __init__(self, rest: Rest, *, poll_s: float = 0.25,
                 devtools_path: Callable[[str, int], str] = fetch_devtools_path):
        self.rest, self.poll_s, self.devtools_path = rest, poll_s, devtools_path

    @classmethod
    def from_settings(cls, settings, **kw) -> "KubernetesPods":
        api = api_client(url=settings.kube_api_url, kubeconfig=settings.kubeconfig, context=settings.kube_context)
        retry = Retry(settings.kube_retry_attempts, settings.kube_retry_base_s, settings.kube_retry_max_s)
        return cls(Rest(api, retry=retry, timeout_seconds=settings.kube_request_timeout_s), **kw)

    # ---- what the handlers call ------------------------------------------------------------
    async def claim(self, browser_id: UUID, *, namespace: str, session_id: UUID, wait_s: float) -> Claimed | None:
        """Lease one Ready pod of the namespace's Deployment; None if none became Ready within wait_s."""
        deadline = time.monotonic() + wait_s
        while True:
            claimed = await asyncio.to_thread(self._claim_one, browser_id, namespace, session_id)
            if claimed is not None or time.monotonic() >= deadline:
                return claimed
            await asyncio.sleep(self.poll_s)

    async def kill(self, browser_id: UUID) -> None:
        await asyncio.to_thread(self._kill, browser_id)

    async def leased(self) -> dict[UUID, bool]:
        """Every leased pod in the cluster: browser id → whether it is still a live, Ready browser."""
        pods = await asyncio.to_thread(self._pods, None, LEASED_PODS)
        return {bid: ready(p) for p in pods if (bid := _browser_of(p))}

    async def close(self) -> None:
        await asyncio.to_thread(self.rest.api.close)

    # ---- sync work, off the event loop -----------------------------------------------------
    def _claim_one(self, browser_id: UUID, namespace: str, session_id: UUID) -> Claimed | None:
        candidates = [p for p in self._pods(namespace, WARM_PODS) if ready(p)]
        random.shuffle(candidates)  # replicas racing for the same list collide less
        for pod in candidates:
            meta = pod["metadata"]
            try:
                self.rest.call("PATCH", f"/api/v1/namespaces/{namespace}/pods/{meta['name']}",
                               content_type="application/merge-patch+json",
                               body={"metadata": {"resourceVersion": meta["resourceVersion"], "labels": {
                                   POOL_LABEL: LEASED, SESSION_LABEL: str(session_id),
                                   BROWSER_LABEL: str(browser_id)}}})
            except ApiException as exc:
                if exc.status in (404, 409):  # taken by another replica, or gone: next one
                    continue
                raise
            ip, port = pod["status"]["podIP"], devtools_port(pod)
            try:
                path = self.devtools_path(ip, port)
            except Exception as exc:  # Ready but not answering: it can serve no session
                log.warning("leased pod's DevTools did not answer; deleting it",
                            extra={"pod": meta["name"], "namespace": namespace, "error": repr(exc)[:200]})
                self._delete(namespace, meta["name"])
                continue
            return Claimed(port=port, pod=f"{namespace}/{meta['name']}", cdp_ws_url=f"ws://{ip}:{port}{path}")
        return None

    def _kill(self, browser_id: UUID) -> None:
        for pod in self._pods(None, f"{BROWSER_LABEL}={browser_id}"):
            self._delete(pod["metadata"]["namespace"], pod["metadata"]["name"])

    def _pods(self, namespace: str | None, selector: str) -> list[dict]:
        path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
        return self.rest.call("GET", path, query=[("labelSelector", selector)])["items"]

    def _delete(self, namespace: str, name: str) -> None:
        try:
            self.rest.call("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}",
                           body={"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0})
        except ApiException as exc:
            if exc.status != 404:
                raise
