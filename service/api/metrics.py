"""GET /metrics: the Prometheus text exposition (needs the `read` role when keys are set)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service.api.deps import MetricsDep, ReadKey

router = APIRouter(tags=["observability"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(metrics: MetricsDep, caller: ReadKey) -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
