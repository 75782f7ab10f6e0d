"""Wire models (pydantic), and the engine's results and errors rendered for the wire.

Parsing requests into the engine's readings is `service.parsing`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.alerts import iso
from service.errors import StreamwatchError
from service.results import Result

STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"

Timestamp = float | str


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReadingIn(_Wire):
    """One reading: `values` (one per channel, `null` = missing) or `value` for one channel."""

    timestamp: Timestamp = Field(description="ISO 8601 or epoch seconds; strictly increasing.")
    values: list[float | None] | None = None
    value: float | None = None
    model: str | None = Field(None, description="Model for a new stream; else routing rules.")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"timestamp": "2026-01-01T00:00:00Z", "value": 41.5}],
            "oneOf": [  # what to_reading checks: exactly one of the two
                {"required": ["value"], "properties": {"value": {"type": "number"}}},
                {
                    "required": ["values"],
                    "properties": {"values": {"type": "array", "minItems": 1}},
                },
            ],
        },
    )


class StreamReadingIn(ReadingIn):
    stream_id: str = Field(max_length=1000)


class StreamReadingsIn(_Wire):
    readings: list[ReadingIn]


class BatchIn(_Wire):
    readings: list[StreamReadingIn]


class ReadingColumns(_Wire):
    """Readings as columns, for high-rate clients: entry i of every column is reading i, as
    `ReadingIn` has it. All columns are equally long; the optional ones cover every reading."""

    timestamp: list[Timestamp]
    values: list[list[float | None] | None] | None = None
    value: list[float | None] | None = None
    model: list[str | None] | None = None


class StreamReadingColumns(ReadingColumns):
    stream_id: list[str]


class StreamColumnsIn(_Wire):
    columns: ReadingColumns


class BatchColumnsIn(_Wire):
    columns: StreamReadingColumns


class Problem(_Wire):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


class Forecast(_Wire):
    loc: list[float]
    scale: list[float]


class AlertRefOut(_Wire):
    id: str
    event: Literal["opened", "closed"]


class ResultOut(_Wire):
    stream_id: str | None
    timestamp: str | None
    status: Literal["ok"] | Problem
    model: str | None = None
    forecast: Forecast | None = None
    score: float | None = None
    threshold: float | None = None
    anomaly: bool | None = None
    warming_up: bool | None = None
    gap: bool | None = None
    duplicate: bool | None = None
    alert: AlertRefOut | None = None


class ResultsOut(_Wire):
    results: list[ResultOut]


class ResultColumns(_Wire):
    """Results as columns, for a batch sent as columns: entry i of every column is what
    `ResultOut` has for reading i, null where that has none (a failed reading's score)."""

    stream_id: list[str | None]
    timestamp: list[str | None]
    status: list[Literal["ok"] | Problem]
    model: list[str | None]
    forecast: list[Forecast | None]
    score: list[float | None]
    threshold: list[float | None]
    anomaly: list[bool | None]
    warming_up: list[bool | None]
    gap: list[bool | None]
    duplicate: list[bool | None]
    alert: list[AlertRefOut | None]


class ResultColumnsOut(_Wire):
    columns: ResultColumns


RESULT_FIELDS = tuple(ResultOut.model_fields)
assert RESULT_FIELDS == tuple(ResultColumns.model_fields)  # one name per field, either way


def problem(error: StreamwatchError, instance: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": error.type_uri,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
    }
    if instance is not None:
        body["instance"] = instance
    return body


def result_json(outcome: Result, timestamp: str | None = None) -> dict[str, Any]:
    """The wire form of a result; `timestamp` is its iso() if the caller has it already."""
    return {
        "stream_id": outcome.stream_id,
        "timestamp": iso(outcome.timestamp) if timestamp is None else timestamp,
        "status": "ok",
        "model": outcome.model,
        "forecast": None
        if outcome.forecast_loc is None
        else {"loc": outcome.forecast_loc, "scale": outcome.forecast_scale},
        "score": outcome.score,
        "threshold": outcome.threshold,
        "anomaly": outcome.anomaly,
        "warming_up": outcome.warming_up,
        "gap": outcome.gap,
        "duplicate": outcome.duplicate,
        "alert": None if outcome.alert is None else outcome.alert.to_json(),
    }


_LAST_ISO_SECOND = 253402300799  # 9999-12-31T23:59:59Z, the last instant iso() can write


def iso_many(timestamps: list[float]) -> list[str]:
    """`iso(t)` for each t, in order. Each distinct t is formatted once; whole seconds (the
    usual case) by numpy in one call, ~6x faster than one datetime each; the others go through
    `iso` itself."""
    if len(timestamps) < 16:  # numpy's per-call overhead outweighs it on a few
        return [iso(t) for t in timestamps]
    distinct = set(timestamps)
    if len(distinct) <= len(timestamps) // 4:  # a batch is often one time step of many streams
        firsts = list(distinct)
        texts = dict(zip(firsts, iso_many(firsts), strict=True))
        return list(map(texts.__getitem__, timestamps))
    ts = np.array(timestamps, np.float64)
    with np.errstate(invalid="ignore"):
        whole = (ts == np.floor(ts)) & (ts >= 0) & (ts <= _LAST_ISO_SECOND)
    if not whole.all():
        return [iso(t) for t in timestamps]
    return np.datetime_as_string(ts.astype("datetime64[s]"), unit="s", timezone="UTC").tolist()
