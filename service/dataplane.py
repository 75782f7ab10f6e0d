"""Between the transports and the engine: submit parsed readings, render every outcome.

REST and WebSocket both go through here, so a reading means the same on either.
"""

from __future__ import annotations

import asyncio
from typing import Any

from service.engine import Engine
from service.errors import StreamwatchError
from service.parsing import Failed, Parsed, error_result_json
from service.results import Outcome, Reading, Result
from service.schemas import iso_many, result_json

Entry = Result | Failed


async def resolve(engine: Engine, parsed: list[Parsed]) -> list[Entry]:
    """One entry per parsed item, in order: the engine's result, or why it failed."""
    return entries(parsed, await submit(engine, parsed))


def submit(engine: Engine, parsed: list[Parsed]) -> asyncio.Future[list[Outcome]]:
    """Queue the readings among `parsed` now; `entries` pairs their outcomes up later."""
    readings = [p for p in parsed if isinstance(p, Reading)]
    if len(readings) < len(parsed):
        engine.report_refused([p.error for p in parsed if isinstance(p, Failed)])
    return engine.enqueue(readings)


def entries(parsed: list[Parsed], outcomes_of_readings: list[Outcome]) -> list[Entry]:
    """One entry per parsed item, in order, given the outcomes of its readings."""
    outcomes = iter(outcomes_of_readings)
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
    stamps = iter(iso_many([e.timestamp for e in entries if isinstance(e, Result)]))
    return {
        "results": [
            result_json(e, next(stamps)) if isinstance(e, Result) else error_result_json(e)
            for e in entries
        ]
    }


async def apply(engine: Engine, parsed: list[Parsed]) -> dict[str, Any]:
    return render(await resolve(engine, parsed))
