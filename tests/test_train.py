from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.dataset import Dataset, prepare
from training.model import Forecaster
from training.synthetic import SyntheticConfig, generate
from training.train import EVAL_BATCH, EVAL_CHUNK, TrainConfig, evaluate_nll, forecast, train

SMALL = TrainConfig(hidden_size=16, epochs=4, batch_size=8, bptt=32, segment_len=512, lr=1e-2)


def _data() -> Dataset:
    streams = generate(SyntheticConfig(n_streams=12, length=600, seed=3))
    return prepare(streams, segment_len=SMALL.segment_len)


@pytest.mark.slow
def test_training_lowers_validation_nll_below_the_untrained_models() -> None:
    data = _data()
    torch.manual_seed(SMALL.seed)
    untrained = Forecaster("gru", SMALL.hidden_size, 1, 1)
    untrained.set_normalization(torch.from_numpy(data.mean), torch.from_numpy(data.std))
    before = evaluate_nll(untrained, data.val)
    result = train(data, SMALL, log=lambda line: None)
    assert result.best_val_nll < before - 0.1
    assert evaluate_nll(result.model, data.val) == pytest.approx(result.best_val_nll, abs=1e-6)


@pytest.mark.slow
def test_the_same_seed_trains_the_same_weights() -> None:
    data = _data()
    config = TrainConfig(hidden_size=8, epochs=2, batch_size=8, bptt=32, segment_len=512)
    first = train(data, config, log=lambda line: None).model.state_dict()
    second = train(data, config, log=lambda line: None).model.state_dict()
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=0, atol=0, msg=name)


def test_each_epoch_logs_its_losses_and_gradient_norms() -> None:
    lines: list[str] = []
    result = train(_data(), SMALL, log=lines.append)
    assert [e.epoch for e in result.history] == list(range(1, len(result.history) + 1))
    for entry in result.history:
        assert math.isfinite(entry.train_nll) and math.isfinite(entry.val_nll)
        assert entry.grad_norm > 0 and entry.early_grad_norm > 0
    assert lines[0].startswith("epoch   1  train nll")
    assert "early grad" in lines[0]


@pytest.mark.slow
def test_training_stops_early_and_keeps_the_best_epoch() -> None:
    # A learning rate this high makes validation NLL wander; patience 1 stops at the first miss.
    config = TrainConfig(hidden_size=8, epochs=30, batch_size=8, bptt=32, lr=0.5, patience=1)
    result = train(_data(), config, log=lambda line: None)
    assert len(result.history) < 30
    assert result.best_val_nll == min(e.val_nll for e in result.history)


def test_training_leaves_torch_thread_and_determinism_settings_as_found() -> None:
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    train(_data(), TrainConfig(hidden_size=4, epochs=1, threads=1), log=lambda line: None)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_forecast_over_chunks_and_batches_matches_one_forward_pass() -> None:
    torch.manual_seed(0)
    model = Forecaster("gru", 4, 1, 1).eval()
    # More streams than EVAL_BATCH and readings than EVAL_CHUNK: both loops split.
    values = np.random.default_rng(0).normal(size=(EVAL_CHUNK + 20, EVAL_BATCH + 4, 1))
    values = values.astype(np.float32)
    loc, scale = forecast(model, values)
    with torch.no_grad():
        ref_loc, ref_scale, _ = model(torch.from_numpy(values), model.initial_state(260))
    np.testing.assert_allclose(loc, ref_loc.numpy(), atol=1e-5)
    np.testing.assert_allclose(scale, ref_scale.numpy(), atol=1e-5)
