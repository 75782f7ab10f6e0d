"""create_app(settings): builds every component in the lifespan and mounts the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service import schemas
from service.alerts import Alert, AlertBus, AlertLog
from service.api import alerts, health, ingest_ws, models, problems, readings, streams
from service.engine import Engine
from service.registry import ModelRegistry
from service.settings import Settings

_WIRE_MODELS: list[type[BaseModel]] = [schemas.ReadingIn, schemas.StreamReadingsIn, schemas.BatchIn]


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry.load(settings.model)
        alert_log = AlertLog(settings.alerts.history_limit)
        bus = AlertBus(settings.alerts.max_subscribers, settings.alerts.subscriber_queue)

        def on_alerts(events: list[tuple[str, Alert]]) -> None:
            for kind, alert in events:
                bus.publish(alert_log.append(kind, alert))  # type: ignore[arg-type]

        engine = Engine(registry, settings, on_alerts)
        app.state.settings = settings
        app.state.alert_log = alert_log
        app.state.alert_bus = bus
        app.state.engine = engine
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(
        title="streamwatch",
        version="0.1.0",
        summary="Streaming anomaly detection with one recurrent state per stream.",
        lifespan=lifespan,
    )
    problems.install(app)
    for module in (readings, ingest_ws, alerts, streams, models, health):
        app.include_router(module.router)
    _document_wire_models(app)
    return app


def create_app_from_env() -> FastAPI:
    """For process managers that import an app factory (uvicorn --factory, several workers)."""
    return create_app(Settings())


def _document_wire_models(app: FastAPI) -> None:
    """Reading routes parse their bodies per reading; publish the models they accept."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            _, defs = models_json_schema(
                [(m, "validation") for m in _WIRE_MODELS],
                ref_template="#/components/schemas/{model}",
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                defs.get("$defs", {})
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
