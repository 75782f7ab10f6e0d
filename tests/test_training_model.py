from __future__ import annotations

import pytest
import torch

from training.model import Forecaster, parameter_count

CELLS = [("gru", "tanh"), ("lstm", "tanh"), ("rnn", "tanh"), ("rnn", "relu")]


def _model(cell: str, nonlinearity: str, seed: int = 0) -> Forecaster:
    torch.manual_seed(seed)
    model = Forecaster(cell, hidden_size=12, num_layers=2, channels=3, nonlinearity=nonlinearity)
    with torch.no_grad():
        model.head.weight.normal_(std=0.5)  # the initial head is nearly silent
    return model.eval()


@pytest.mark.parametrize(("cell", "nonlinearity"), CELLS)
def test_step_by_step_gives_the_numbers_of_the_sequence_forward(
    cell: str, nonlinearity: str
) -> None:
    model = _model(cell, nonlinearity)
    x = torch.randn(50, 4, 3)  # (time, batch, channels)
    with torch.no_grad():
        loc, scale, final = model(x, model.initial_state(4))
        state = model.initial_state(4)
        for t in range(50):
            step_loc, step_scale, state = model.step(x[t], state)
            torch.testing.assert_close(step_loc, loc[t], rtol=0, atol=1e-5)
            torch.testing.assert_close(step_scale, scale[t], rtol=0, atol=1e-5)
    assert len(state) == (2 if cell == "lstm" else 1)
    for a, b in zip(state, final, strict=True):
        assert a.shape == (2, 4, 12)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_forecasts_are_in_the_units_of_the_readings() -> None:
    unit = _model("gru", "tanh")
    shifted = _model("gru", "tanh")
    mean, std = torch.tensor([100.0, -5.0, 0.0]), torch.tensor([10.0, 0.5, 2.0])
    shifted.set_normalization(mean, std)
    x = torch.randn(20, 2, 3)
    with torch.no_grad():
        loc, scale, _ = unit(x, unit.initial_state(2))
        loc_s, scale_s, _ = shifted(x * std + mean, shifted.initial_state(2))
    torch.testing.assert_close(loc_s, loc * std + mean, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(scale_s, scale * std, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("cell", "nonlinearity"), CELLS)
def test_extreme_readings_leave_outputs_and_state_finite(cell: str, nonlinearity: str) -> None:
    model = _model(cell, nonlinearity)
    x = torch.tensor([[1e30, -1e30, 3e38]]).repeat(200, 1).unsqueeze(1)  # (time, 1, channels)
    with torch.no_grad():
        loc, scale, state = model(x, model.initial_state(1))
    assert torch.isfinite(loc).all() and torch.isfinite(scale).all()
    assert all(torch.isfinite(s).all() for s in state)
    assert (scale > 0).all()


def test_scale_stays_strictly_positive_when_the_network_pushes_it_down() -> None:
    model = _model("gru", "tanh")
    with torch.no_grad():
        model.head.bias[3:] = -1e4
        _, scale, _ = model(torch.randn(10, 2, 3), model.initial_state(2))
    assert (scale >= 1e-3 * model.std).all()


def test_an_untrained_model_forecasts_the_last_value() -> None:
    torch.manual_seed(0)
    model = Forecaster("gru", hidden_size=8, num_layers=1, channels=1)
    x = torch.randn(30, 5, 1)
    with torch.no_grad():
        loc, scale, _ = model(x, model.initial_state(5))
    torch.testing.assert_close(loc, x, rtol=0, atol=0.05)
    torch.testing.assert_close(scale, torch.ones_like(scale), rtol=0, atol=0.05)


def test_nll_is_the_gaussian_negative_log_likelihood_in_z_units() -> None:
    model = _model("gru", "tanh")
    model.set_normalization(torch.zeros(3), torch.tensor([1.0, 2.0, 4.0]))
    loc, scale = torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 4.0]])
    target = torch.tensor([[1.0, 2.0, 4.0]])  # one scale off in each channel
    expected = 3 * (0.5 + 0.5 * torch.log(torch.tensor(2 * torch.pi)))
    torch.testing.assert_close(model.nll(loc, scale, target), expected.reshape(1))


def test_relu_is_refused_for_gated_cells_and_unknown_cells_are_refused() -> None:
    with pytest.raises(ValueError, match="rnn cell only"):
        Forecaster("gru", 8, 1, 1, nonlinearity="relu")
    with pytest.raises(ValueError, match="unknown cell 'transformer'"):
        Forecaster("transformer", 8, 1, 1)  # type: ignore[arg-type]


def test_parameter_count_counts_recurrent_and_head_weights() -> None:
    model = Forecaster("gru", hidden_size=4, num_layers=1, channels=1)
    assert parameter_count(model) == 3 * (4 * 1 + 4 * 4 + 2 * 4) + (4 * 2 + 2)
