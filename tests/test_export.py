from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from service.errors import ModelLoadError
from service.model import Calibration, ModelCard, Normalization, sha256_of
from service.model import Forecaster as ServedForecaster
from training.cli import main as cli_main
from training.export import (
    ParityError,
    check_parity,
    export_model,
    export_onnx,
    load_torch_forecaster,
)
from training.model import Forecaster

CELLS = [("gru", "tanh"), ("lstm", "tanh"), ("rnn", "tanh"), ("rnn", "relu")]


def _model(cell: str = "gru", nonlinearity: str = "tanh", seed: int = 0) -> Forecaster:
    torch.manual_seed(seed)
    model = Forecaster(cell, hidden_size=16, num_layers=2, channels=2, nonlinearity=nonlinearity)
    with torch.no_grad():
        model.head.weight.normal_(std=0.3)  # the initial head is nearly silent
    model.set_normalization(torch.tensor([3.0, -1.0]), torch.tensor([2.0, 0.5]))
    return model.eval()


def _readings(streams: int = 5) -> np.ndarray:
    """A real-looking 1,000-step sequence: random walks around the model's mean."""
    rng = np.random.default_rng(0)
    walk = rng.normal(scale=0.3, size=(1000, streams, 2)).cumsum(axis=0)
    return (walk + np.array([3.0, -1.0])).astype(np.float32)  # (time, streams, channels)


def _card(model: Forecaster) -> ModelCard:
    return ModelCard(
        name="tiny",
        version="1",
        created="2024-01-01T00:00:00+00:00",
        cell=model.cell,
        nonlinearity=model.nonlinearity,
        hidden_size=model.hidden_size,
        num_layers=model.num_layers,
        channels=["a", "b"],
        normalization=Normalization(mean=[3.0, -1.0], std=[2.0, 0.5], per_stream=False),
        calibration=Calibration(abs_z=[0.0, 1.0, 2.0], log_tail=[0.0, -1.0, -3.0]),
        threshold=0.9999,
        opset=17,
        sha256="",
    )


@pytest.mark.parametrize(("cell", "nonlinearity"), CELLS)
def test_onnx_step_matches_pytorch_over_1000_steps_at_batch_1_and_37(
    tmp_path: Path, cell: str, nonlinearity: str
) -> None:
    model = _model(cell, nonlinearity)
    path = tmp_path / "model.onnx"
    export_onnx(model, path)
    assert check_parity(model, path, _readings(), batch_sizes=(1, 37)) <= 1e-4


@pytest.mark.parametrize(("cell", "state"), [("gru", ["h"]), ("lstm", ["h", "c"])])
def test_graph_has_the_contract_names_and_a_dynamic_batch_axis(
    tmp_path: Path, cell: str, state: list[str]
) -> None:
    path = tmp_path / "model.onnx"
    export_onnx(_model(cell), path)
    graph = onnx.load(str(path)).graph

    def dims(values: list[onnx.ValueInfoProto]) -> dict[str, list[str | int]]:
        return {
            v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in values
        }

    expected_state = {name: [2, "batch", 16] for name in state}
    assert dims(list(graph.input)) == {"x": ["batch", 2], **expected_state}
    assert dims(list(graph.output)) == {
        "loc": ["batch", 2],
        "scale": ["batch", 2],
        **{f"{name}_out": shape for name, shape in expected_state.items()},
    }


@pytest.mark.parametrize(("cell", "fused"), [("gru", False), ("rnn", False), ("lstm", True)])
def test_the_graph_steps_a_gru_or_rnn_cell_written_out_and_an_lstm_as_the_fused_op(
    tmp_path: Path, cell: str, fused: bool
) -> None:
    # ONNX Runtime steps a round of 1,024 through its fused GRU and RNN ops about half as fast
    # as through the cell written out; its LSTM op is the faster (benchmarks.cell_graph).
    path = tmp_path / "model.onnx"
    export_onnx(_model(cell), path)
    assert bool(_ops(path) & {"GRU", "LSTM", "RNN"}) is fused


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_export_writes_a_fused_gru_model_again_with_its_weights_card_and_forecasts(
    tmp_path: Path,
) -> None:
    model = _model("gru")
    (tmp_path / "old").mkdir()
    export_onnx(model, tmp_path / "old/model.onnx", fused=True)  # as earlier versions did
    card = dataclasses.replace(_card(model), sha256=sha256_of(tmp_path / "old/model.onnx"))
    card.save(tmp_path / "old")
    assert "GRU" in _ops(tmp_path / "old/model.onnx")

    assert cli_main(["export", str(tmp_path / "old"), "--out", str(tmp_path / "new")]) == 0

    new = ServedForecaster.load(tmp_path / "new")
    assert dataclasses.replace(new.card, sha256="", metrics={}) == dataclasses.replace(
        card, sha256="", metrics={}
    )
    assert "GRU" not in _ops(tmp_path / "new/model.onnx")
    for name, value in load_torch_forecaster(tmp_path / "new").state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    served_old = ServedForecaster.load(tmp_path / "old")
    x = _readings()  # (time, streams, channels)
    state_old, state_new = served_old.initial_state(5), new.initial_state(5)
    for t in range(200):
        loc_old, scale_old, state_old = served_old.step(x[t], state_old)
        loc_new, scale_new, state_new = new.step(x[t], state_new)
        np.testing.assert_allclose(loc_new, loc_old, atol=1e-4)
        np.testing.assert_allclose(scale_new, scale_old, atol=1e-4)


def test_export_refuses_to_write_over_the_model_it_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export_model(_model(), tmp_path, _card(_model()), _readings())
    with pytest.raises(SystemExit):
        cli_main(["export", str(tmp_path), "--out", str(tmp_path)])
    assert "--out must be another directory" in capsys.readouterr().err
    ServedForecaster.load(tmp_path)  # still there, its sha256 still its card's


def test_parity_check_catches_a_graph_that_is_not_the_model(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    export_onnx(_model(seed=0), path)
    with pytest.raises(ParityError, match="differs from PyTorch by .* at batch 1"):
        check_parity(_model(seed=1), path, _readings())


def test_exported_model_loads_in_the_server_and_steps_like_pytorch(tmp_path: Path) -> None:
    model = _model("lstm")
    card = export_model(model, tmp_path, _card(model), _readings())
    assert card.sha256 == sha256_of(tmp_path / "model.onnx")
    assert card.metrics["onnx_parity_max_abs_diff"] <= 1e-4
    served = ServedForecaster.load(tmp_path)
    assert served.card == card
    x = _readings()[0]  # (streams, channels)
    loc, scale, state = served.step(x, served.initial_state(x.shape[0]))
    with torch.no_grad():
        t_loc, t_scale, t_state = model.step(torch.from_numpy(x), model.initial_state(x.shape[0]))
    np.testing.assert_allclose(loc, t_loc.numpy(), atol=1e-5)
    np.testing.assert_allclose(scale, t_scale.numpy(), atol=1e-5)
    np.testing.assert_allclose(state[1], t_state[1].numpy(), atol=1e-5)


def test_an_export_that_fails_leaves_no_files_behind(tmp_path: Path) -> None:
    model = _model()
    bad_card = dataclasses.replace(_card(model), threshold=1.5)  # the server refuses it
    with pytest.raises(ModelLoadError, match="threshold"):
        export_model(model, tmp_path, bad_card, _readings())
    assert list(tmp_path.iterdir()) == []


def test_the_server_keeps_each_streams_state_of_a_two_layer_lstm_as_the_model_leaves_it(
    tmp_path: Path,
) -> None:
    from service.directory import StreamDirectory
    from service.registry import ModelRegistry
    from service.settings import Settings

    model = _model("lstm")  # two states (h, c), each of two layers: (2, 2, 16) a stream
    export_model(model, tmp_path / "models" / "default", _card(model), _readings())
    settings = Settings(model={"dir": tmp_path / "models"}, data_dir=tmp_path / "data")
    registry = ModelRegistry.load(settings.model)
    stepper = StreamDirectory(registry, settings).steppers["default"]
    served = registry.get("default")
    ids = ["a", "b", "c"]
    for sid in ids:
        stepper.bind(sid)
    walk = _readings(len(ids))
    state = served.initial_state(len(ids))
    for t in range(12):
        x = walk[t]  # (streams, channels), every channel observed
        stepper.apply_columns(ids, np.full(len(ids), 60.0 * t), x.astype(np.float64),
                              stepper.arena.slots_of(ids))
        _, _, state = served.step(x, state)
    kept = stepper.arena.states[stepper.arena.slots_of(ids)]  # (streams, states, layers, hidden)
    np.testing.assert_allclose(kept, np.stack(state).transpose(2, 0, 1, 3), rtol=0, atol=1e-6)
