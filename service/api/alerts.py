"""Alert routes: history, and live events over WebSocket or Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.alerts import AlertEvent, AlertFilter, Subscription
from service.api.deps import AlertBusDep, AlertLogDep, EventSourceKey, ReadKey
from service.api.openapi import problem_response
from service.errors import StreamwatchError
from service.parsing import parse_timestamp

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])

# Globs are compiled and cached (fnmatch keeps thousands): a bound keeps that cache small.
_GLOB_CHARS = 256
StreamGlob = Annotated[
    str, Query(max_length=_GLOB_CHARS, description="Only streams matching this glob")
]
MinScore = Annotated[float, Query(ge=0.0, le=1.0, description="Only alerts peaking at least here")]


@router.get("", summary="Alert history, newest first")
async def list_alerts(
    alert_log: AlertLogDep,
    caller: ReadKey,
    stream: Annotated[
        str | None, Query(max_length=_GLOB_CHARS, description="stream id glob")
    ] = None,
    since: Annotated[
        str | None, Query(description="opened at or after (ISO 8601 / epoch s)")
    ] = None,
    open: Annotated[bool | None, Query(description="only open (true) or closed (false)")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    alerts, next_cursor = alert_log.alerts(
        stream=stream,
        since=None if since is None else parse_timestamp(since),
        open_only=open,
        before_id=cursor,
        limit=limit,
    )
    return {"alerts": [a.to_json() for a in alerts], "next_cursor": next_cursor}


@router.websocket("")
async def alerts_ws(
    websocket: WebSocket,
    bus: AlertBusDep,
    caller: ReadKey,
    stream: StreamGlob = "*",
    min_score: MinScore = 0.0,
) -> None:
    """Live alert events as JSON frames; `{"dropped": n}` says a slow reader lost n events."""
    try:
        subscription = bus.subscribe(AlertFilter(stream, min_score))
    except StreamwatchError as error:
        await websocket.accept()  # so the client gets the code and reason, not a bare 403
        await websocket.close(code=1013, reason=error.detail[:120])
        return
    await websocket.accept()
    tasks = {
        asyncio.create_task(_push_events(websocket, subscription)),
        asyncio.create_task(_until_disconnect(websocket)),  # a silent reader must still leave
    }
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        bus.unsubscribe(subscription)


async def _push_events(websocket: WebSocket, subscription: Subscription) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            events, dropped = await subscription.next_batch()
            if dropped:
                await websocket.send_text(orjson.dumps({"dropped": dropped}).decode())
            for event in events:
                await websocket.send_text(orjson.dumps(event.to_json()).decode())


async def _until_disconnect(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


@router.get(
    "/stream",
    summary="Live alert events as Server-Sent Events (resumable)",
    responses={503: problem_response("As many alert subscribers as allowed are connected")},
)
async def alerts_sse(
    request: Request,
    bus: AlertBusDep,
    alert_log: AlertLogDep,
    caller: EventSourceKey,
    stream: StreamGlob = "*",
    min_score: MinScore = 0.0,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """Each event's id is its sequence number; reconnect with Last-Event-ID to resume."""
    alert_filter = AlertFilter(stream, min_score)
    after = _event_id(last_event_id)
    subscription = bus.subscribe(alert_filter)  # before the replay, so nothing falls between
    try:
        missed = (
            []
            if after is None
            else [e for e in alert_log.events_after(after) if alert_filter.matches(e)]
        )
    except BaseException:
        bus.unsubscribe(subscription)  # a failed request must not keep a subscriber's place
        raise
    return EventSourceResponse(_sse_events(request, bus, subscription, missed))


def _event_id(text: str | None) -> int | None:
    """The sequence number a reconnecting client last saw; None if absent or not one of ours."""
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text)


async def _sse_events(
    request: Request, bus: AlertBusDep, subscription: Subscription, missed: list[AlertEvent]
) -> AsyncIterator[ServerSentEvent]:
    last_seq = 0
    try:
        for event in missed:
            last_seq = event.seq
            yield _sse(event)
        while not await request.is_disconnected():
            events, dropped = await subscription.next_batch()
            if dropped:
                yield ServerSentEvent(
                    data=orjson.dumps({"dropped": dropped}).decode(), event="dropped"
                )
            for event in events:
                if event.seq > last_seq:
                    last_seq = event.seq
                    yield _sse(event)
    finally:
        bus.unsubscribe(subscription)


def _sse(event: AlertEvent) -> ServerSentEvent:
    return ServerSentEvent(
        data=orjson.dumps(event.to_json()).decode(), id=str(event.seq), event=event.event
    )
