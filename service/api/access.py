"""Every request and WebSocket: an id (echoed in `X-Request-ID`), an access line, its metrics.

The id is the caller's `X-Request-ID` when it is a plain token of at most 128 characters,
else a fresh one. The access line names the route, the status, the time taken and the key's
name; never the query string (a WebSocket's `token=` lives there) nor the body.
"""

from __future__ import annotations

import logging
import re
import time
from random import getrandbits as _random_bits
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import RequestContext, bind_request, unbind_request
from service.metrics import Metrics

log = logging.getLogger("streamwatch.access")
HEADER = "x-request-id"
_GOOD_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
# Metric labels must stay few: any other method a client invents counts as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class AccessMiddleware:
    """Pure ASGI, so streaming responses and WebSockets pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: Metrics, log_access: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.log_access = log_access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        context = RequestContext(_request_id(scope))
        binding = bind_request(context)
        status = 500 if kind == "http" else 1006  # what a crash or a dropped socket means
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            event = message["type"]
            if event == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(HEADER, context.id)
            elif event == "websocket.accept":
                status = 101
                headers = list(message.get("headers") or [])
                message["headers"] = [*headers, (HEADER.encode(), context.id.encode())]
            elif event == "websocket.close":
                status = int(message.get("code", 1000))
            await send(message)

        failed = True
        try:
            await self.app(scope, receive, send_with_id)
            failed = False
        finally:
            seconds = time.perf_counter() - started
            route = _route(scope)
            if kind == "http":
                method = scope["method"] if scope["method"] in _METHODS else "other"
                self.metrics.request_done(method, route, status, seconds)
            if self.log_access:
                _log_line(scope, route, status, seconds, context)
            if not failed:  # an error keeps the id bound, for the handler further out to log
                unbind_request(binding)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _GOOD_ID.match(text):
                return text
            break
    # Unique, not secret: 128 random bits as 32 hex digits, like a uuid4's hex without its
    # syscall and object (0.6 us against 3.4).
    return f"{_random_bits(128):032x}"


def _route(scope: Scope) -> str:
    """The route's template (`/v1/streams/{stream_id}`), so metric labels stay few."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def _log_line(
    scope: Scope, route: str, status: int, seconds: float, context: RequestContext
) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    method, path, ms = scope.get("method", "WS"), scope["path"], seconds * 1000
    # A record made here, its message formatted once: `log.info` would also look up the
    # caller's source line (a walk up the stack) that no access line shows.
    record = log.makeRecord(
        log.name,
        logging.INFO,
        __file__,
        0,
        f"{method} {path} {status} {ms:.1f}ms",
        (),
        None,
        extra={
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "duration_ms": round(ms, 3),
            "caller": context.caller,
        },
    )
    log.handle(record)
