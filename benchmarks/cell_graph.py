"""The exported cell: written out as matrix products and gates, vs ONNX Runtime's fused op.

`training.model.Forecaster.step`, which the export writes, spells a GRU or RNN cell out (two
matrix products and the gates); the layer's own call (`nn.GRU`, `nn.LSTM`, `nn.RNN`) exports
to ONNX's fused GRU/LSTM/RNN op instead, and that is how an LSTM is exported. For each cell,
both graphs of the same weights (the bundled model's shape: one layer of 64, one channel):
raw ONNX Runtime steps/s at a round of one, of 64 and a full one (1,024), one thread pinned
to the server core, as the server runs it. Needs the training extra (PyTorch, to export).

    python -m benchmarks.cell_graph [--duration 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import PYTHON, ROOT, SERVER_CPU, Figure, print_figures

CELLS = ("gru", "lstm", "rnn")
BATCHES = (1, 64, 1024)
HIDDEN = 64


def run(duration_s: float = 1.0) -> list[Figure]:
    command = ["taskset", "-c", str(SERVER_CPU), PYTHON, "-m", "benchmarks.cell_graph",
               "--child", "--duration", str(duration_s)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=120 + 20 * duration_s)
    rates = json.loads(done.stdout.strip().splitlines()[-1])
    return [
        Figure(key=f"cell_graph_{cell}_b{batch}",
               name=f"raw ORT, {cell.upper()} written out, batch {batch}",
               value=rates[cell]["written"][str(batch)], unit="steps/s",
               baseline_name="fused ONNX op, same weights",
               baseline=rates[cell]["fused"][str(batch)])
        for cell in CELLS for batch in BATCHES
    ]


def _child(duration_s: float) -> dict[str, dict[str, dict[str, float]]]:
    import torch
    import torch.nn.functional as F

    from service.model import session_of
    from training.export import export_onnx
    from training.model import Forecaster, State

    class WrittenLSTM(Forecaster):
        """An LSTM of one layer, its step written out (gates in `nn.LSTM`'s order)."""

        def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor, State]:
            z, rnn, size = self._z(x), self.rnn, HIDDEN
            gates = (F.linear(z, rnn.weight_ih_l0, rnn.bias_ih_l0)
                     + F.linear(state[0][0], rnn.weight_hh_l0, rnn.bias_hh_l0))
            i, f, g, o = (gates[..., k * size : (k + 1) * size] for k in range(4))
            c = torch.sigmoid(f) * state[1][0] + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            loc, scale = self._forecast(z, h)
            return loc, scale, (h.unsqueeze(0), c.unsqueeze(0))

    out: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cell in CELLS:
            torch.manual_seed(0)
            model = (WrittenLSTM if cell == "lstm" else Forecaster)(
                cell, hidden_size=HIDDEN, num_layers=1, channels=1
            )
            out[cell] = {}
            for name, fused in (("written", False), ("fused", True)):
                path = Path(tmp) / f"{cell}-{name}.onnx"
                export_onnx(model, path, fused=fused)
                out[cell][name] = _rates(session_of(path), model.state_names, duration_s)
    return out


def _rates(session: object, state_names: tuple[str, ...], duration_s: float) -> dict[str, float]:
    outputs = [o.name for o in session.get_outputs()]  # type: ignore[attr-defined]

    def step(x: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        feeds = {"x": x, **dict(zip(state_names, state, strict=True))}
        return session.run(outputs, feeds)[2:]  # type: ignore[attr-defined,no-any-return]

    rng = np.random.default_rng(0)
    rates = {}
    for batch in BATCHES:
        x = rng.normal(size=(batch, 1)).astype(np.float32)
        state = [np.zeros((1, batch, HIDDEN), np.float32) for _ in state_names]
        for _ in range(10):
            state = step(x, state)
        calls, cpu = 0, time.process_time()
        while (elapsed := time.process_time() - cpu) < duration_s:
            for _ in range(10):
                state = step(x, state)
            calls += 10
        rates[str(batch)] = calls * batch / elapsed
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.duration)))
        return
    print_figures(run(args.duration))


if __name__ == "__main__":
    main()
