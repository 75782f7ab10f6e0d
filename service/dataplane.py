"""Between the transports and the engine: submit parsed readings, render every outcome.

REST and WebSocket both go through here, so a reading means the same on either.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import numpy as np

from service.engine import Engine
from service.errors import StreamwatchError
from service.parsing import Batch, Failed, error_result_json
from service.results import (
    ANOMALY,
    GAP,
    SCORED,
    WARMING,
    Outcome,
    Reading,
    ReadingColumns,
    Result,
    ResultBlock,
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
    if isinstance(parsed, ReadingColumns):
        return engine.enqueue_columns(parsed)
    readings = [p for p in parsed if isinstance(p, Reading)]
    if len(readings) < len(parsed):
        engine.report_refused([p.error for p in parsed if isinstance(p, Failed)])
    return engine.enqueue(readings)  # type: ignore[return-value]


def entries(parsed: Batch, outcomes_of_readings: Outcomes) -> list[Entry]:
    """One entry per parsed item, in order, given the outcomes of its readings."""
    if isinstance(outcomes_of_readings, ResultRuns):
        outcomes_of_readings = outcomes_of_readings.outcomes()
    if isinstance(parsed, ReadingColumns):  # every item a reading: no Reading built for each
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


def answer(parsed: Batch, outcomes: Outcomes, columns: bool) -> dict[str, Any]:
    """The body that answers a request: its results, as columns if it came as columns."""
    if isinstance(outcomes, ResultRuns) and (cut := _cut_columns(outcomes)):
        return {"columns": cut} if columns else {"results": _rows(cut)}
    both = entries(parsed, outcomes)
    return render_columns(both) if columns else render(both)


def _rows(columns: dict[str, Any]) -> list[dict[str, Any]]:
    """`render`'s results from `_cut_columns`' columns: each row what `result_json` writes,
    one dict display per row (a Result and a call each cost half as much again)."""
    return [
        {"stream_id": s, "timestamp": t, "status": "ok", "model": m, "forecast": f,
         "score": score, "threshold": th, "anomaly": a, "warming_up": w, "gap": g,
         "duplicate": d, "alert": alert}
        for s, t, m, f, score, th, a, w, g, d, alert in zip(
            *(columns[key] for key in RESULT_FIELDS if key != "status"), strict=True
        )
    ]


def _cut_columns(results: ResultRuns) -> dict[str, Any] | None:
    """`render_columns` of results that came as columns, cut straight from their blocks'
    arrays; None if some reading was refused (then they go through `render_columns`)."""
    pieces = []
    for block, row, start, stop in results.runs:
        end = row + stop - start
        if any(row <= j < end for j in block.errors):
            return None
        pieces.append(_block_columns(block, row, end))
    if len(pieces) == 1:
        return pieces[0]
    return {key: list(itertools.chain.from_iterable(piece[key] for piece in pieces))
            for key in RESULT_FIELDS}


def _block_columns(block: ResultBlock, lo: int, hi: int) -> dict[str, Any]:
    records, n = block.records[lo:hi], hi - lo
    flags = records["last_flags"]
    locs, scales = records["last_loc"].tolist(), records["last_scale"].tolist()
    forecast: list[dict[str, Any] | None] = [
        {"loc": loc, "scale": scale} for loc, scale in zip(locs, scales, strict=True)
    ]
    for j in np.flatnonzero((flags & SCORED) == 0).tolist():
        forecast[j] = None
    alert: list[dict[str, str] | None] | tuple[None, ...] = (None,) * n
    if any(lo <= j < hi for j in block.alerts):
        alert = list(alert)
        for j, ref in block.alerts.items():
            if lo <= j < hi:
                alert[j - lo] = {"id": ref.id, "event": ref.event}
    return {
        "stream_id": block.stream_ids[lo:hi],
        "timestamp": iso_many(block.timestamps[lo:hi].tolist()),
        "status": ("ok",) * n,
        "model": (block.model,) * n,
        "forecast": forecast,
        "score": records["last_score"].tolist(),
        "threshold": records["threshold"].tolist(),
        "anomaly": ((flags & ANOMALY) != 0).tolist(),
        "warming_up": ((flags & WARMING) != 0).tolist(),
        "gap": ((flags & GAP) != 0).tolist(),
        "duplicate": block.duplicate[lo:hi].tolist(),
        "alert": alert,
    }


async def apply(engine: Engine, parsed: Batch, columns: bool = False) -> dict[str, Any]:
    return answer(parsed, await submit(engine, parsed), columns)
