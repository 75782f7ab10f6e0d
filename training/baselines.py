"""Two baseline forecasters, written as model directories the server loads like any other.

* `last-value`: the next reading will be the last one (loc = x_t), give or take one of the
  stream's standard deviations.
* `zscore`: the next reading will be the stream's running mean, give or take its running
  standard deviation: a rolling z-score detector, because the server's per-stream normalizer
  tracks mean and variance over about 1 / `normalization.alpha` readings (500 by default).

Each is a tiny hand-written ONNX graph with the signature of an exported step,
`(x, h) -> (loc, scale, h_out)`, working in the stream's standardized units as the recurrent
model does, so it goes through the same engine, scoring and alert rule. Its calibration table
is fit the same way, on the errors it makes on clean synthetic streams replayed as the server
would replay them.

>>> write_baseline("zscore", Path("eval/zscore"), threshold=0.9999)  # doctest: +SKIP
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper

from service import normalization
from service.model import ONNX_FILE, Calibration, ModelCard, Normalization, sha256_of
from service.scoring import fit_calibration
from training.export import OPSET
from training.synthetic import SyntheticConfig, generate

Baseline = Literal["last-value", "zscore"]
BASELINES: tuple[Baseline, ...] = ("last-value", "zscore")
CALIBRATION_DATA = SyntheticConfig(n_streams=64, length=2048, anomalies_per_stream=0.0, seed=7)


def write_baseline(
    kind: Baseline,
    out_dir: Path,
    *,
    threshold: float,
    normalizer: normalization.NormalizerParams | None = None,
) -> ModelCard:
    """Write `model.onnx` and `card.json` of a baseline to `out_dir`; returns the card."""
    params = normalizer or normalization.NormalizerParams()
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / ONNX_FILE
    onnx.save(_graph(kind), str(onnx_path))
    card = ModelCard(
        name=out_dir.name,
        version="1",
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        cell="gru",  # the state signature of a one-unit GRU; the state passes through
        hidden_size=1,
        num_layers=1,
        channels=["value"],
        normalization=Normalization(mean=[0.0], std=[1.0], per_stream=True),
        calibration=baseline_calibration(kind, params),
        threshold=threshold,
        opset=OPSET,
        sha256=sha256_of(onnx_path),
        training={"baseline": kind, "calibration_data": CALIBRATION_DATA.__dict__},
    )
    card.save(out_dir)
    return card


def baseline_calibration(kind: Baseline, params: normalization.NormalizerParams) -> Calibration:
    """The table of |standardized error| -> tail, from clean synthetic streams after warm-up."""
    streams = generate(CALIBRATION_DATA)
    values = np.stack([s.values[:, 0] for s in streams], axis=0)  # (streams, time)
    errors = _errors(kind, values, params)
    return fit_calibration(errors[:, params.warmup_n + 1 :].ravel())


def _errors(
    kind: Baseline, values: np.ndarray, params: normalization.NormalizerParams
) -> np.ndarray:
    """|x_t - loc| / scale of the forecast made at t - 1, as the server's stepper computes it."""
    n_streams, length = values.shape
    count = np.zeros(n_streams, np.int64)
    mean = np.zeros((n_streams, 1))
    var = np.zeros((n_streams, 1))
    observed = np.ones((n_streams, 1), bool)
    loc = scale = np.full((n_streams, 1), np.nan)
    errors = np.zeros((n_streams, length))  # (streams, time); the first reading has none
    for t in range(length):
        x = values[:, t : t + 1]
        if t:
            errors[:, t] = np.abs(x - loc)[:, 0] / scale[:, 0]
        u, count, mean, var = normalization.step(count, mean, var, x, observed, params)
        std = normalization.std_of(mean, var)
        loc_u = u if kind == "last-value" else np.zeros_like(u)
        loc, scale = loc_u * std + mean, std
    return errors


def _graph(kind: Baseline) -> onnx.ModelProto:
    """(x (B, 1), h (1, B, 1)) -> (loc, scale, h_out): loc = x or 0, scale = 1, h_out = h."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "batch", 1])
    outputs = [
        helper.make_tensor_value_info("loc", TensorProto.FLOAT, ["batch", 1]),
        helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["batch", 1]),
        helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, "batch", 1]),
    ]
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Sub", ["x", "x"], ["zero"]),  # zeros shaped like x
        helper.make_node("Add", ["zero", "one"], ["scale"]),
        helper.make_node("Identity", ["x" if kind == "last-value" else "zero"], ["loc"]),
        helper.make_node("Identity", ["h"], ["h_out"]),
    ]
    graph = helper.make_graph(nodes, f"baseline-{kind}", [x, h], outputs, initializer=[one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by the pinned ONNX Runtime
    onnx.checker.check_model(model)
    return model
