"""python -m services.provisioner — settings → migrations → broker + HTTP → run until signalled."""
import asyncio
from pathlib import Path

from services.provisioner import http, subscribers
from services.provisioner.adapters.local import LocalBackend
from services.provisioner.settings import ProvisionerSettings
from shared.service import Runtime, serve


def make_backend(settings: ProvisionerSettings):
    if settings.provisioner_backend == "kubernetes":
        from services.provisioner.adapters.kubernetes import KubernetesBackend
        return KubernetesBackend.from_settings(settings)
    return LocalBackend()


async def build(runtime: Runtime):
    backend = make_backend(runtime.settings)
    subscribers.register(runtime, backend=backend)
    return http.create_app(runtime)


def main() -> None:
    settings = ProvisionerSettings()
    asyncio.run(serve(name="provisioner", schema="provisioner", settings=settings,
                      migrations_dir=Path(__file__).with_name("migrations"), build=build))


if __name__ == "__main__":
    main()
