"""Stream routes: list, inspect, forget."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from service.alerts import iso
from service.api.deps import AdminKey, EngineDep, ReadKey
from service.api.openapi import problem_response

router = APIRouter(prefix="/v1/streams", tags=["streams"])


@router.get("", summary="List live streams, in id order")
async def list_streams(
    engine: EngineDep,
    caller: ReadKey,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    ids, next_cursor = engine.stream_ids(cursor, limit)
    return {"streams": [_info(engine, sid) for sid in ids], "next_cursor": next_cursor}


_UNKNOWN: dict[int | str, dict[str, Any]] = {404: problem_response("No stream of this id")}


@router.get("/{stream_id}", summary="One stream's state", responses=_UNKNOWN)
async def get_stream(stream_id: str, engine: EngineDep, caller: ReadKey) -> dict[str, Any]:
    return _info(engine, stream_id)


@router.delete(
    "/{stream_id}", status_code=204, summary="Forget a stream's state", responses=_UNKNOWN
)
async def delete_stream(stream_id: str, engine: EngineDep, caller: AdminKey) -> Response:
    engine.forget(stream_id)
    return Response(status_code=204)


def _info(engine: EngineDep, stream_id: str) -> dict[str, Any]:
    info = engine.stream_info(stream_id)
    return {
        "stream_id": info.stream_id,
        "model": info.model,
        "readings": info.readings,
        "warming_up": info.warming_up,
        "last_timestamp": None if info.last_timestamp is None else iso(info.last_timestamp),
        "last_score": info.last_score,
        "open_alert": None if info.open_alert is None else info.open_alert.to_json(),
    }
