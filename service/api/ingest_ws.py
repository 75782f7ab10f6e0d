"""WS /v1/ingest: readings in frames, results back in order.

A frame is one reading or a list of readings (each with `stream_id`), or
`{"seq": n, "readings": [...]}`; the reply is `{"seq": n, "results": [...]}`. Frames are
pipelined: many may be in flight, replies keep the order of the frames. A malformed frame gets
`{"seq": n, "error": problem}` and the connection stays; a frame over the size limit closes it
with 1009.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from service import dataplane
from service.api.deps import EngineDep, SettingsDep
from service.errors import InvalidReadingError, StreamwatchError
from service.schemas import decode_json, parse_items, problem

router = APIRouter(tags=["readings"])

_IN_FLIGHT = 256  # frames per connection awaiting results; past it, reading the socket waits


@router.websocket("/v1/ingest")
async def ingest_ws(websocket: WebSocket, engine: EngineDep, settings: SettingsDep) -> None:
    await websocket.accept()
    replies: asyncio.Queue[asyncio.Future[dict[str, Any]] | None] = asyncio.Queue(_IN_FLIGHT)
    writer = asyncio.create_task(_write_replies(websocket, replies))
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            frame: bytes = message.get("bytes") or (message.get("text") or "").encode()
            if len(frame) > settings.limits.max_frame_bytes:
                await websocket.close(code=1009, reason="frame too large")
                break
            await replies.put(_submit_frame(frame, engine, settings))
    except WebSocketDisconnect:
        pass
    finally:
        await replies.put(None)
        await writer


def _submit_frame(frame: bytes, engine: EngineDep, settings: SettingsDep) -> asyncio.Future[Any]:
    """Parse and queue one frame now (so frames apply in arrival order); reply when done."""
    seq = None
    try:
        body = decode_json(frame)
        if isinstance(body, dict) and "seq" in body:
            seq = body.get("seq")
        items = _frame_items(body)
        parsed = parse_items(items, settings.limits)
    except StreamwatchError as error:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result({"seq": seq, "error": problem(error)})
        return done
    return asyncio.ensure_future(_reply(seq, engine, parsed))


async def _reply(seq: Any, engine: EngineDep, parsed: Any) -> dict[str, Any]:
    try:
        return {"seq": seq, **await dataplane.apply(engine, parsed)}
    except StreamwatchError as error:
        return {"seq": seq, "error": problem(error)}


def _frame_items(body: Any) -> list[Any]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict) and isinstance(body.get("readings"), list):
        return list(body["readings"])
    if isinstance(body, dict) and "stream_id" in body:
        return [{k: v for k, v in body.items() if k != "seq"}]
    raise InvalidReadingError(
        'a frame is a reading with stream_id, a list of them, or {"seq", "readings": [...]}'
    )


async def _write_replies(
    websocket: WebSocket, replies: asyncio.Queue[asyncio.Future[dict[str, Any]] | None]
) -> None:
    while (pending := await replies.get()) is not None:
        reply = await pending
        try:
            await websocket.send_text(orjson.dumps(reply).decode())
        except (WebSocketDisconnect, RuntimeError):
            return
