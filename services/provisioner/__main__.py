"""python -m services.provisioner [render --plan P --tenant-id ID]

No arguments: settings → migrations → broker + HTTP → run until signalled.
`render`: print, as multi-document YAML, the Kubernetes objects the backend would apply.
"""
import argparse
import sys
from pathlib import Path
from uuid import UUID

from services.provisioner import http, manifests, subscribers
from services.provisioner.adapters.local import LocalBackend
from services.provisioner.domain import TenantSpec, namespace_for
from services.provisioner.settings import ProvisionerSettings
from services.provisioner.uow import PostgresUnitOfWork
from shared.plans import UnknownPlan, get_plan
from shared.service import Runtime, run, serve


def make_backend(settings: ProvisionerSettings):
    if settings.provisioner_backend == "kubernetes":
        from services.provisioner.adapters.kubernetes import KubernetesBackend
        return KubernetesBackend.from_settings(settings)
    return LocalBackend()


async def build(runtime: Runtime):
    backend = make_backend(runtime.settings)
    subscribers.register(runtime, uow=PostgresUnitOfWork(runtime.pool), backend=backend)
    return http.create_app(runtime)


def render(argv: list[str]) -> int:
    import yaml

    parser = argparse.ArgumentParser(prog="python -m services.provisioner render")
    parser.add_argument("--plan", required=True)
    parser.add_argument("--tenant-id", required=True, type=UUID)
    args = parser.parse_args(argv)
    settings = ProvisionerSettings()
    try:
        plan = get_plan(settings.plans_file, args.plan)
    except UnknownPlan:
        print(f"unknown plan: {args.plan}", file=sys.stderr)
        return 2
    spec = TenantSpec(args.tenant_id, namespace_for(args.tenant_id), plan.name, plan.limits)
    yaml.safe_dump_all(manifests.build(spec, settings), sys.stdout, sort_keys=False)
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "render":
        sys.exit(render(argv[1:]))
    settings = ProvisionerSettings()
    run(serve(name="provisioner", schema="provisioner", settings=settings,
               migrations_dir=Path(__file__).with_name("migrations"), build=build))


if __name__ == "__main__":
    main()
