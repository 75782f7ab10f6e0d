from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.model import Forecaster, ModelCard, sha256_of
from service.normalization import NormalizerParams, normalize_series
from service.replay import score_series
from service.settings import Settings

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


def test_a_stream_still_hears_spikes_after_a_large_incident() -> None:
    # A noisy wave, a 150-reading incident 40 noise sd high, then spikes of 15 noise sd. The
    # incident must not teach the stream's score that everything is normal for thousands of
    # readings: with the learning clip every spike alerts; without it, none does.
    rng = np.random.default_rng(1)
    t = np.arange(2600)
    wave = np.sin(2 * np.pi * t / 50) + 0.6 * rng.standard_normal(len(t))
    wave[1000:1150] += 40 * 0.6
    spikes = [1500, 2000, 2500]
    wave[spikes] += 15 * 0.6
    model = Forecaster.load(MODEL_DIR)
    clipped, unclipped = (
        score_series(
            model,
            [wave[:, None]],
            Settings(scoring={"learn_clip": clip}, engine={"max_wait_ms": 0}),
        )[0][spikes]
        for clip in (Settings().scoring.learn_clip, 0.0)
    )
    assert np.all(clipped >= model.card.threshold)
    assert np.all(unclipped < model.card.threshold)
