"""The single step to ONNX, checked against PyTorch before anything is kept.

The graph is `Forecaster.step`: inputs `x` (B, F) and `h` (L, B, H) (LSTM also `c`),
outputs `loc`, `scale` (B, F) and `h_out` (LSTM also `c_out`), batch axis dynamic. Every
export is followed by a parity check: a real 1,000-step sequence through PyTorch (the
sequence `forward` training uses) and through ONNX Runtime one step at a time, at batch 1 and
37. A difference above 1e-4 deletes the files and raises `ParityError`: never trust an export.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from service.model import CARD_FILE, ONNX_FILE, ModelCard, session_of, sha256_of
from service.model import Forecaster as ServedForecaster
from training.model import Forecaster

OPSET = 17
PARITY_STEPS = 1000
PARITY_BATCHES = (1, 37)
PARITY_ATOL = 1e-4


_RNN_OPS = {"GRU": "gru", "LSTM": "lstm", "RNN": "rnn"}
# ONNX orders gates z, r, h (GRU) and i, o, f, c (LSTM); PyTorch r, z, n and i, f, g, o.
_TORCH_GATES = {"gru": [1, 0, 2], "lstm": [0, 2, 3, 1], "rnn": [0]}


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree on the exported step beyond the tolerance."""


class _Step(nn.Module):
    """`Forecaster.step` (with `fused`, `step_fused`) with the state as separate tensors, the
    shape ONNX export wants."""

    def __init__(self, model: Forecaster, fused: bool = False) -> None:
        super().__init__()
        self.model = model
        self.fused = fused

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        step = self.model.step_fused if self.fused else self.model.step
        loc, scale, new_state = step(x, tuple(state))
        return (loc, scale, *new_state)


def export_onnx(model: Forecaster, path: Path, opset: int = OPSET, *, fused: bool = False) -> None:
    """Write the single-step graph of `model` to `path` (no parity check: see `export_model`).
    With `fused`, the cell as ONNX's fused GRU/LSTM/RNN op, as this package exported every cell
    before it wrote GRU and RNN cells out (`benchmarks.cell_graph` compares the two)."""
    model.eval()
    names = model.state_names
    batch = 2
    example = (torch.zeros(batch, model.channels), *model.initial_state(batch))
    dynamic = {"x": {0: "batch"}, "loc": {0: "batch"}, "scale": {0: "batch"}}
    dynamic |= {name: {1: "batch"} for name in names}
    dynamic |= {f"{name}_out": {1: "batch"} for name in names}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, but it still
        # exports the step (an LSTM as the fused ONNX op, `Forecaster.step` says why) in
        # milliseconds, and the parity check below holds it to account.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # nn.RNNBase's shape checks compare tensors in Python: constant for a fixed layout.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # A warning for variable-length batches; every row here steps exactly one reading.
        warnings.filterwarnings("ignore", message=r"Exporting a model to ONNX with a batch_size")
        torch.onnx.export(
            _Step(model, fused),
            example,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["x", *names],
            output_names=["loc", "scale", *(f"{name}_out" for name in names)],
            dynamic_axes=dynamic,
        )
    onnx.checker.check_model(onnx.load(str(path)))


def check_parity(
    model: Forecaster,
    onnx_path: Path,
    values: np.ndarray,
    batch_sizes: tuple[int, ...] = PARITY_BATCHES,
    atol: float = PARITY_ATOL,
) -> float:
    """Max abs difference of loc, scale (over std: z units) and state, ORT vs PyTorch.

    values: (time, streams, channels) real readings, as the server feeds them; the first
    `PARITY_STEPS` are used, and the streams are cycled (each copy shifted in time) to fill a
    batch. Raises `ParityError` above `atol`.
    """
    session = session_of(onnx_path)  # as the server runs it
    worst = 0.0
    for batch in batch_sizes:
        x = _parity_batch(values, batch)  # (time, batch, channels)
        diff = _max_difference(model, session, x)
        if diff > atol:
            raise ParityError(
                f"{onnx_path}: ONNX Runtime differs from PyTorch by {diff:.3g} > {atol:g} "
                f"at batch {batch}"
            )
        worst = max(worst, diff)
    return worst


def export_model(
    model: Forecaster, out_dir: Path, card: ModelCard, values: np.ndarray
) -> ModelCard:
    """Export, check parity, and write `model.onnx` + `card.json` (the card's sha256 filled in).

    The files are loaded back through the server's own loader; on any failure both are
    deleted, so a directory never holds an unchecked model.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, card_path = out_dir / ONNX_FILE, out_dir / CARD_FILE
    try:
        export_onnx(model, onnx_path, card.opset)
        diff = check_parity(model, onnx_path, values)
        metrics = {**card.metrics, "onnx_parity_max_abs_diff": diff}
        card = dataclasses.replace(card, sha256=sha256_of(onnx_path), metrics=metrics)
        card.save(out_dir)
        ServedForecaster.load(out_dir)
    except BaseException:
        onnx_path.unlink(missing_ok=True)
        card_path.unlink(missing_ok=True)
        raise
    return card


def _parity_batch(values: np.ndarray, batch: int) -> np.ndarray:
    length = min(PARITY_STEPS, values.shape[0])
    rows = []
    for b in range(batch):
        stream = values[:, b % values.shape[1]]
        shift = (b // values.shape[1]) * 7  # copies of one stream still differ
        rows.append(np.roll(stream, -shift, axis=0)[:length])
    return np.ascontiguousarray(np.stack(rows, axis=1), dtype=np.float32)


@torch.no_grad()
def _max_difference(model: Forecaster, session: ort.InferenceSession, x: np.ndarray) -> float:
    model.eval()
    names = model.state_names
    loc_t, scale_t, state_t = model(torch.from_numpy(x), model.initial_state(x.shape[1]))
    std = model.std.numpy()
    state = [s.numpy() for s in model.initial_state(x.shape[1])]
    worst = 0.0
    for t in range(x.shape[0]):
        loc, scale, *state = session.run(None, {"x": x[t], **dict(zip(names, state, strict=True))})
        worst = max(
            worst,
            _max_abs(loc - loc_t[t].numpy(), std),
            _max_abs(scale - scale_t[t].numpy(), std),
        )
    for ours, theirs in zip(state, state_t, strict=True):
        worst = max(worst, _max_abs(ours - theirs.numpy(), 1.0))
    return worst


def _max_abs(diff: np.ndarray, std: np.ndarray | float) -> float:
    worst = float(np.max(np.abs(diff) / std))
    return worst if np.isfinite(worst) else float("inf")  # NaN must fail, not compare False


def load_torch_forecaster(model_dir: Path) -> Forecaster:
    """The PyTorch `Forecaster` whose export is `model_dir/model.onnx`, weights and all.

    A cell written out (`Forecaster.step`) keeps the module's own names for its weights; a
    fused GRU/LSTM/RNN op (an LSTM, or a GRU or RNN this package exported before it wrote
    them out) has them in ONNX's gate order. Raises ValueError if the graph is not one
    `training.export` writes, and `ParityError` if the rebuilt module does not step as the
    ONNX file does.
    """
    card = ModelCard.load(model_dir)
    graph = onnx.load(str(model_dir / ONNX_FILE)).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    model = Forecaster(
        card.cell, card.hidden_size, card.num_layers, card.n_channels, card.nonlinearity
    )
    missing = {"model.mean", "model.std", "model.head.bias"} - set(weights)
    if missing:
        raise ValueError(
            f"{model_dir}: not a graph training.export writes (no {', '.join(sorted(missing))}); "
            "reading its weights back needs one"
        )
    keys = model.state_dict().keys()
    if all(f"model.{key}" in weights for key in keys):
        state = {key: weights[f"model.{key}"] for key in keys}
    else:
        state = _from_fused_ops(model_dir, card, graph, weights)
    model.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()})
    model.eval()
    probe = np.sin(np.arange(200.0) / 7.0)[:, None, None].repeat(card.n_channels, axis=2)
    check_parity(model, model_dir / ONNX_FILE, probe.astype(np.float32), batch_sizes=(1,))
    return model


def _from_fused_ops(
    model_dir: Path, card: ModelCard, graph: onnx.GraphProto, weights: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The module's weights from a graph of fused recurrent ops and a MatMul head."""
    state = {"mean": weights["model.mean"], "std": weights["model.std"]}
    layers = [n for n in graph.node if n.op_type in _RNN_OPS]
    if len(layers) != card.num_layers or any(_RNN_OPS[n.op_type] != card.cell for n in layers):
        raise ValueError(f"{model_dir}: the graph's recurrent layers do not match the card")
    gates = _TORCH_GATES[card.cell]
    for k, node in enumerate(layers):
        w, r, b = (weights[name][0] for name in node.input[1:4])
        state[f"rnn.weight_ih_l{k}"] = _reorder(w, gates)
        state[f"rnn.weight_hh_l{k}"] = _reorder(r, gates)
        w_bias, r_bias = np.split(b, 2)
        state[f"rnn.bias_ih_l{k}"] = _reorder(w_bias, gates)
        state[f"rnn.bias_hh_l{k}"] = _reorder(r_bias, gates)
    head = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    if len(head) != 1:
        raise ValueError(f"{model_dir}: expected one head MatMul in the graph")
    state["head.weight"] = weights[head[0].input[1]].T
    state["head.bias"] = weights["model.head.bias"]
    return state


def _reorder(blocks: np.ndarray, gates: list[int]) -> np.ndarray:
    return np.concatenate([np.split(blocks, len(gates))[g] for g in gates])

