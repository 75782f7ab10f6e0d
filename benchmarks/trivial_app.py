"""The baseline server: a trivial FastAPI app, run by uvicorn exactly as `streamwatch serve` is.

Its routes have the shapes of streamwatch's (a POST per stream, a batch POST, a WebSocket)
but do no work beyond reading the body and answering, so a figure measured against it says
what streamwatch costs on top of the framework.

    python -m benchmarks.trivial_app --port 8001
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response

from service.settings import Settings

_ANSWER = orjson.dumps({"results": [{"status": "ok"}]})


def create_app() -> FastAPI:
    app = FastAPI(title="trivial")

    @app.post("/v1/streams/{stream_id}/readings")
    async def one_stream(stream_id: str, request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(_ANSWER, media_type="application/json")

    @app.post("/v1/readings")
    async def batch(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(_ANSWER, media_type="application/json")

    @app.websocket("/v1/ingest")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    @app.get("/readyz")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    limits = Settings().limits
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, workers=1,
                ws_max_size=limits.max_frame_bytes, log_level="info")


if __name__ == "__main__":
    main()
