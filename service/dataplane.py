"""Between the transports and the engine: submit parsed readings, render every outcome.

REST and WebSocket both go through here, so a reading means the same on either.
"""

from __future__ import annotations

from typing import Any

from service.engine import Engine
from service.errors import StreamwatchError
from service.schemas import Failed, Parsed, error_result_json, result_json
from service.stepper import Reading, Result

Entry = Result | Failed


async def resolve(engine: Engine, parsed: list[Parsed]) -> list[Entry]:
    """One entry per parsed item, in order: the engine's result, or why it failed."""
    readings = [p for p in parsed if isinstance(p, Reading)]
    outcomes = iter(await engine.submit(readings))
    entries: list[Entry] = []
    for p in parsed:
        if not isinstance(p, Reading):
            entries.append(p)
            continue
        outcome = next(outcomes)
        if isinstance(outcome, StreamwatchError):
            entries.append(Failed(p.stream_id, p.timestamp, outcome))
        else:
            entries.append(outcome)
    return entries


def render(entries: list[Entry]) -> dict[str, Any]:
    return {
        "results": [
            result_json(e) if isinstance(e, Result) else error_result_json(e) for e in entries
        ]
    }


async def apply(engine: Engine, parsed: list[Parsed]) -> dict[str, Any]:
    return render(await resolve(engine, parsed))
