"""Model routes: the cards of the loaded models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.deps import EngineDep, ReadKey

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", summary="The loaded models' cards")
async def list_models(engine: EngineDep, caller: ReadKey) -> dict[str, Any]:
    return {
        "default": engine.registry.default,
        "models": [model.card.to_dict() for model in engine.registry.models.values()],
    }
