"""Offline replay: readings from a file go through the same engine the server runs.

What is measured offline (evaluation, calibration) is therefore exactly what the server does.

>>> model = Forecaster.load(Path("models/default"))
>>> scores = score_series(model, [np.sin(np.arange(500.0))[:, None]])
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from collections.abc import Sequence

import numpy as np

from service.alerts import Alert
from service.engine import Engine
from service.errors import StreamwatchError
from service.model import Forecaster
from service.registry import ModelRegistry
from service.results import Outcome, Reading, Result
from service.series import DataError, load_csv
from service.settings import Settings, command_settings


def readings_of(
    stream_id: str, timestamps: np.ndarray, values: np.ndarray, model: str | None = None
) -> list[Reading]:
    """One stream's (time,) timestamps and (time, channels) values as engine readings."""
    return [
        Reading(stream_id, float(t), tuple(row), model)
        for t, row in zip(timestamps.tolist(), values.tolist(), strict=True)
    ]


async def replay(
    registry: ModelRegistry, settings: Settings, streams: Sequence[list[Reading]]
) -> tuple[list[list[Outcome]], list[tuple[str, Alert]]]:
    """Run each stream's readings through a fresh engine, all streams side by side.

    Returns every stream's outcomes and the alert events, in the order they happened.
    """
    events: list[tuple[str, Alert]] = []
    engine = Engine(registry, settings, events.extend)
    await engine.start()
    try:
        outcomes = await asyncio.gather(*(engine.submit(s) for s in streams))
    finally:
        await engine.stop()
    return list(outcomes), events


def score_series(
    model: Forecaster, series: Sequence[np.ndarray], settings: Settings | None = None
) -> list[np.ndarray]:
    """Anomaly scores of each (time, channels) series, one reading per second from t=0."""
    settings = settings or Settings()
    registry = ModelRegistry(
        {model.card.name: model},
        settings.model.model_copy(update={"default": model.card.name, "routes": []}),
    )
    streams = [
        readings_of(f"series-{i}", np.arange(len(v), dtype=np.float64), np.asarray(v))
        for i, v in enumerate(series)
    ]
    outcomes, _ = asyncio.run(replay(registry, settings, streams))
    return [np.array([_score(o) for o in stream]) for stream in outcomes]


def _score(outcome: Outcome) -> float:
    if isinstance(outcome, StreamwatchError):
        raise outcome
    return outcome.score


RESULT_COLUMNS = [
    "timestamp",
    "stream_id",
    "model",
    "status",
    "score",
    "threshold",
    "anomaly",
    "warming_up",
    "gap",
    "forecast_loc",
    "forecast_scale",
    "alert_id",
    "alert_event",
]


def result_row(outcome: Outcome, reading: Reading) -> dict[str, object]:
    """One CSV row per reading: the same fields the server answers with."""
    if isinstance(outcome, StreamwatchError):
        return {
            "timestamp": reading.timestamp,
            "stream_id": reading.stream_id,
            "status": f"{outcome.status} {outcome.detail}",
        }
    assert isinstance(outcome, Result)
    return {
        "timestamp": outcome.timestamp,
        "stream_id": outcome.stream_id,
        "model": outcome.model,
        "status": "ok",
        "score": repr(outcome.score),
        "threshold": repr(outcome.threshold),
        "anomaly": int(outcome.anomaly),
        "warming_up": int(outcome.warming_up),
        "gap": int(outcome.gap),
        "forecast_loc": _join(outcome.forecast_loc),
        "forecast_scale": _join(outcome.forecast_scale),
        "alert_id": outcome.alert.id if outcome.alert else "",
        "alert_event": outcome.alert.event if outcome.alert else "",
    }


def _join(values: list[float] | None) -> str:
    return "" if values is None else " ".join(repr(v) for v in values)


def replay_command(args: argparse.Namespace) -> int:
    """`streamwatch replay FILE --stream ID [--model M] --out RESULTS.csv`."""
    settings = command_settings(args.models_dir)
    registry = ModelRegistry.load(settings.model)
    model_name = registry.model_for(args.stream, args.model)
    card = registry.get(model_name).card
    columns = args.columns.split(",") if args.columns else list(card.channels)
    try:
        stream = load_csv(args.file, columns=columns, stream_id=args.stream)
    except DataError as error:
        print(f"streamwatch replay: {error}", file=sys.stderr)
        return 2
    readings = readings_of(args.stream, stream.timestamps, stream.values, args.model)
    (outcomes,), events = asyncio.run(replay(registry, settings, [readings]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, RESULT_COLUMNS)
        writer.writeheader()
        for outcome, reading in zip(outcomes, readings, strict=True):
            writer.writerow(result_row(outcome, reading))
    anomalies = sum(isinstance(o, Result) and o.anomaly for o in outcomes)
    opened = sum(kind == "opened" for kind, _ in events)
    print(f"{len(readings)} readings, {anomalies} anomalous, {opened} alerts -> {args.out}")
    return 0
