"""What routes receive: the components built in the app's lifespan, as Annotated aliases."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import WebSocketException
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocket

from service.alerts import AlertBus, AlertLog
from service.engine import Engine
from service.errors import LimitExceededError, StreamwatchError
from service.logs import current_request
from service.metrics import Metrics
from service.ratelimit import RateLimiter
from service.security import ANONYMOUS, KeyRing, Principal
from service.settings import LimitSettings, Role, Settings


def _from_state(name: str) -> Callable[[HTTPConnection], Awaitable[Any]]:
    """A dependency that hands a route the component the lifespan put at `app.state.<name>`."""

    # async: FastAPI runs a plain `def` dependency in a worker thread, which costs more per
    # request than the route's own work.
    async def component(conn: HTTPConnection) -> Any:
        return getattr(conn.app.state, name)

    return component


EngineDep = Annotated[Engine, Depends(_from_state("engine"))]
SettingsDep = Annotated[Settings, Depends(_from_state("settings"))]
AlertLogDep = Annotated[AlertLog, Depends(_from_state("alert_log"))]
AlertBusDep = Annotated[AlertBus, Depends(_from_state("alert_bus"))]
MetricsDep = Annotated[Metrics, Depends(_from_state("metrics"))]

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key: `Authorization: Bearer <key>`; a WebSocket may pass `?token=<key>`.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]

# WebSocket close codes: 1008 policy violation (no or bad key), 1013 try again later (rate).
_CLOSE_CODES = {401: 1008, 403: 1008, 429: 1013}


def _caller(role: Role, query_token: bool = False) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting callers whose key grants `role`, within their request rate;
    with `query_token`, the key may also come as `?token=` (for browsers' EventSource)."""

    async def caller(conn: HTTPConnection, credentials: Credentials) -> Principal:
        return await _admitted(conn, credentials, role, query_token)

    return caller


async def _admitted(
    conn: HTTPConnection,
    credentials: HTTPAuthorizationCredentials | None,
    role: Role,
    query_token: bool = False,
) -> Principal:
    """The caller, if its key grants `role` and its rate allows one request more."""
    keys: KeyRing = conn.app.state.keyring
    if keys.open:  # no keys: everyone is ANONYMOUS, and no rate applies
        principal = ANONYMOUS
    else:
        token = credentials.credentials if credentials is not None else None
        # Browsers cannot set headers on a WebSocket or an EventSource.
        if token is None and (query_token or isinstance(conn, WebSocket)):
            token = conn.query_params.get("token")
        try:
            principal = keys.authorize(token, role)
            _admit(conn, keys, principal)
        except StreamwatchError as error:
            if not isinstance(conn, WebSocket):
                raise
            await conn.accept()  # so the client gets the close code and reason, not a bare 403
            code = _CLOSE_CODES.get(error.status, 1008)
            raise WebSocketException(code, error.detail[:120]) from error
    context = current_request()
    if context is not None:
        context.caller = principal.name
    return principal


def _admit(conn: HTTPConnection, keys: KeyRing, principal: Principal) -> None:
    """One request more for this key; RateLimitedError past its rate (keyed callers only)."""
    limiter = _limiter(conn, keys)
    if limiter is not None:
        limiter.acquire(principal.name)


def _limiter(conn: HTTPConnection, keys: KeyRing) -> RateLimiter | None:
    """The rate limiter, if rates apply (they do to keyed callers only)."""
    limiter: RateLimiter | None = conn.app.state.limiter
    return None if keys.open else limiter


def frame_admission(conn: HTTPConnection, principal: Principal) -> Callable[[], None]:
    """For a WebSocket: call per frame; a frame counts as a request against the key's rate.
    (The key ring and the limiter are the app's for its life: looked up once, not per frame.)"""
    limiter = _limiter(conn, conn.app.state.keyring)
    return _no_limit if limiter is None else functools.partial(limiter.acquire, principal.name)


def _no_limit() -> None:
    return None


ReadKey = Annotated[Principal, Depends(_caller("read"))]
EventSourceKey = Annotated[Principal, Depends(_caller("read", query_token=True))]
AdminKey = Annotated[Principal, Depends(_caller("admin"))]


@dataclass(frozen=True, slots=True)
class Ingest:
    """What a reading route needs: the engine, the limits, the caller."""

    engine: Engine
    limits: LimitSettings
    caller: Principal


async def ingest_of(conn: HTTPConnection) -> Ingest:
    """The engine, the limits and the admitted caller of a reading route.

    The HTTP reading routes call this themselves instead of declaring it a dependency:
    FastAPI's dependency resolution cost ~13 us of the ~170 us of CPU a one-reading request
    took (`python -m benchmarks.edge_cost`). Their OpenAPI operations declare the bearer
    scheme with INGEST_SECURITY. They must: their POSTs are served by
    `service.api.direct.DirectRoutes`, which resolves no dependency (and refuses a route that
    declares one), as is the WebSocket ingest.
    """
    state = conn.app.state
    credentials = None if state.keyring.open else await _bearer(conn)  # open: no key to read
    caller = await _admitted(conn, credentials, "ingest")
    return Ingest(state.engine, state.settings.limits, caller)


# What a `credentials` dependency would have put in a reading route's OpenAPI operation.
INGEST_SECURITY: dict[str, Any] = {"security": [{"HTTPBearer": []}]}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise LimitExceededError(f"body of {declared} bytes; at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise LimitExceededError(f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class JSONBytes(Response):
    """A JSON response rendered by orjson (fast, and NaN-safe: it writes null), or given as
    JSON text already."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else orjson.dumps(content)
