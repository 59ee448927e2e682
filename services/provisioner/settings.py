from typing import Literal

from shared.settings import ServiceSettings


class ProvisionerSettings(ServiceSettings):
    http_port: int = 8002
    provisioner_backend: Literal["local", "kubernetes"] = "local"
