from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.model import Forecaster, ModelCard, sha256_of
from service.normalization import NormalizerParams, normalize_series

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "default"


def test_bundled_model_loads_through_the_server_with_a_matching_sha256() -> None:
    model = Forecaster.load(MODEL_DIR)
    assert model.card.sha256 == sha256_of(MODEL_DIR / "model.onnx")


def test_bundled_model_is_a_small_one_channel_per_stream_gru() -> None:
    card = ModelCard.load(MODEL_DIR)
    assert card.cell == "gru"
    assert card.channels == ["value"]
    assert card.normalization.per_stream
    assert card.opset >= 17
    assert (MODEL_DIR / "model.onnx").stat().st_size <= 1_000_000
    assert card.training["command"].startswith("streamwatch train --synthetic ")
    assert card.metrics["heldout"]["mae"] < card.metrics["heldout"]["mae_last_value"]


@pytest.mark.parametrize("period", [12, 50, 200])
def test_bundled_model_forecasts_a_sine_wave_better_than_the_last_value(period: int) -> None:
    model = Forecaster.load(MODEL_DIR)
    t = np.arange(3000)
    wave = 20.0 + 5.0 * np.sin(2 * np.pi * t / period)  # any level and unit: per-stream
    u = normalize_series(wave[:, None], NormalizerParams())  # (time, 1), as the server feeds it
    state = model.initial_state(batch=1)
    forecasts = np.empty(len(u) - 1, np.float32)
    for i in range(len(u) - 1):
        loc, scale, state = model.step(u[i : i + 1], state)
        assert scale[0, 0] > 0
        forecasts[i] = loc[0, 0]
    after_warm_up = slice(500, None)
    model_mae = np.abs(forecasts - u[1:, 0])[after_warm_up].mean()
    last_value_mae = np.abs(u[:-1, 0] - u[1:, 0])[after_warm_up].mean()
    assert model_mae < 0.6 * last_value_mae
