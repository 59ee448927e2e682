from fastapi import FastAPI, Request

from services.warm_pool import handlers
from services.warm_pool.ports import UnitOfWork
from shared import http
from shared.service import Runtime


def create_app(runtime: Runtime, *, uow: UnitOfWork) -> FastAPI:
    app = FastAPI(title="browserfleet warm_pool", version="1")
    http.install(app, ready=runtime.ready, settings=runtime.settings)

    @app.get("/v1/pool")
    async def pool(request: Request):
        http.require_admin(request, runtime.settings.admin_token.get_secret_value())
        rows = await handlers.pool_view(uow=uow)
        return {"replica_id": runtime.settings.replica_id, "max_browsers": runtime.settings.max_browsers,
                "tenants": [{"tenant_id": str(r["tenant_id"]), "plan": r["plan"], "status": r["status"],
                             "prewarm": r["prewarm"], "idle": r["idle"], "leased": r["leased"],
                             "launching": r["launching"], "context_hosts": r["context_hosts"],
                             "active_contexts": r["active_contexts"]} for r in rows]}

    return app
