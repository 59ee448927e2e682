"""The fake Kubernetes API server answers the unmodified official client the way a real one does."""
import json

import pytest
from kubernetes import client

from tests.fakes.kube_api import FakeKubeAPI
from tests.helpers import wait_for


@pytest.fixture
def fake():
    api = FakeKubeAPI(terminating_seconds=0.3)
    api.start()
    yield api
    api.stop()


@pytest.fixture
def core(fake):
    conf = client.Configuration(host=fake.url)
    conf.retries = False
    with client.ApiClient(conf) as api:
        yield client.CoreV1Api(api), client.AppsV1Api(api)


def ns(name, **labels):
    return {"metadata": {"name": name, "labels": labels}}


def test_create_get_list_by_label_and_conflict(core):
    v1, _ = core
    created = v1.create_namespace(ns("a", team="x"))
    v1.create_namespace(ns("b", team="y"))
    assert created.status.phase == "Active" and created.metadata.uid
    assert v1.read_namespace("a").metadata.labels["kubernetes.io/metadata.name"] == "a"
    assert [n.metadata.name for n in v1.list_namespace(label_selector="team=x").items] == ["a"]
    assert [n.metadata.name for n in v1.list_namespace(label_selector="team in (x,y),team!=y").items] == ["a"]
    with pytest.raises(client.ApiException) as exc:
        v1.create_namespace(ns("a"))
    body = json.loads(exc.value.body)
    assert exc.value.status == 409 and body["reason"] == "AlreadyExists" and body["kind"] == "Status"
    with pytest.raises(client.ApiException) as exc:
        v1.read_namespace("nope")
    assert exc.value.status == 404 and json.loads(exc.value.body)["reason"] == "NotFound"


def test_resource_version_moves_only_on_change_and_put_checks_it(core):
    v1, _ = core
    v1.create_namespace(ns("a"))
    quota = {"metadata": {"name": "q"}, "spec": {"hard": {"pods": "1"}}}
    first = v1.create_namespaced_resource_quota("a", quota)
    same = v1.patch_namespaced_resource_quota("q", "a", {"spec": {"hard": {"pods": "1"}}})
    assert same.metadata.resource_version == first.metadata.resource_version
    changed = v1.patch_namespaced_resource_quota("q", "a", {"spec": {"hard": {"pods": "2"}}})
    assert int(changed.metadata.resource_version) > int(first.metadata.resource_version)
    stale = {**quota, "metadata": {"name": "q", "resourceVersion": first.metadata.resource_version}}
    with pytest.raises(client.ApiException) as exc:
        v1.replace_namespaced_resource_quota("q", "a", stale)
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "Conflict"


def test_server_side_apply_creates_updates_and_drops_fields_no_longer_applied(core, fake):
    v1, apps = core
    v1.create_namespace(ns("a"))
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"x": "1"}},
           "spec": {"replicas": 0, "selector": {"matchLabels": {"k": "v"}},
                    "template": {"metadata": {"labels": {"k": "v"}},
                                 "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    kw = dict(field_manager="me", force=True, _content_type="application/apply-patch+yaml")
    apps.patch_namespaced_deployment("d", "a", dep, **kw)
    del dep["spec"]["replicas"]
    dep["metadata"]["labels"] = {"y": "2"}
    got = apps.patch_namespaced_deployment("d", "a", dep, **kw)
    assert got.spec.replicas is None and got.metadata.labels == {"y": "2"}
    assert got.metadata.managed_fields[0].manager == "me"
    with pytest.raises(client.ApiException) as exc:
        apps.patch_namespaced_deployment("d", "a", dep, force=True, _content_type="application/apply-patch+yaml")
    assert exc.value.status == 400


def test_namespace_terminates_then_disappears_with_its_contents(core, fake):
    v1, _ = core
    v1.create_namespace(ns("a"))
    v1.create_namespaced_config_map("a", {"metadata": {"name": "c"}})
    v1.delete_namespace("a")
    assert v1.read_namespace("a").status.phase == "Terminating"
    with pytest.raises(client.ApiException) as exc:
        v1.create_namespaced_config_map("a", {"metadata": {"name": "d"}})
    assert exc.value.status == 403

    def gone() -> bool:
        try:
            v1.read_namespace("a")
        except client.ApiException as exc:
            assert exc.status == 404, exc.status
            return True
        return False
    wait_for(gone, timeout=5, what="the terminated namespace gone")
    assert fake.list("configmaps") == []


def test_switchable_failures(core, fake):
    v1, _ = core
    fake.fail_next(2, 500)
    for _ in range(2):
        with pytest.raises(client.ApiException) as exc:
            v1.list_namespace()
        assert exc.value.status == 500
    fake.fail_next(1, 429, method="POST")
    v1.list_namespace()
    with pytest.raises(client.ApiException) as exc:
        v1.create_namespace(ns("a"))
    assert exc.value.status == 429
    assert v1.create_namespace(ns("a")).metadata.name == "a"


def test_pods_are_generic_namespaced_objects(core, fake):
    v1, _ = core
    v1.create_namespace(ns("a"))
    v1.create_namespaced_pod("a", {"metadata": {"generateName": "b-", "labels": {"pool": "warm"}},
                                   "spec": {"containers": [{"name": "c", "image": "i"}]}})
    (pod,) = v1.list_namespaced_pod("a", label_selector="pool=warm").items
    v1.patch_namespaced_pod(pod.metadata.name, "a", {"metadata": {"labels": {"pool": "leased"}}})
    assert v1.list_namespaced_pod("a", label_selector="pool=warm").items == []
    assert len(v1.list_pod_for_all_namespaces(label_selector="pool=leased").items) == 1
