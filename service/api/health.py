"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.errors import StoreUnavailableError
from service.store import Store

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: models loaded, state restored, store reachable, engine running",
    responses={503: {"description": "Not ready", "content": {"application/json": {}}}},
)
async def readyz(request: Request) -> JSONResponse:
    """`store` tells how the state was restored (a snapshot set aside shows here) and, for
    the embedded store, the age of the last snapshot."""
    engine = getattr(request.app.state, "engine", None)
    store: Store | None = getattr(request.app.state, "store", None)
    checks: dict[str, Any] = {
        "models_loaded": engine is not None and bool(engine.registry.models),
        "state_restored": getattr(request.app.state, "restored", None) is not None,
        "store_reachable": store is not None and _reachable(store),
        "engine_running": engine is not None and engine.running,
    }
    ready = all(checks.values())
    body = {"ready": ready, "checks": checks, "store": None if store is None else store.status()}
    return JSONResponse(body, status_code=200 if ready else 503)


def _reachable(store: Store) -> bool:
    try:
        store.ping()
    except StoreUnavailableError:
        return False
    return True
