"""create_app(): routers, error handlers. `uvicorn app.main:app` serves it."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from app import console
from app.api import errors, guard, head
from app.api.deps import current_settings, reject_unknown_query
from app.api.routes import datasets, health, infer, intrinsic, jobs, metrics, models, tasks
from app.config import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPIOffline(  # /docs and /redoc load their scripts from this server, not a CDN
        title="kilotask",
        version="0.1.0",
        description="Sub-kilobyte fine-tuned tasks: train, store, exchange and serve them.",
        dependencies=[Depends(reject_unknown_query)],
    )
    if settings is not None:

        async def given_settings() -> Settings:
            return settings

        app.dependency_overrides[current_settings] = given_settings
    errors.install(app)
    guard.install(app, settings or get_settings())  # keys and sizes before any body is read
    head.install(app)  # outermost: HEAD is GET without the body, for every GET route
    metrics.install(app, settings or get_settings())
    for module in (health, models, datasets, jobs, intrinsic, tasks, infer):
        app.include_router(module.router)
    console.install(app)  # the web console at /: static files over the same API
    return app


app = create_app()
