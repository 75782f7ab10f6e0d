"""Reading routes: one stream's readings, or a batch across streams."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service import dataplane
from service.api.deps import INGEST_SECURITY, JSONBytes, ingest_of, read_body
from service.errors import InvalidReadingError
from service.parsing import Failed, decode_json, is_columns, parse_columns, parse_items
from service.schemas import ResultColumnsOut, ResultsOut

router = APIRouter(prefix="/v1", tags=["readings"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/problem+json": {}}}
    for status, text in [
        (404, "single reading naming a model that is not loaded"),
        (409, "single reading older than the stream's last one, or bound to another model"),
        (413, "body, batch or channel limit exceeded"),
        (422, "malformed body or an invalid single reading"),
        (503, "at capacity or shutting down"),
    ]
}


def _openapi(*names: str) -> dict[str, Any]:
    """The request body (the wire models `names`) and the key the route needs."""
    refs = [{"$ref": f"#/components/schemas/{name}"} for name in names]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    body = {"required": True, "content": {"application/json": {"schema": schema}}}
    return {"requestBody": body, **INGEST_SECURITY}


@router.post(
    "/streams/{stream_id}/readings",
    response_model=ResultsOut | ResultColumnsOut,
    responses=_ERRORS,
    openapi_extra=_openapi("ReadingIn", "StreamReadingsIn", "StreamColumnsIn"),
    summary="Send one reading, or several, of one stream",
)
async def post_stream_readings(stream_id: str, request: Request) -> JSONBytes:
    """One reading answers with its own status code if it fails; several answer 200 with a
    status per reading (as columns if sent as columns)."""
    ingest = await ingest_of(request)
    body = decode_json(await read_body(request, ingest.limits.max_body_bytes))
    if is_columns(body):
        parsed = parse_columns(body, ingest.limits, stream_id)
        return JSONBytes(await dataplane.apply(ingest.engine, parsed, columns=True))
    single = not (isinstance(body, dict) and "readings" in body)
    items = [body] if single else body["readings"]
    if not isinstance(items, list):
        raise InvalidReadingError("`readings` must be a list")
    entries = await dataplane.resolve(ingest.engine, parse_items(items, ingest.limits, stream_id))
    if single and isinstance(entries[0], Failed):
        raise entries[0].error
    return JSONBytes(dataplane.render(entries))


@router.post(
    "/readings",
    response_model=ResultsOut | ResultColumnsOut,
    responses=_ERRORS,
    openapi_extra=_openapi("BatchIn", "BatchColumnsIn"),
    summary="Send a batch of readings across streams",
)
async def post_readings(request: Request) -> JSONBytes:
    """Results in the order sent, each with its own status: one bad reading fails only itself.
    A batch sent as columns is answered as columns."""
    ingest = await ingest_of(request)
    body = decode_json(await read_body(request, ingest.limits.max_body_bytes))
    if is_columns(body):
        parsed = parse_columns(body, ingest.limits)
        return JSONBytes(await dataplane.apply(ingest.engine, parsed, columns=True))
    items = body.get("readings") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise InvalidReadingError('the body must be {"readings": [...]} or {"columns": {...}}')
    return JSONBytes(await dataplane.apply(ingest.engine, parse_items(items, ingest.limits)))
