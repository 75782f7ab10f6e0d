"""The training loop: truncated BPTT over mini-batches of streams, AdamW, early stopping.

Read top to bottom: hyper-parameters in `TrainConfig`, then `train`, which builds the model,
loops over epochs and mini-batches, and keeps the weights with the best validation NLL.
Within a mini-batch the sequence is cut into chunks of `bptt` readings; the state is carried
from chunk to chunk and detached, so gradients reach at most `bptt` readings back.

>>> result = train(dataset, TrainConfig(cell="gru", hidden_size=32, epochs=5))  # doctest: +SKIP
>>> result.model, result.history[-1].val_nll  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from training.dataset import Dataset, Sequences
from training.model import Cell, Forecaster, Nonlinearity, State

EVAL_BATCH = 256  # streams per forward pass when evaluating
EVAL_CHUNK = 512  # readings per forward pass when evaluating: bounds memory on long streams


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of a training run; recorded in the model card."""

    cell: Cell = "gru"
    hidden_size: int = 64
    num_layers: int = 1
    nonlinearity: Nonlinearity = "tanh"
    epochs: int = 30
    batch_size: int = 32  # streams (segments) per mini-batch
    bptt: int = 64  # readings per truncated-BPTT chunk
    segment_len: int = 1024  # long streams are cut into segments of about this length
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * this over all epochs
    weight_decay: float = 1e-4
    grad_clip: float = 1.0  # max global gradient norm per update
    patience: int = 5  # epochs without a better validation NLL before stopping
    seed: int = 0
    threads: int = 1  # one thread: small recurrent kernels gain nothing from two, and
    # a fixed thread count keeps results identical across machines


@dataclass(frozen=True)
class EpochLog:
    """One epoch's numbers. `early_grad_norm`: gradient of a chunk's last-step loss reaching
    its first input (z units); it shrinks toward zero when gradients vanish."""

    epoch: int
    train_nll: float
    val_nll: float
    grad_norm: float  # mean global gradient norm before clipping
    early_grad_norm: float
    lr: float
    seconds: float


@dataclass(frozen=True, eq=False)
class TrainResult:
    """The model at its best validation NLL, and every epoch's log."""

    model: Forecaster
    history: tuple[EpochLog, ...]
    best_epoch: int
    seconds: float

    @property
    def best_val_nll(self) -> float:
        return self.history[self.best_epoch - 1].val_nll


def train(
    data: Dataset,
    config: TrainConfig,
    *,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a `Forecaster` on `data.train`, early-stopping on `data.val`.

    `progress`: show a tqdm bar; None shows it only when stderr is a terminal.
    `log`: receives one line per epoch (default: written to stderr).
    """
    with reproducible_torch(config.threads):
        return _train(data, config, progress, log or _stderr)


@contextmanager
def reproducible_torch(threads: int) -> Iterator[None]:
    """Within: `threads` intra-op threads and deterministic algorithms; restored after."""
    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])


def _train(
    data: Dataset, config: TrainConfig, progress: bool | None, log: Callable[[str], None]
) -> TrainResult:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = Forecaster(
        config.cell, config.hidden_size, config.num_layers, len(data.channels), config.nonlinearity
    )
    model.set_normalization(torch.from_numpy(data.mean), torch.from_numpy(data.std))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    n_batches = math.ceil(data.train.n_streams / config.batch_size)
    n_chunks = math.ceil((data.train.values.shape[0] - 1) / config.bptt)
    total_updates = max(1, config.epochs * n_batches * n_chunks)
    train_values = torch.from_numpy(data.train.values)
    train_mask = torch.from_numpy(data.train.mask)

    history: list[EpochLog] = []
    best_val, best_epoch, best_weights = math.inf, 0, copy.deepcopy(model.state_dict())
    started = time.perf_counter()
    updates = 0
    show = sys.stderr.isatty() if progress is None else progress
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        nll_sum, target_count, grad_norms = 0.0, 0, []
        order = rng.permutation(data.train.n_streams)
        bar = tqdm(total=n_batches * n_chunks, desc=f"epoch {epoch}", disable=not show, leave=False)
        for first in range(0, len(order), config.batch_size):
            idx = torch.from_numpy(order[first : first + config.batch_size])
            x, mask = train_values[:, idx], train_mask[:, idx]  # (time, batch, ...)
            state = model.initial_state(len(idx))
            for t0, t1 in _chunks(x.shape[0], config.bptt):
                lr = _cosine_lr(config, updates / total_updates)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loc, scale, state = model(x[t0:t1], state)
                target_mask = mask[t0 + 1 : t1 + 1]
                nll = model.nll(loc, scale, x[t0 + 1 : t1 + 1])  # (chunk, batch)
                count = int(target_mask.sum())
                state = tuple(s.detach() for s in state)
                bar.update(1)
                if count == 0:
                    continue  # all padding or anomalies: the state advanced, nothing to learn
                loss = (nll * target_mask).sum() / count
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                updates += 1
                grad_norms.append(float(norm))
                nll_sum += loss.item() * count
                target_count += count
                bar.set_postfix(nll=f"{nll_sum / target_count:.4f}")
        bar.close()

        val_nll = evaluate_nll(model, data.val)
        entry = EpochLog(
            epoch=epoch,
            train_nll=nll_sum / max(1, target_count),
            val_nll=val_nll,
            grad_norm=float(np.mean(grad_norms)) if grad_norms else 0.0,
            early_grad_norm=early_gradient_norm(model, data.val, config.bptt),
            lr=_cosine_lr(config, updates / total_updates),
            seconds=time.perf_counter() - epoch_started,
        )
        history.append(entry)
        log(
            f"epoch {epoch:3d}  train nll {entry.train_nll:8.4f}  val nll {val_nll:8.4f}  "
            f"grad {entry.grad_norm:7.3f}  early grad {entry.early_grad_norm:.2e}  "
            f"{entry.seconds:5.1f}s"
        )
        if val_nll < best_val - 1e-4:
            best_val, best_epoch = val_nll, epoch
            best_weights = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            log(f"early stop: no better validation NLL since epoch {best_epoch}")
            break

    model.load_state_dict(best_weights)
    model.eval()
    return TrainResult(
        model=model,
        history=tuple(history),
        best_epoch=best_epoch,
        seconds=time.perf_counter() - started,
    )


@torch.no_grad()
def forecast(model: Forecaster, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run `model` from a zero state over (time, streams, channels) values.

    Returns loc and scale, each (time, streams, channels): row t forecasts reading t + 1.
    """
    model.eval()
    length, n_streams, _ = values.shape
    loc = np.empty(values.shape, np.float32)
    scale = np.empty(values.shape, np.float32)
    for s0 in range(0, n_streams, EVAL_BATCH):
        s1 = min(s0 + EVAL_BATCH, n_streams)
        state: State = model.initial_state(s1 - s0)
        for t0 in range(0, length, EVAL_CHUNK):
            x = torch.from_numpy(values[t0 : t0 + EVAL_CHUNK, s0:s1])
            chunk_loc, chunk_scale, state = model(x, state)
            loc[t0 : t0 + EVAL_CHUNK, s0:s1] = chunk_loc.numpy()
            scale[t0 : t0 + EVAL_CHUNK, s0:s1] = chunk_scale.numpy()
    return loc, scale


def evaluate_nll(model: Forecaster, seqs: Sequences) -> float:
    """Mean NLL per counted target reading (z units, summed over channels)."""
    loc, scale = forecast(model, seqs.values)
    with torch.no_grad():
        target = torch.from_numpy(seqs.values[1:])
        nll = model.nll(torch.from_numpy(loc[:-1]), torch.from_numpy(scale[:-1]), target)
    mask = seqs.mask[1:]  # nll and mask: (time - 1, streams)
    return float(nll.numpy()[mask].mean()) if mask.any() else math.nan


def early_gradient_norm(model: Forecaster, seqs: Sequences, bptt: int) -> float:
    """Mean over streams of |d loss(last step of a chunk) / d z(first step of the chunk)|.

    The chunk is the first `bptt` readings after a warm-up of as many, so the state is not
    the trivial zero state. A vanilla RNN's number shrinks toward zero: vanishing gradients.
    """
    length = min(2 * bptt + 1, seqs.values.shape[0])
    warm_up = length - bptt - 1
    if warm_up < 0:
        return math.nan
    values = torch.from_numpy(seqs.values[:length, :EVAL_BATCH])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        _, _, state = model(values[:warm_up], model.initial_state(values.shape[1]))
    x = values[warm_up : warm_up + bptt].clone().requires_grad_(True)
    loc, scale, _ = model(x, state)
    last = model.nll(loc[-1], scale[-1], values[warm_up + bptt]).sum()
    (grad,) = torch.autograd.grad(last, x)
    model.train(was_training)
    grad_z = grad[0] * model.std  # d/dz = d/dx * std
    return float(grad_z.norm(dim=-1).mean())


def _chunks(length: int, bptt: int) -> Iterator[tuple[int, int]]:
    """(t0, t1) input ranges; the targets are readings t0 + 1 .. t1."""
    for t0 in range(0, length - 1, bptt):
        yield t0, min(t0 + bptt, length - 1)


def _cosine_lr(config: TrainConfig, progress: float) -> float:
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _stderr(line: str) -> None:
    tqdm.write(line, file=sys.stderr)
