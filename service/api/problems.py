"""Every error leaves as RFC 9457 problem+json, through these handlers."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.errors import RateLimitedError, StreamwatchError, UnauthenticatedError
from service.schemas import problem

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


def _respond(request: Request, status: int, title: str, detail: str, slug: str) -> JSONResponse:
    body = {
        "type": f"https://streamwatch.dev/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE)


async def _domain(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StreamwatchError)
    return JSONResponse(
        problem(exc, request.url.path),
        status_code=exc.status,
        media_type=MEDIA_TYPE,
        headers=_headers(exc),
    )


def _headers(exc: StreamwatchError) -> dict[str, str] | None:
    """What HTTP says must come with some statuses: when to retry, how to authenticate."""
    if isinstance(exc, RateLimitedError):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    if isinstance(exc, UnauthenticatedError):
        return {"WWW-Authenticate": 'Bearer realm="streamwatch"'}
    return None


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return _respond(request, 422, "Invalid request", detail, "invalid-request")


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    response = _respond(request, exc.status_code, str(exc.detail), str(exc.detail), "http")
    for key, value in (exc.headers or {}).items():
        response.headers[key] = value
    return response


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return _respond(
        request, 500, "Internal error", "an unexpected error; it was logged", "internal"
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(StreamwatchError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
