"""How far back can each cell remember? rnn, lstm and gru of equal parameter budget.

A copy task written as a two-channel stream. Channel `value` is small noise, except for a
cue now and then (a reading of size 1 to 2) and, L + 1 readings after it, its echo: the
same value again. Channel `recall` is small noise plus a pulse on the reading before an
echo. So when `recall` fires, the next reading is the cue from L steps back, and only a
forecaster that kept it in its state can predict it. Cues are far enough apart that one is
in flight at a time: the memory needed is one number, held for L steps.

Each cell is trained with our own loop (truncated BPTT in chunks of 2(L + 1) readings, so
about half of the cue-echo pairs share a chunk and a gradient path) for the same number of
epochs, then measured on fresh streams holding one cue each:

* echo error: MSE of the forecast of the echo over the variance of the cues
  (0 = remembered exactly, 1 = forgotten; predicting the noise mean gives 1),
* gradient: |d loss(echo forecast) / d cue reading|, the learning signal that reaches L
  steps back.

    python benchmarks/memory_horizon.py            # about two minutes on two cores
    python benchmarks/memory_horizon.py --quick    # a smoke run

Prints a markdown table and writes the numbers as JSON (default
benchmarks/results/memory_horizon.json).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from service.series import Stream
from training.dataset import prepare
from training.model import Cell, Forecaster, parameter_count
from training.train import TrainConfig, train

LAGS = (1, 5, 20, 50, 100)
CELLS: tuple[Cell, ...] = ("rnn", "lstm", "gru")
BUDGET_CELL: Cell = "gru"  # every cell is sized to the parameter budget of this one
BUDGET_HIDDEN = 32
CHANNELS = 2  # value, recall
NOISE = 0.1  # sd of both channels' noise
RECALL = 0.5  # the recall pulse: 5 sd, plain to see, yet not so surprising it drowns the task
MAX_GAP = 20  # readings between an echo and the next cue: 1 to this, at random
EVAL_STREAMS = 256


@dataclass(frozen=True)
class Result:
    lag: int
    cell: str
    hidden_size: int
    parameters: int
    echo_error: float  # MSE of the echo forecast / variance of the cues
    grad_to_cue: float  # |d loss(echo) / d cue|, mean over fresh streams, after training
    epochs: int
    seconds: float


def copy_values(lag: int, n_streams: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """(time, streams, channels) with cue-echo pairs at random times, one in flight at a time."""
    # Both channels carry noise: a channel that is exactly 0 would let the forecast's scale
    # collapse, and its NLL would swamp the one the task is about.
    values = (NOISE * rng.normal(size=(length, n_streams, CHANNELS))).astype(np.float32)
    for s in range(n_streams):
        cue = int(rng.integers(0, MAX_GAP))
        while cue + lag + 1 < length:
            _plant(values[:, s], cue, lag, rng)
            cue += lag + 2 + int(rng.integers(0, MAX_GAP))
    return values


def copy_streams(lag: int, n_streams: int, length: int, seed: int) -> list[Stream]:
    """Long streams with many cue-echo pairs, for training."""
    values = copy_values(lag, n_streams, length, np.random.default_rng([seed, lag]))
    return [
        Stream(
            stream_id=f"copy{lag}-{i}",
            timestamps=np.arange(length, dtype=np.float64),
            values=values[:, i].astype(np.float64),
            channels=("value", "recall"),
        )
        for i in range(n_streams)
    ]


def _plant(values: np.ndarray, cue: int, lag: int, rng: np.random.Generator) -> None:
    """A cue at `cue`, the recall pulse L readings later, the echo one after that."""
    value = rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 2.0)
    values[cue, 0] = value
    values[cue + lag, 1] += RECALL
    values[cue + lag + 1, 0] = value


def hidden_for_budget(cell: Cell, budget: int) -> int:
    """The hidden size whose parameter count is closest to `budget`."""
    sizes = range(4, 257)
    return min(sizes, key=lambda h: abs(parameter_count(Forecaster(cell, h, 1, CHANNELS)) - budget))


def measure(model: Forecaster, lag: int) -> tuple[float, float]:
    """(echo error, gradient reaching the cue) on fresh streams holding one cue each."""
    rng = np.random.default_rng([1, lag])
    cue = MAX_GAP  # a few readings first, so the state is not the zero state
    echo = cue + lag + 1
    values = (NOISE * rng.normal(size=(echo + 1, EVAL_STREAMS, CHANNELS))).astype(np.float32)
    for s in range(EVAL_STREAMS):
        _plant(values[:, s], cue, lag, rng)
    x = torch.from_numpy(values[:-1]).requires_grad_(True)  # inputs; targets are values[1:]
    loc, scale, _ = model(x, model.initial_state(EVAL_STREAMS))
    at = echo - 1  # the echo is forecast one reading earlier
    loss = model.nll(loc[at], scale[at], torch.from_numpy(values[echo])).sum()
    (grad,) = torch.autograd.grad(loss, x)
    cues = values[cue, :, 0]
    error = float(np.mean((loc[at, :, 0].detach().numpy() - cues) ** 2) / np.mean(cues**2))
    grad_z = grad[cue, :, 0] * model.std[0]  # per stream, in z units
    return error, float(grad_z.abs().mean())


def run(lag: int, cell: Cell, hidden: int, epochs: int, n_streams: int, length: int) -> Result:
    data = prepare(
        copy_streams(lag, n_streams, length, seed=0),
        per_stream=False,  # the task, not the server's normalizer, is under test
        segment_len=length,
    )
    config = TrainConfig(
        cell=cell,
        hidden_size=hidden,
        epochs=epochs,
        batch_size=8,
        bptt=max(32, 2 * (lag + 1)),
        segment_len=length,
        lr=1e-2,
        patience=epochs,  # a fixed budget: every cell gets the same number of epochs
        seed=0,
    )
    result = train(data, config, progress=False, log=lambda line: None)
    error, grad = measure(result.model, lag)
    return Result(
        lag=lag,
        cell=cell,
        hidden_size=hidden,
        parameters=parameter_count(result.model),
        echo_error=error,
        grad_to_cue=grad,
        epochs=len(result.history),
        seconds=round(result.seconds, 1),
    )


def markdown(results: list[Result], lags: tuple[int, ...]) -> str:
    by = {(r.lag, r.cell): r for r in results}
    sizes = ", ".join(
        f"{c} H={by[(lags[0], c)].hidden_size} ({by[(lags[0], c)].parameters} params)"
        for c in CELLS
    )
    head = "| L | " + " | ".join(f"{c} echo error" for c in CELLS) + " | "
    head += " | ".join(f"{c} grad to cue" for c in CELLS) + " |"
    lines = [
        f"Echo error (0 = remembered, 1 = forgotten) and |d loss / d cue| L steps back, "
        f"after equal training; {sizes}.",
        "",
        head,
        "|" + "---:|" * (1 + 2 * len(CELLS)),
    ]
    for lag in lags:
        errors = " | ".join(f"{by[(lag, c)].echo_error:.3f}" for c in CELLS)
        grads = " | ".join(f"{by[(lag, c)].grad_to_cue:.1e}" for c in CELLS)
        lines.append(f"| {lag} | {errors} | {grads} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="rnn vs lstm vs gru on a copy task")
    parser.add_argument("--quick", action="store_true", help="two lags, few epochs: a smoke run")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "memory_horizon.json"
    )
    args = parser.parse_args()
    lags = (1, 20) if args.quick else LAGS
    epochs = 2 if args.quick else args.epochs
    torch.set_num_threads(1)
    budget = parameter_count(Forecaster(BUDGET_CELL, BUDGET_HIDDEN, 1, CHANNELS))
    hidden = {cell: hidden_for_budget(cell, budget) for cell in CELLS}
    started = time.perf_counter()
    results = []
    for lag in lags:
        for cell in CELLS:
            result = run(lag, cell, hidden[cell], epochs, args.streams, args.length)
            print(
                f"L={lag:3d} {cell:4s} H={result.hidden_size:3d} "
                f"echo error {result.echo_error:.3f} grad {result.grad_to_cue:.1e} "
                f"({result.seconds}s)",
                flush=True,
            )
            results.append(result)
    table = markdown(results, lags)
    print()
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "budget_parameters": budget,
        "epochs": epochs,
        "streams": args.streams,
        "length": args.length,
        "seconds": round(time.perf_counter() - started, 1),
        "results": [asdict(r) for r in results],
        "table": table,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
