"""The reading routes, handed to their endpoints without FastAPI's per-request layers.

A one-reading POST spent about a third of its CPU in FastAPI's exception middleware, router
and request handler: more than the engine and the route's own work together (py-spy over
`python -m benchmarks.edge_cost`). These routes need none of it: they take the request
itself, call the key check themselves (`service.api.deps.ingest_of`) and return a ready
response. So `DirectRoutes`, inside the access middleware, matches a POST against those
routes and awaits the endpoint at once.

FastAPI still declares the routes (OpenAPI) and serves everything else, other methods on
these paths included. An error maps to its response through the app's own exception
handlers, as Starlette's ExceptionMiddleware would; one with no handler but the catch-all
goes on to the server-error middleware further out, as before.

The WebSocket ingest (`service.api.ingest_ws`; OpenAPI describes no WebSocket) is served
here alone: a plain ASGI endpoint, on the server's own channels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.routing import Match, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

ExceptionHandlers = Mapping[Any, Any]


class DirectRoutes:
    """Pure ASGI: POSTs matching `routes` go straight to their endpoints, and WebSockets
    matching `websockets` to theirs (plain ASGI endpoints)."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[APIRoute],
        exception_handlers: ExceptionHandlers,
        websockets: Sequence[WebSocketRoute] = (),
    ) -> None:
        for route in routes:  # what FastAPI would resolve, the endpoint would not get here
            needs = route.dependant
            if needs.dependencies or needs.query_params or needs.body_params:
                raise ValueError(
                    f"{route.path}: a direct route takes only its request and path parameters"
                )
        self.app = app
        self.routes = list(routes)
        self.websockets = list(websockets)
        # The catch-all handler belongs to the server-error middleware, which also re-raises.
        self.handlers = {
            kind: handler for kind, handler in exception_handlers.items()
            if kind not in (500, Exception)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for route in self.routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)  # path_params, endpoint, route (the access line's label)
                    await self._serve(route, scope, receive, send)
                    return
        elif scope["type"] == "websocket":
            for socket in self.websockets:
                match, child = socket.matches(scope)
                if match is Match.FULL:
                    scope.update(child, route=socket)  # the route: the access line's label
                    await socket.endpoint(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, route: APIRoute, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(**scope["path_params"], request=request)
        except Exception as error:
            handler = self._handler_for(error)
            if handler is None:
                raise
            response = await handler(request, error)
        await response(scope, receive, send)

    def _handler_for(self, error: Exception) -> Any:
        for kind in type(error).__mro__:  # the nearest class with a handler, as Starlette looks
            if kind in self.handlers:
                return self.handlers[kind]
        return None
