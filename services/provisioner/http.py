from fastapi import FastAPI

from shared import http
from shared.service import Runtime


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(title="browserfleet provisioner", version="1")
    http.install(app, ready=runtime.ready, settings=runtime.settings)
    return app
