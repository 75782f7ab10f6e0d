"""Per-stream mode: a general model fine-tuned on one stream's first readings, then exported.

NAB lets a detector learn from each file's probationary period (its first 15%, at most 750
readings). `finetune_stream` starts from the general model's weights (read back from its
ONNX file, checked for parity), trains a few seconds on that stretch as the server would
feed it (`service.normalization.normalize_series`), keeping the epoch with the best NLL on
its last fifth, and writes a model directory the server loads like any other.

>>> general = load_torch_forecaster(Path("models/default"))  # doctest: +SKIP
>>> card = finetune_stream(general, ServedForecaster.load(Path("models/default")).card,
...                        values[:750], Path("eval/models/nyc_taxi"))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from service.model import ONNX_FILE, ModelCard
from service.normalization import NormalizerParams, normalize_series
from training.calibrate import calibration_table
from training.dataset import Sequences, pack
from training.export import check_parity, export_model
from training.model import Forecaster
from training.train import evaluate_nll

_RNN_OPS = {"GRU": "gru", "LSTM": "lstm", "RNN": "rnn"}
# ONNX orders gates z, r, h (GRU) and i, o, f, c (LSTM); PyTorch r, z, n and i, f, g, o.
_TORCH_GATES = {"gru": [1, 0, 2], "lstm": [0, 2, 3, 1], "rnn": [0]}


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    bptt: int = 64
    grad_clip: float = 1.0
    val_fraction: float = 0.2  # the last part of the stretch picks the best epoch
    burn_in: int = 32  # first targets not counted: the state is still settling
    calibrate: bool = False  # refit the calibration table on the stretch (else keep the card's)
    seed: int = 0


def load_torch_forecaster(model_dir: Path) -> Forecaster:
    """The PyTorch `Forecaster` whose export is `model_dir/model.onnx`, weights and all.

    Raises ValueError if the graph is not one `training.export` writes, and
    `training.export.ParityError` if the rebuilt module does not step as the ONNX file does.
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
            "per-stream fine-tuning needs one"
        )
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
    model.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()})
    model.eval()
    probe = np.sin(np.arange(200.0) / 7.0)[:, None, None].repeat(card.n_channels, axis=2)
    check_parity(model, model_dir / ONNX_FILE, probe.astype(np.float32), batch_sizes=(1,))
    return model


def _reorder(blocks: np.ndarray, gates: list[int]) -> np.ndarray:
    return np.concatenate([np.split(blocks, len(gates))[g] for g in gates])


def finetune_stream(
    general: Forecaster,
    general_card: ModelCard,
    values: np.ndarray,
    out_dir: Path,
    config: FinetuneConfig | None = None,
    normalizer: NormalizerParams | None = None,
) -> ModelCard:
    """Fine-tune `general` on one stream's (time, channels) readings; write it to `out_dir`.

    The card is the general card with the new weights, sha256 and (if `config.calibrate`)
    a calibration table refit on the stretch; the threshold is kept, so the score means the
    same thing.
    """
    config = config or FinetuneConfig()
    u = normalize_series(values, normalizer or NormalizerParams())  # (time, channels)
    n = len(u)
    n_train = int(round(n * (1.0 - config.val_fraction)))
    train_mask = np.arange(n) >= config.burn_in
    train_mask[n_train:] = False
    val_mask = np.arange(n) >= n_train
    train_seqs, val_seqs = pack([(u, train_mask)]), pack([(u, val_mask)])
    model = _finetune(general, train_seqs, val_seqs, config)
    card = dataclasses.replace(
        general_card,
        name=out_dir.name,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        metrics={"finetune_val_nll": evaluate_nll(model, val_seqs)},
        training={
            "finetuned_from": general_card.name,
            "finetuned_from_sha256": general_card.sha256,
            "general_val_nll": evaluate_nll(general, val_seqs),
            "readings": n,
            "config": dataclasses.asdict(config),
        },
    )
    if config.calibrate:
        every = pack([(u, np.arange(n) >= config.burn_in)])
        card = dataclasses.replace(card, calibration=calibration_table(model, every))
    return export_model(model, out_dir, card, u[:, None, :])


def _finetune(
    general: Forecaster, train_seqs: Sequences, val_seqs: Sequences, config: FinetuneConfig
) -> Forecaster:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny sequential kernels: a second thread only adds overhead
    try:
        torch.manual_seed(config.seed)
        model = copy.deepcopy(general)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        x = torch.from_numpy(train_seqs.values)  # (time, 1, channels)
        mask = torch.from_numpy(train_seqs.mask)  # (time, 1)
        best_nll, best = evaluate_nll(model, val_seqs), copy.deepcopy(model.state_dict())
        for _ in range(config.epochs):
            model.train()
            state = model.initial_state(1)
            for t0 in range(0, x.shape[0] - 1, config.bptt):
                t1 = min(t0 + config.bptt, x.shape[0] - 1)
                loc, scale, state = model(x[t0:t1], state)
                state = tuple(s.detach() for s in state)
                target_mask = mask[t0 + 1 : t1 + 1]
                if not bool(target_mask.any()):
                    continue
                nll = model.nll(loc, scale, x[t0 + 1 : t1 + 1])  # (chunk, 1)
                loss = (nll * target_mask).sum() / target_mask.sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
            val_nll = evaluate_nll(model, val_seqs)
            if math.isfinite(val_nll) and val_nll < best_nll:
                best_nll, best = val_nll, copy.deepcopy(model.state_dict())
        model.load_state_dict(best)
        model.eval()
        return model
    finally:
        torch.set_num_threads(threads)
