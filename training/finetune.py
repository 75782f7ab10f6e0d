"""Per-stream mode: a general model fine-tuned on one stream's first readings, then exported.

NAB lets a detector learn from each file's probationary period (its first 15%, at most 750
readings). `finetune_stream` starts from the general model's weights (read back from its
ONNX file by `training.export.load_torch_forecaster`, checked for parity), trains a few
seconds on that stretch as the server would feed it (`service.normalization.normalize_series`),
keeping the epoch with the best NLL on its last fifth, and writes a model directory the server
loads like any other.

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
import torch

from service.model import ModelCard
from service.normalization import NormalizerParams, normalize_series
from training.calibrate import calibration_table
from training.dataset import Sequences, pack
from training.export import export_model
from training.model import Forecaster
from training.train import evaluate_nll


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
