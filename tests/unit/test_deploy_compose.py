"""compose.yaml and the Dockerfile, checked offline (no Docker engine or compose plugin here).

compose.yaml is interpolated like `docker compose config` does (${VAR}, ${VAR:-default}, $$) and
validated against the Compose Specification JSON schema that check-jsonschema vendors.
"""
import importlib.resources
import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = {"sessions", "billing", "provisioner", "warm_pool"}
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                       r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env: dict[str, str]):
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg")
        current = env.get(name)
        if op in (":-", "-"):
            return arg if current is None or (op == ":-" and current == "") else current
        if op in (":?", "?") and (current is None or (op == ":?" and current == "")):
            raise ValueError(f"required variable {name} is missing: {arg}")
        return current or ""

    return _VARIABLE.sub(substitute, value)


def compose_schema() -> dict:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


# What `python -m shared.devrun secrets` writes into .env: the file ships no secret of its own.
SECRETS = ("ADMIN_TOKEN", "STRIPE_WEBHOOK_SECRET", "STRIPE_API_KEY", "DATABASE_ROLE_SECRET", "POSTGRES_PASSWORD",
           "RABBITMQ_ADMIN_PASSWORD", "PROFILE_ENCRYPTION_KEY", *(f"{s.upper()}_RABBITMQ_PASSWORD" for s in APP_SERVICES))


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return interpolate(raw, {name: f"generated-{name.lower()}" for name in SECRETS})


def test_interpolation_follows_compose_rules():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} $$HOME $SET", env) == "x d d  $HOME x"
    with pytest.raises(ValueError):
        interpolate("${UNSET:?needed}", env)


def test_compose_file_matches_the_compose_specification(compose):
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("service, mutate", [
    ("sessions", lambda svc: svc.update(comand=svc.pop("command"))),
    ("billing", lambda svc: svc["depends_on"]["postgres"].update(condition="service_ready")),
    ("warm_pool", lambda svc: svc["healthcheck"].update(interval=[5])),
])
def test_the_schema_check_catches_a_broken_file(compose, service, mutate):
    broken = json.loads(json.dumps(compose))
    mutate(broken["services"][service])
    schema = compose_schema()
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))
    assert errors and all(list(e.path)[:2] == ["services", service] for e in errors)


def test_every_service_is_health_checked_and_waits_for_healthy_dependencies(compose):
    services = compose["services"]
    assert APP_SERVICES | {"postgres", "rabbitmq"} <= set(services)
    jobs = {name for name, service in services.items() if service.get("restart") == "no"}  # one-shot
    for name, service in services.items():
        assert name in jobs or service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, condition in service.get("depends_on", {}).items():
            if dependency in jobs:
                assert condition["condition"] == "service_completed_successfully", f"{name} -> {dependency}"
                continue
            assert condition["condition"] == "service_healthy", f"{name} -> {dependency}"
            assert services[dependency].get("healthcheck"), dependency
    for name in APP_SERVICES:
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"]), name


def test_app_services_run_their_own_entrypoints_and_can_scale(compose):
    for name in APP_SERVICES:
        service = compose["services"][name]
        assert service["command"] == [f"services.{name}"]
        assert (ROOT / "services" / name / "__main__.py").exists()
        assert "container_name" not in service, f"{name}: a fixed name blocks --scale"
        for port in service.get("ports", []):
            host = str(port).rsplit(":", 1)[0]
            assert "-" in host, f"{name}: a single host port {port} blocks --scale; publish a range"
        env = service["environment"]
        assert env["HTTP_HOST"] == "0.0.0.0"
        for url in (env["DATABASE_URL"], env["RABBITMQ_URL"]):
            assert re.search(r"@(postgres|rabbitmq):", url), url


def test_secrets_are_required_not_baked_in(raw):
    env = raw["services"]["billing"]["environment"]
    for key in ("ADMIN_TOKEN", "STRIPE_WEBHOOK_SECRET", "STRIPE_API_KEY", "DATABASE_ROLE_SECRET"):
        assert re.fullmatch(r"\$\{%s:\?[^}]*\}" % key, env[key]), key
    text = (ROOT / "compose.yaml").read_text()
    for name in SECRETS:
        assert re.search(r"\$\{%s:\?" % name, text), name
        assert not re.search(r"\$\{%s:?-" % name, text), f"{name} has a default"
        with pytest.raises(ValueError, match=name):
            interpolate(raw, {n: "x" for n in SECRETS if n != name})


def test_each_service_has_its_own_broker_user(compose):
    users = {name: re.match(r"amqp://([^:]+):", compose["services"][name]["environment"]["RABBITMQ_URL"]).group(1)
             for name in APP_SERVICES}
    assert users == {name: f"browserfleet-{name}" for name in APP_SERVICES}
    assert compose["services"]["broker-users"]["command"] == ["shared.broker", "users"]


# --- Dockerfile ---

def dockerfile_stages() -> dict[str, dict]:
    """name → {"from": parent, "lines": [instructions]}, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = {"from": match.group(1), "lines": []}
            stages[match.group(2) or f"stage{len(stages)}"] = current
        else:
            current["lines"].append(line)
    return stages


def chain(stages: dict, target: str) -> list[str]:
    """Instructions that build `target`, its ancestors' first."""
    lines = []
    while target in stages:
        lines = stages[target]["lines"] + lines
        target = stages[target]["from"]
    return lines


def _instruction(lines, keyword):
    return [line.split(None, 1)[1] for line in lines if line.split(None, 1)[0].upper() == keyword]


def test_each_compose_target_runs_non_root_under_tini(compose):
    stages = dockerfile_stages()
    targets = {service["build"]["target"] for name, service in compose["services"].items() if "build" in service}
    assert targets == {"base", "warm_pool"}
    for target in targets:
        lines = chain(stages, target)
        user = _instruction(lines, "USER")[-1].split(":")[0]
        assert user not in {"root", "0"}, f"{target} runs as root"  # Kubernetes runs both images as is
        assert any("tini" in run for run in _instruction(lines, "RUN")), f"{target} does not install tini"
        entrypoint = json.loads(_instruction(lines, "ENTRYPOINT")[-1])
        assert entrypoint[0].endswith("tini") and entrypoint[1] == "--", entrypoint


def test_only_compose_warm_pool_runs_privileged_to_build_browser_sandboxes(compose):
    privileged = {name for name, svc in compose["services"].items() if svc.get("privileged")}
    assert privileged == {"warm_pool"}
    assert compose["services"]["warm_pool"]["user"] == "0:0"
    assert "BROWSER_SANDBOX" not in compose["services"]["warm_pool"].get("environment", {})  # sandbox on
    installs = " ".join(_instruction(chain(dockerfile_stages(), "warm_pool"), "RUN"))
    for package in ("bubblewrap", "nftables", "iproute2"):
        assert package in installs


def test_only_the_warm_pool_image_carries_chromium(compose):
    stages = dockerfile_stages()
    installs = lambda target: " ".join(_instruction(chain(stages, target), "RUN"))  # noqa: E731
    assert compose["services"]["warm_pool"]["build"]["target"] == "warm_pool"
    assert re.search(r"apt-get install[^&]*\bchromium\b", installs("warm_pool"))
    assert "chromium" not in installs("base")
    assert compose["services"]["warm_pool"]["shm_size"], "Chromium needs more than the default 64 MiB /dev/shm"


def test_the_deployments_use_the_images_the_dockerfile_targets_build():
    text = (ROOT / "Dockerfile").read_text()
    assert "--target base -t browserfleet:latest" in text
    assert "--target warm_pool -t browserfleet-warm-pool:latest" in text
    for manifest, image in (("sessions.yaml", "browserfleet:latest"), ("warm-pool.yaml", "browserfleet-warm-pool:latest")):
        assert f"image: {image}" in (ROOT / "deploy" / "base" / manifest).read_text()


def test_the_build_context_leaves_out_the_virtualenv_and_git():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)
    assert os.path.exists(ROOT / "pyproject.toml")
