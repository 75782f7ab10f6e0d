"""WS /v1/ingest: readings in frames, results back in order.

A frame is one reading or a list of readings (each with `stream_id`), or
`{"seq": n, "readings": [...]}`; the reply is `{"seq": n, "results": [...]}`. Readings sent
as columns, `{"seq": n, "columns": {...}}`, are answered as columns, `{"seq": n, "columns":
{...}}`. Frames are pipelined: many may be in flight, replies keep the order of the frames.
A malformed frame gets `{"seq": n, "error": problem}` and the connection stays (so does a
frame over the key's request rate: a 429 problem); a frame over the size limit closes it
with 1009.

The route is served by `service.api.direct.DirectRoutes`, as a plain ASGI endpoint: each frame
in and each reply out go through the server's own channels, not through Starlette's WebSocket
and exception middleware, four layers of Python calls a frame (without them, 7% more readings/s
at one reading a frame).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from starlette.exceptions import WebSocketException
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from service import dataplane
from service.api.deps import Ingest, frame_admission, ingest_of
from service.errors import InvalidReadingError, StreamwatchError
from service.parsing import Batch, decode_json, is_columns, parse_columns, parse_items
from service.schemas import problem

_IN_FLIGHT = 256  # frames per connection awaiting results; past it, reading the socket waits


async def ingest_ws(scope: Scope, receive: Receive, send: Send) -> None:
    websocket = WebSocket(scope, receive, send)  # for the handshake and the key check
    try:
        ingest = await ingest_of(websocket)
    except WebSocketException as error:  # no or a bad key, or over its rate: accepted, closed
        await websocket.close(code=error.code, reason=error.reason)
        return
    admit = frame_admission(websocket, ingest.caller)
    await websocket.accept()
    replies: asyncio.Queue[_Pending | None] = asyncio.Queue(_IN_FLIGHT)
    writer = asyncio.create_task(_write_replies(send, replies))
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            frame: bytes = message.get("bytes") or (message.get("text") or "").encode()
            if len(frame) > ingest.limits.max_frame_bytes:
                await send({"type": "websocket.close", "code": 1009, "reason": "frame too large"})
                break
            await replies.put(_submit_frame(frame, ingest, admit))
    finally:
        await replies.put(None)
        await writer


route = WebSocketRoute("/v1/ingest", ingest_ws)  # matched and labelled by DirectRoutes


# A frame on its way: its reply already (a refused frame), or (seq, parsed, their outcomes,
# whether it came as columns). The engine's future is queued as it is: a task per frame cost
# more than the frame's parsing.
_Pending = (
    dict[str, Any] | tuple[Any, Batch, "asyncio.Future[dataplane.Outcomes]", bool]
)


def _submit_frame(frame: bytes, ingest: Ingest, admit: Callable[[], None]) -> _Pending:
    """Parse and queue one frame now (so frames apply in arrival order); reply when done."""
    seq = None
    try:
        body = decode_json(frame)
        if isinstance(body, dict):
            seq = body.pop("seq", None)
        admit()  # a frame counts against the key's request rate
        columns = is_columns(body)
        parsed: Batch = (
            parse_columns(body, ingest.limits) if columns
            else parse_items(_frame_items(body), ingest.limits)
        )
        return seq, parsed, dataplane.submit(ingest.engine, parsed), columns
    except StreamwatchError as error:
        return {"seq": seq, "error": problem(error)}


def _frame_items(body: Any) -> list[Any]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict) and isinstance(body.get("readings"), list):
        return list(body["readings"])
    if isinstance(body, dict) and "stream_id" in body:
        return [body]
    raise InvalidReadingError(
        'a frame is a reading with stream_id, a list of them, {"seq", "readings": [...]} '
        'or {"seq", "columns": {...}}'
    )


async def _write_replies(send: Send, replies: asyncio.Queue[_Pending | None]) -> None:
    while (pending := await replies.get()) is not None:
        if isinstance(pending, dict):
            reply = orjson.dumps(pending)
        else:
            seq, parsed, outcomes, columns = pending
            reply = dataplane.answer(parsed, await outcomes, columns, head={"seq": seq})
        try:
            await send({"type": "websocket.send", "text": reply.decode()})
        except (OSError, RuntimeError):  # the client is gone, or the socket closed (1009)
            return
