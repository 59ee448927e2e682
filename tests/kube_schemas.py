"""kubernetes-validate's validation, with each schema read and each validator built once.

`kubernetes_validate.validate` reads the version's 1.3 MB `_definitions.json` and builds a new
validator on every call, which was most of the unit suite's time. `validate` here resolves the
version and the schema file as it does and raises what it raises (ValidationError,
SchemaNotFoundError, VersionNotSupportedError), but keeps one validator per (Kubernetes version,
apiVersion, kind, strict). tests/unit/test_kube_schemas.py checks that both agree.
"""
import functools
import re

import jsonschema
from kubernetes_validate import utils
from referencing import Registry, Resource


@functools.cache
def _definitions(schema_dir: str, desired_version: str) -> Resource:
    return Resource.from_contents(utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json",
                                                        desired_version))


@functools.cache
def _validator(desired_version: str, api_version: str, kind: str, strict: bool):
    if utils.major_minor(desired_version) > utils.latest_version():
        raise utils.VersionNotSupportedError(version=utils.major_minor(desired_version))
    # The newest schema not newer than the version asked for, as the library picks it.
    version = [v for v in utils.all_versions() if utils.major_minor(v) <= utils.major_minor(desired_version)][-1]
    schema_dir = f"v{version}-local" + ("-strict" if strict else "")
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # rbac.authorization.k8s.io/v1 -> rbac-v1
    try:
        schema = utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group_version}.json",
                                       desired_version)
    except FileNotFoundError:
        raise utils.SchemaNotFoundError(version=utils.major_minor(desired_version), kind=kind,
                                                      api_version=api_version) from None
    registry = _definitions(schema_dir, desired_version) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry), utils.major_minor(version)


def validate(obj: dict, desired_version: str, strict: bool = False) -> str:
    """As `kubernetes_validate.validate(obj, desired_version, strict)`: the schema version used, or raises."""
    validator, version = _validator(desired_version.removeprefix("v"), obj["apiVersion"], obj["kind"], strict)
    try:
        validator.validate(obj)
    except jsonschema.ValidationError as exc:
        raise utils.ValidationError(exc, version=version) from None
    return version
