"""Train, calibrate and export in one go: what `streamwatch train` runs.

>>> card = build_model(streams, TrainConfig(), Path("models/mine"), command="...")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from service.model import CARD_FILE, ONNX_FILE, ModelCard, Normalization
from service.normalization import NormalizerParams, normalize_series
from service.series import Stream
from training.calibrate import (
    DEFAULT_THRESHOLD,
    calibrate_threshold,
    calibration_table,
    forecast_metrics,
)
from training.dataset import Dataset, Sequences, pack, prepare
from training.export import OPSET, export_model
from training.model import Forecaster
from training.train import TrainConfig, TrainResult, reproducible_torch, train

SINE_PERIOD = 50  # readings; one of the waves the bundled model's test forecasts
SINE_LENGTH = 2000


def build_model(
    streams: list[Stream],
    config: TrainConfig,
    out_dir: Path,
    *,
    command: str,
    name: str | None = None,
    version: str = "1",
    per_stream: bool = True,
    false_alarm_rate: float | None = None,
    data_source: dict[str, Any] | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> ModelCard:
    """Train on `streams`, calibrate on their held-out part, export to `out_dir`; the card.

    `command` is recorded in the card as the way to reproduce the model.
    """
    # One thread and deterministic kernels throughout, calibration and export included.
    with reproducible_torch(config.threads):
        data = prepare(streams, per_stream=per_stream, segment_len=config.segment_len)
        result = train(data, config, progress=progress, log=log)
        model = result.model
        card = ModelCard(
            name=name or out_dir.name,
            version=version,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            cell=config.cell,
            nonlinearity=config.nonlinearity,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            channels=list(data.channels),
            normalization=Normalization(
                mean=data.mean.tolist(), std=data.std.tolist(), per_stream=per_stream
            ),
            calibration=calibration_table(model, data.calib),
            threshold=DEFAULT_THRESHOLD,  # until the exported model is replayed, below
            opset=OPSET,
            sha256="",  # filled in by export_model
            metrics=_metrics(model, data, result, per_stream),
            training=_training_record(streams, data, config, result, command, data_source),
        )
        card = export_model(model, out_dir, card, data.calib.values)
    return _with_threshold(card, out_dir, streams, data.calib.mask, false_alarm_rate)


def _with_threshold(
    card: ModelCard,
    out_dir: Path,
    streams: list[Stream],
    normal: np.ndarray,
    false_alarm_rate: float | None,
) -> ModelCard:
    """Set the threshold on the exported model (see `calibrate_threshold`) and save the card."""
    try:
        threshold, record = calibrate_threshold(out_dir, streams, normal, false_alarm_rate)
        card = dataclasses.replace(
            card, threshold=threshold, training={**card.training, "threshold": record}
        )
        card.save(out_dir)
    except BaseException:
        # A model without its measured threshold must not look finished.
        (out_dir / ONNX_FILE).unlink(missing_ok=True)
        (out_dir / CARD_FILE).unlink(missing_ok=True)
        raise
    return card


def sine_sequences(
    per_stream: bool, channels: int = 1, period: int = SINE_PERIOD, length: int = SINE_LENGTH
) -> Sequences:
    """A pure sine wave on every channel, as the server would feed it; targets after one
    period of warm-up."""
    wave = np.sin(2 * np.pi * np.arange(length) / period)[:, None].repeat(channels, axis=1)
    values = normalize_series(wave, NormalizerParams()) if per_stream else wave
    mask = np.arange(length) >= period
    return pack([(values.astype(np.float32), mask)])


def _metrics(
    model: Forecaster, data: Dataset, result: TrainResult, per_stream: bool
) -> dict[str, Any]:
    sine = forecast_metrics(model, sine_sequences(per_stream, model.channels))
    return {
        "val_nll": result.best_val_nll,
        "heldout": forecast_metrics(model, data.calib),
        "sine": {"period": SINE_PERIOD, **sine},
    }


def _training_record(
    streams: list[Stream],
    data: Dataset,
    config: TrainConfig,
    result: TrainResult,
    command: str,
    data_source: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "command": command,
        "seed": config.seed,
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 1),
        "hyperparameters": asdict(config),
        "normalizer": asdict(NormalizerParams()) if data.per_stream else None,
        "data": {
            **(data_source or {}),
            "streams": len(streams),
            "readings": int(sum(len(s) for s in streams)),
            "labeled_anomalies": int(sum(len(s.anomalies) for s in streams)),
            "targets": {
                "train": data.train.n_targets,
                "val": data.val.n_targets,
                "calib": data.calib.n_targets,
            },
        },
        "history": [
            {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(e).items()}
            for e in result.history
        ],
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }
