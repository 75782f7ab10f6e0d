"""Between the transports and the engine: submit parsed readings, render every outcome.

REST and WebSocket both go through here, so a reading means the same on either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson

from service import wire
from service.engine import Engine
from service.errors import StreamwatchError
from service.parsing import Batch, Failed, error_result_json
from service.results import (
    Outcome,
    Reading,
    ReadingArrays,
    Result,
    ResultRuns,
)
from service.schemas import RESULT_FIELDS, iso_many, result_json

Entry = Result | Failed
Outcomes = list[Outcome] | ResultRuns  # the engine's answer: one per reading, or as columns


async def resolve(engine: Engine, parsed: Batch) -> list[Entry]:
    """One entry per parsed item, in order: the engine's result, or why it failed."""
    return entries(parsed, await submit(engine, parsed))


def submit(engine: Engine, parsed: Batch) -> asyncio.Future[Outcomes]:
    """Queue the readings among `parsed` now; `answer` renders their outcomes later."""
    if isinstance(parsed, ReadingArrays):
        return engine.enqueue_columns(parsed)
    readings = [p for p in parsed if isinstance(p, Reading)]
    if len(readings) < len(parsed):
        engine.report_refused([p.error for p in parsed if isinstance(p, Failed)])
    return engine.enqueue(readings)  # type: ignore[return-value]


def entries(parsed: Batch, outcomes_of_readings: Outcomes) -> list[Entry]:
    """One entry per parsed item, in order, given the outcomes of its readings."""
    if isinstance(outcomes_of_readings, ResultRuns):
        outcomes_of_readings = outcomes_of_readings.outcomes()
    if isinstance(parsed, ReadingArrays):  # every item a reading: no Reading built for each
        both: list[Any] = list(outcomes_of_readings)
        for i in [i for i, o in enumerate(both) if type(o) is not Result]:
            both[i] = Failed(parsed.stream_ids[i], float(parsed.timestamps[i]), both[i])
        return both
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
    """The answer to a request of rows: one object per entry, a result or why it failed."""
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
    if not {Result}.issuperset(map(type, entries)):
        rows = render(entries)["results"]
        return {"columns": {key: [row.get(key) for row in rows] for key in RESULT_FIELDS}}
    columns = zip(*entries, strict=True) if entries else [()] * len(Result._fields)
    fields: dict[str, Sequence[Any]] = dict(zip(Result._fields, columns, strict=True))
    return {"columns": _wire_columns(fields)}


def answer(parsed: Batch, outcomes: Outcomes, columns: bool,
           head: dict[str, Any] | None = None) -> bytes:
    """The JSON body that answers a request: its results, as columns if it came as columns,
    after `head`'s members (a WebSocket reply's seq)."""
    if isinstance(outcomes, ResultRuns) and (cut := wire.segments(outcomes)) is not None:
        return wire.columns(cut, head) if columns else wire.rows(cut, head)
    both = entries(parsed, outcomes)
    body = render_columns(both) if columns else render(both)
    return orjson.dumps(body if head is None else {**head, **body})


def _wire_columns(fields: dict[str, Sequence[Any]]) -> dict[str, Any]:
    """Results' columns, one per `Result` field, as the wire has them (`ResultColumns`)."""
    n = len(fields["stream_id"])
    alerts = fields["alert"]
    return {
        "stream_id": fields["stream_id"],
        "timestamp": iso_many(list(fields["timestamp"])),
        "status": ("ok",) * n,
        "model": fields["model"],
        "forecast": [
            None if loc is None else {"loc": loc, "scale": scale}
            for loc, scale in zip(fields["forecast_loc"], fields["forecast_scale"], strict=True)
        ],
        "score": fields["score"],
        "threshold": fields["threshold"],
        "anomaly": fields["anomaly"],
        "warming_up": fields["warming_up"],
        "gap": fields["gap"],
        "duplicate": fields["duplicate"],
        "alert": [None if a is None else a.to_json() for a in alerts]
        if any(alerts) else alerts,
    }


async def apply(engine: Engine, parsed: Batch, columns: bool = False) -> bytes:
    return answer(parsed, await submit(engine, parsed), columns)
