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
from service.schemas import RESULT_FIELDS, iso_many, result_json

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


def render_columns(entries: list[Entry]) -> dict[str, Any]:
    """`render` as columns: `columns[field][i]` is `results[i][field]`. A batch sent as
    columns is answered so; with every reading scored (the usual case) the columns are cut
    straight from the results, not from one rendered row each."""
    if not all(type(e) is Result for e in entries):
        rows = render(entries)["results"]
        return {"columns": {key: [row.get(key) for row in rows] for key in RESULT_FIELDS}}
    column = dict(zip(Result._fields, zip(*entries, strict=True), strict=True)) if entries \
        else dict.fromkeys(Result._fields, ())
    return {"columns": {
        "stream_id": column["stream_id"],
        "timestamp": iso_many(list(column["timestamp"])),
        "status": ("ok",) * len(entries),
        "model": column["model"],
        "forecast": [
            None if loc is None else {"loc": loc, "scale": scale}
            for loc, scale in zip(column["forecast_loc"], column["forecast_scale"], strict=True)
        ],
        **{key: column[key] for key in _SCALARS},
        "alert": [None if a is None else {"id": a.id, "event": a.event} for a in column["alert"]],
    }}


_SCALARS = ("score", "threshold", "anomaly", "warming_up", "gap", "duplicate")


async def apply(engine: Engine, parsed: list[Parsed], columns: bool = False) -> dict[str, Any]:
    entries = await resolve(engine, parsed)
    return render_columns(entries) if columns else render(entries)
