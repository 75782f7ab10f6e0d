"""ONNX Runtime session options: intra-op threads and spinning, measured, not assumed.

Raw steps/s of the model at a small batch (64: a light load's round) and a full one (1024),
for each (intra_op_num_threads, allow_spinning) pair, against the shipped default (1 thread,
no spin). One thread runs pinned to the server core, as the server does; two threads get
both cores (the only way two threads can help), so on this 2-core box they share with the
load generator in production.

    python -m benchmarks.ort_options [--models-dir DIR] [--duration 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

from benchmarks._common import PYTHON, ROOT, SERVER_CPU, Figure, default_models_dir, print_figures

OPTIONS = ((1, False), (2, False), (2, True))
BATCHES = (64, 1024)


def run(models_dir: Path, duration_s: float = 2.0) -> list[Figure]:
    rates: dict[tuple[int, bool], dict[str, float]] = {}
    for threads, spin in OPTIONS:
        cpus = str(SERVER_CPU) if threads == 1 else "0-1"
        command = ["taskset", "-c", cpus, PYTHON, "-m", "benchmarks.ort_options", "--child",
                   "--models-dir", str(models_dir), "--duration", str(duration_s),
                   "--threads", str(threads)] + (["--spin"] if spin else [])
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True,
                              timeout=60 + 10 * duration_s)
        rates[(threads, spin)] = json.loads(done.stdout.strip().splitlines()[-1])
    base = rates[OPTIONS[0]]
    return [
        Figure(key=f"ort_b{batch}_t{threads}_spin{int(spin)}",
               name=f"raw ORT, batch {batch}, intra_op={threads}, spin={spin}",
               value=rates[(threads, spin)][str(batch)], unit="steps/s",
               baseline_name="intra_op=1, no spin", baseline=base[str(batch)])
        for batch in BATCHES for threads, spin in OPTIONS[1:]
    ]


def _child(models_dir: Path, duration_s: float, threads: int, spin: bool) -> dict[str, float]:
    from service.model import Forecaster

    model = Forecaster.load(models_dir / "default", intra_op_threads=threads, spin=spin)
    out = {}
    for batch in BATCHES:
        x = np.zeros((batch, model.card.n_channels), np.float32)  # (batch, channels)
        state = model.initial_state(batch)
        for _ in range(10):
            model.step(x, state)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < duration_s:
            for _ in range(10):
                model.step(x, state)
            calls += 10
        out[str(batch)] = calls * batch / (time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--spin", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.models_dir, args.duration, args.threads, args.spin)))
        return
    print_figures(run(args.models_dir, args.duration))


if __name__ == "__main__":
    main()
