"""Render a kustomization without the kustomize binary: the small subset deploy/ uses.

    python deploy/render.py deploy/overlays/production > rendered.yaml

Supported fields: resources (files and directories holding a kustomization), namespace,
labels (pairs, includeTemplates; selectors are never touched), images (newName/newTag),
replicas, patches (a strategic-merge patch file, its target taken from its own kind and name; or
a JSON 6902 patch file, a list of add/replace/remove operations, with `target: {kind, name}`).
Anything else raises, so this cannot silently disagree with `kubectl kustomize`.
Strategic merge here: maps merge recursively, lists of maps merge by `name`, other lists are
replaced, and a null value deletes the key.
"""
import copy
import sys
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas", "patches"}
# Kinds the `namespace:` field leaves alone. kustomize 5.5 (kubectl 1.32) does not know
# ValidatingAdmissionPolicy(Binding) and gives them the namespace too; so do we, to print the same
# objects (the API server drops a namespace sent with a cluster-scoped object).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "IngressClass",
                  "CustomResourceDefinition", "PriorityClass", "StorageClass"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: str | Path) -> list[dict]:
    directory = Path(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise ValueError(f"{directory}: kustomize fields not supported by deploy/render.py: {sorted(unknown)}")
    objects: list[dict] = []
    for entry in kustomization.get("resources", []):
        target = directory / entry
        objects.extend(render(target) if target.is_dir() else load_documents(target))
    for patch in kustomization.get("patches", []):
        if set(patch) not in ({"path"}, {"path", "target"}):
            raise ValueError(f"{directory}: only patches by `path` (and `target`) are supported: {patch}")
        docs = load_documents(directory / patch["path"])
        if len(docs) != 1:
            raise ValueError(f"{directory / patch['path']}: one patch per file")
        if isinstance(docs[0], list):
            _apply_json_patch(objects, docs[0], patch.get("target"), directory / patch["path"])
        elif "target" in patch:
            raise ValueError(f"{directory / patch['path']}: a strategic-merge patch names its own target")
        else:
            _apply_patch(objects, docs[0], directory / patch["path"])
    if "namespace" in kustomization:
        _set_namespace(objects, kustomization["namespace"])
    for spec in kustomization.get("labels", []):
        _add_labels(objects, spec)
    for image in kustomization.get("images", []):
        _set_image(objects, image)
    for replicas in kustomization.get("replicas", []):
        _set_replicas(objects, replicas)
    return objects


def _apply_patch(objects: list[dict], patch: dict, where: Path) -> None:
    matches = [o for o in objects if o["kind"] == patch["kind"] and o["metadata"]["name"] == patch["metadata"]["name"]]
    if len(matches) != 1:
        raise ValueError(f"{where}: patch matches {len(matches)} objects ({patch['kind']}/{patch['metadata']['name']})")
    merged = strategic_merge(matches[0], patch)
    matches[0].clear()
    matches[0].update(merged)


def _apply_json_patch(objects: list[dict], operations: list[dict], target: dict | None, where: Path) -> None:
    if not target or set(target) != {"kind", "name"}:
        raise ValueError(f"{where}: a JSON patch needs `target: {{kind, name}}` (only those): {target}")
    matches = [o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
    if len(matches) != 1:
        raise ValueError(f"{where}: patch matches {len(matches)} objects ({target['kind']}/{target['name']})")
    for operation in operations:
        op, path = operation.get("op"), operation.get("path", "")
        if op not in {"add", "replace", "remove"} or set(operation) - {"op", "path", "value"} or not path.startswith("/"):
            raise ValueError(f"{where}: only add, replace and remove with a JSON pointer are supported: {operation}")
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]
        node = matches[0]
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            index = len(node) if (op == "add" and last == "-") else int(last)
            if op != "add" and not 0 <= index < len(node):
                raise ValueError(f"{where}: {path}: no such element")
            if op == "add":
                node.insert(index, copy.deepcopy(operation["value"]))
            elif op == "replace":
                node[index] = copy.deepcopy(operation["value"])
            else:
                del node[index]
        else:
            if op != "add" and last not in node:
                raise ValueError(f"{where}: {path}: no such member")
            if op == "remove":
                del node[last]
            else:
                node[last] = copy.deepcopy(operation["value"])


def strategic_merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = strategic_merge(out[key], value) if key in out else copy.deepcopy(value)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and base and patch
            and all(isinstance(i, dict) and "name" in i for i in base + patch)):
        out = copy.deepcopy(base)
        for item in patch:
            index = next((n for n, b in enumerate(out) if b["name"] == item["name"]), None)
            if index is None:
                out.append(copy.deepcopy(item))
            else:
                out[index] = strategic_merge(out[index], item)
        return out
    return copy.deepcopy(patch)


def _set_namespace(objects: list[dict], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
        if obj["kind"] in {"RoleBinding", "ClusterRoleBinding"}:
            for subject in obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace


def _add_labels(objects: list[dict], spec: dict) -> None:
    unknown = set(spec) - {"pairs", "includeTemplates", "includeSelectors"}
    if unknown or spec.get("includeSelectors"):
        raise ValueError(f"labels: only pairs and includeTemplates are supported: {spec}")
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(spec["pairs"])
        if spec.get("includeTemplates") and obj["kind"] in WORKLOADS:
            obj["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {}).update(spec["pairs"])


def _containers(obj: dict) -> list[dict]:
    if obj["kind"] not in WORKLOADS:
        return []
    pod = obj["spec"]["template"]["spec"]
    return pod.get("initContainers", []) + pod.get("containers", [])


def _set_image(objects: list[dict], image: dict) -> None:
    for obj in objects:
        for container in _containers(obj):
            name, tag = _split_image(container["image"])
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"


def _split_image(image: str) -> tuple[str, str]:
    name, sep, tag = image.rpartition(":")
    return (name, tag) if sep and "/" not in tag else (image, "")


def _set_replicas(objects: list[dict], replicas: dict) -> None:
    found = [o for o in objects if o["kind"] in WORKLOADS and o["metadata"]["name"] == replicas["name"]]
    if not found:
        raise ValueError(f"replicas: no workload named {replicas['name']}")
    for obj in found:
        obj["spec"]["replicas"] = replicas["count"]


if __name__ == "__main__":
    yaml.safe_dump_all(render(sys.argv[1] if len(sys.argv) > 1 else "deploy/base"), sys.stdout, sort_keys=False)
