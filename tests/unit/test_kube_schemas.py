"""tests/kube_schemas.py validates as kubernetes-validate does: the same answer for a valid object,
the same error for an invalid one, the same refusal of a kind it has no schema for."""
import kubernetes_validate
import pytest

from tests import kube_schemas

DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "n"},
              "spec": {"selector": {"matchLabels": {"app": "d"}},
                       "template": {"metadata": {"labels": {"app": "d"}},
                                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}
UNKNOWN_FIELD = {**DEPLOYMENT, "spec": {**DEPLOYMENT["spec"], "replicaz": 2}}
WRONG_TYPE = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"},
              "rules": [{"apiGroups": [""], "resources": "pods", "verbs": ["get"]}]}


@pytest.mark.parametrize("version", ["1.30.0", kubernetes_validate.latest_version()])
def test_a_valid_object_gets_the_same_schema_version(version):
    assert kube_schemas.validate(DEPLOYMENT, version, strict=True) == kubernetes_validate.validate(
        DEPLOYMENT, version, strict=True)


@pytest.mark.parametrize("obj, strict", [(UNKNOWN_FIELD, True), (WRONG_TYPE, False)])
def test_an_invalid_object_gets_the_same_error(obj, strict):
    with pytest.raises(kubernetes_validate.ValidationError) as ours:
        kube_schemas.validate(obj, "1.30.0", strict=strict)
    with pytest.raises(kubernetes_validate.ValidationError) as theirs:
        kubernetes_validate.validate(obj, "1.30.0", strict=strict)
    assert (ours.value.message, list(ours.value.path), ours.value.version) == (
        theirs.value.message, list(theirs.value.path), theirs.value.version)


def test_a_kind_without_a_schema_is_refused_alike():
    crd = {"apiVersion": "rabbitmq.com/v1beta1", "kind": "RabbitmqCluster", "metadata": {"name": "mq"}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError) as ours:
        kube_schemas.validate(crd, "1.30.0", strict=True)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError) as theirs:
        kubernetes_validate.validate(crd, "1.30.0", strict=True)
    assert ours.value.message == theirs.value.message
