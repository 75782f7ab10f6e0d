"""What routes receive: the components built in the app's lifespan, as Annotated aliases."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from starlette.requests import HTTPConnection
from starlette.responses import Response

from service.alerts import AlertBus, AlertLog
from service.engine import Engine
from service.errors import LimitExceededError
from service.settings import Settings


def _engine(conn: HTTPConnection) -> Engine:
    engine: Engine = conn.app.state.engine
    return engine


def _settings(conn: HTTPConnection) -> Settings:
    settings: Settings = conn.app.state.settings
    return settings


def _alert_log(conn: HTTPConnection) -> AlertLog:
    log: AlertLog = conn.app.state.alert_log
    return log


def _alert_bus(conn: HTTPConnection) -> AlertBus:
    bus: AlertBus = conn.app.state.alert_bus
    return bus


EngineDep = Annotated[Engine, Depends(_engine)]
SettingsDep = Annotated[Settings, Depends(_settings)]
AlertLogDep = Annotated[AlertLog, Depends(_alert_log)]
AlertBusDep = Annotated[AlertBus, Depends(_alert_bus)]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise LimitExceededError(f"body of {declared} bytes; at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise LimitExceededError(f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class JSONBytes(Response):
    """A JSON response rendered by orjson (fast, and NaN-safe: it writes null)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
