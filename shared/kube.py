"""Kubernetes API access common to the services with a kubernetes backend (provisioner, warm_pool).

The official sync client, called through `ApiClient.call_api` on plain paths (so one code path
serves every kind). Transient failures (connection errors, timeouts, 429, 5xx) are retried with
capped exponential backoff and full jitter, honouring Retry-After on a 429; anything else raises
the client's ApiException at once. Callers run this in a worker thread (asyncio.to_thread).
"""
import json
import logging
import random
import time
from dataclasses import dataclass

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)
RETRYABLE = {0, 429, 500, 502, 503, 504}


class KubeError(Exception):
    """The API stayed unavailable after retries."""


@dataclass(frozen=True)
class Retry:
    attempts: int = 6
    base_seconds: float = 0.2
    max_seconds: float = 5.0


def api_client(*, url: str | None, kubeconfig: str | None, context: str | None) -> client.ApiClient:
    """An explicit URL (tests, kubectl proxy), else KUBECONFIG (and context), else in-cluster."""
    if url:
        conf = client.Configuration(host=url.rstrip("/"))
    else:
        conf = client.Configuration()
        try:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=conf)
        except config.ConfigException:
            config.load_incluster_config(client_configuration=conf)
    conf.retries = False  # our retry loop decides (urllib3 would retry silently otherwise)
    return client.ApiClient(conf)


class Rest:
    def __init__(self, api: client.ApiClient, *, retry: Retry, timeout_seconds: float):
        self.api, self.retry, self.timeout_seconds = api, retry, timeout_seconds

    def call(self, method: str, path: str, *, query=None, body=None, content_type="application/json"):
        r = self.retry
        for attempt in range(1, r.attempts + 1):
            try:
                return self._once(method, path, query, body, content_type)
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                status = exc.status if isinstance(exc, ApiException) else 0
                if status not in RETRYABLE:
                    raise
                if attempt == r.attempts:
                    raise KubeError(f"{method} {path}: {describe(exc)} after {attempt} attempts") from exc
                delay = random.uniform(0, min(r.max_seconds, r.base_seconds * 2 ** attempt))
                if status == 429:  # the server says how long to back off; still capped by our ceiling
                    delay = max(delay, min(_retry_after(exc), r.max_seconds))
                log.warning("kubernetes API call failed; retrying", extra={
                    "method": method, "path": path, "error": describe(exc), "attempt": attempt,
                    "retry_in_s": round(delay, 3)})
                time.sleep(delay)

    def _once(self, method, path, query, body, content_type):
        request = self.api.param_serialize(method, path, query_params=query or [],
                                           header_params={"Accept": "application/json", "Content-Type": content_type},
                                           body=body, auth_settings=["BearerToken"])
        response = self.api.call_api(*request, _request_timeout=self.timeout_seconds)
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=response.data.decode(errors="replace"), data=None)
        return json.loads(response.data) if response.data else None


def _retry_after(exc: ApiException) -> float:
    try:
        return float((exc.headers or {}).get("Retry-After", 0))
    except (TypeError, ValueError):
        return 0.0


def describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        try:
            return f"{exc.status} {json.loads(exc.body).get('message', '')}"[:300]
        except (TypeError, ValueError):
            return f"{exc.status} {exc.reason}"
    return repr(exc)[:300]
