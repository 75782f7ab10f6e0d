"""create_app(settings): builds every component in the lifespan and mounts the routes."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service import schemas
from service.alerts import Alert, AlertBus
from service.api import alerts, health, ingest_ws, metrics, models, problems, readings, streams
from service.api.access import AccessMiddleware
from service.api.direct import DirectRoutes
from service.api.openapi import declare_problems
from service.engine import Engine
from service.metrics import Metrics
from service.ratelimit import RateLimiter
from service.registry import ModelRegistry
from service.security import KeyRing
from service.settings import SecuritySettings, Settings
from service.store import open_store

_WIRE_MODELS: list[type[BaseModel]] = [
    schemas.ReadingIn, schemas.StreamReadingsIn, schemas.BatchIn,
    schemas.StreamColumnsIn, schemas.BatchColumnsIn,
]


def create_app(settings: Settings) -> FastAPI:
    collectors = Metrics()  # one registry per app: apps in one process do not share counters

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry.load(settings.model)
        store = open_store(settings, registry)
        alert_log = store.alert_log
        bus = AlertBus(settings.alerts.max_subscribers, settings.alerts.subscriber_queue)

        def on_alerts(events: list[tuple[str, Alert]]) -> None:
            for event in alert_log.extend(events):  # type: ignore[arg-type]
                bus.publish(event)  # after the one write that made the round's events durable

        engine = Engine(registry, settings, on_alerts, observer=collectors, shared=store.shared)
        try:
            app.state.restored = store.restore(engine)  # before start, so before ready
        except BaseException:
            store.close()
            raise
        app.state.store = store
        collectors.watch(engine, bus)
        app.state.metrics = collectors
        app.state.keyring = KeyRing(settings.security.api_keys)
        app.state.limiter = _rate_limiter(settings.security)
        app.state.settings = settings
        app.state.alert_log = alert_log
        app.state.alert_bus = bus
        app.state.engine = engine
        await engine.start()
        await store.start(engine)
        try:
            yield
        finally:
            await engine.stop()
            await store.stop()  # the last snapshot: the engine has drained
            store.close()

    app = FastAPI(
        title="streamwatch",
        version="0.1.0",
        summary="Streaming anomaly detection with one recurrent state per stream.",
        lifespan=lifespan,
        # Observability is Prometheus (service.metrics) and the access log. FastAPI's own
        # OpenTelemetry hooks otherwise look up the global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    problems.install(app)
    # The last added is the outermost: every request, direct or not, gets its access line.
    app.add_middleware(
        DirectRoutes,
        routes=[r for r in readings.router.routes if isinstance(r, APIRoute)],
        exception_handlers=app.exception_handlers,
        websockets=[ingest_ws.route],
    )
    app.add_middleware(AccessMiddleware, metrics=collectors, log_access=settings.log.access)
    for module in (readings, alerts, streams, models, health, metrics):
        app.include_router(module.router)
    _document_wire_models(app)
    return app


def _rate_limiter(settings: SecuritySettings) -> RateLimiter | None:
    if settings.rate_per_s is None:
        return None
    return RateLimiter(settings.rate_per_s, settings.rate_burst)


def create_app_from_env() -> FastAPI:
    """For process managers that import an app factory (uvicorn --factory, several workers)."""
    settings = Settings()
    gc.set_threshold(*settings.server.gc_thresholds)  # as `streamwatch serve` does
    return create_app(settings)


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
            declare_problems(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
