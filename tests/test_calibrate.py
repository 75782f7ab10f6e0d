from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.model import Calibration, ModelCard, Normalization
from service.model import Forecaster as ServedForecaster
from service.replay import score_series
from service.scoring import threshold_for_false_alarm_rate
from service.series import Stream
from training.calibrate import (
    DEFAULT_THRESHOLD,
    calibrate_threshold,
    forecast_metrics,
    standardized_errors,
)
from training.dataset import pack
from training.export import export_model
from training.model import Forecaster


def _last_value_model() -> Forecaster:
    """A model that forecasts exactly the last value with scale exactly 1 (z units)."""
    model = Forecaster("gru", hidden_size=4, num_layers=1, channels=1)
    with torch.no_grad():
        model.head.weight.zero_()
    return model.eval()


def test_standardized_errors_are_taken_at_counted_targets_only() -> None:
    values = np.array([0.0, 1.0, 3.0, 6.0, 10.0], np.float32)[:, None, None]  # (time, 1, 1)
    mask = np.array([False, True, False, True, True])[:, None]
    errors = standardized_errors(_last_value_model(), pack([(values[:, 0], mask[:, 0])]))
    np.testing.assert_allclose(errors, [1.0, 3.0, 4.0], rtol=1e-5)


def test_a_last_value_forecaster_scores_a_mae_ratio_of_one() -> None:
    # Small steps: the walk stays inside the +-10 z clamp, where loc is exactly the last value.
    walk = 0.05 * np.random.default_rng(0).normal(size=(200, 1)).cumsum(axis=0)
    values = walk.astype(np.float32)
    metrics = forecast_metrics(_last_value_model(), pack([(values, np.ones(200, bool))]))
    assert metrics["mae"] == pytest.approx(metrics["mae_last_value"], rel=1e-5)
    assert metrics["mae_ratio"] == pytest.approx(1.0, rel=1e-5)
    assert metrics["targets"] == 199


def _exported(tmp_path: Path) -> Path:
    model = _last_value_model()
    card = ModelCard(
        name="last-value",
        version="1",
        created="2024-01-01T00:00:00+00:00",
        cell="gru",
        hidden_size=4,
        num_layers=1,
        channels=["value"],
        normalization=Normalization(mean=[0.0], std=[1.0], per_stream=True),
        calibration=Calibration(abs_z=[0.0, 1.0, 2.0, 3.0], log_tail=[0.0, -1.2, -3.1, -6.0]),
        threshold=0.9999,
        opset=17,
        sha256="",
    )
    readings = np.zeros((1000, 1, 1), np.float32)
    export_model(model, tmp_path, card, readings)
    return tmp_path


def _noise(n_streams: int, length: int) -> list[Stream]:
    rng = np.random.default_rng(1)
    return [
        Stream(
            stream_id=f"w{i}",
            timestamps=np.arange(length, dtype=np.float64),
            values=50.0 + rng.normal(size=(length, 1)),
            channels=("value",),
        )
        for i in range(n_streams)
    ]


@pytest.mark.slow
def test_threshold_is_the_false_alarm_quantile_of_replayed_normal_scores(tmp_path: Path) -> None:
    model_dir = _exported(tmp_path)
    streams = _noise(n_streams=4, length=3000)
    normal = np.zeros((3000, 4), bool)
    normal[400:] = True  # readings after the warm-up count
    threshold, record = calibrate_threshold(model_dir, streams, normal, false_alarm_rate=1e-3)
    scores = score_series(ServedForecaster.load(model_dir), [s.values for s in streams])
    counted = np.concatenate([sc[400:] for sc in scores])
    assert 0.5 < threshold < 1.0
    assert threshold == threshold_for_false_alarm_rate(counted, 1e-3)
    assert record["false_alarm_rate"] == 1e-3
    assert record["how"].startswith("replay of 10400 held-out normal readings")


@pytest.mark.slow
def test_without_a_rate_the_threshold_is_the_default_and_its_normal_rate_is_measured(
    tmp_path: Path,
) -> None:
    model_dir = _exported(tmp_path)
    streams = _noise(n_streams=4, length=3000)
    normal = np.zeros((3000, 4), bool)
    normal[400:] = True
    threshold, record = calibrate_threshold(model_dir, streams, normal)
    scores = score_series(ServedForecaster.load(model_dir), [s.values for s in streams])
    counted = np.concatenate([sc[400:] for sc in scores])
    assert threshold == DEFAULT_THRESHOLD
    assert record["normal_rate"] == np.mean(counted >= DEFAULT_THRESHOLD)
    assert record["normal_rate"] < 1e-2  # Gaussian noise is what the scorer calls normal


@pytest.mark.slow
def test_too_few_normal_readings_keep_the_default_threshold(tmp_path: Path) -> None:
    model_dir = _exported(tmp_path)
    normal = np.ones((300, 2), bool)
    threshold, record = calibrate_threshold(model_dir, _noise(2, 300), normal, 1e-4)
    assert threshold == DEFAULT_THRESHOLD
    assert "600 held-out normal readings, 10000 needed" in record["how"]
