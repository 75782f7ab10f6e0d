"""The `Forecaster`: a recurrent cell that predicts the next reading's distribution per channel.

Given x_t and the state, it returns a location and a scale for x_{t+1} (a Gaussian, trained
by negative log-likelihood), in the units of x. The card's normalization lives in the module
as buffers, so the exported graph takes raw readings:

    z = clamp((x - mean) / std, -10, 10)   # the network works in z
    loc = (z + delta_z) * std + mean       # delta: the forecast is a change from the last value
    scale = (softplus(s_z) + 1e-3) * std

`forward` runs a whole sequence (training); `step` runs one reading (export, the server).
They are the same computation, so they give the same numbers (up to float rounding: `step`
writes a GRU or RNN cell out, the form ONNX Runtime runs fastest).

>>> model = Forecaster("gru", hidden_size=8, num_layers=1, channels=1)
>>> loc, scale, state = model.step(torch.zeros(2, 1), model.initial_state(batch=2))
>>> loc.shape, scale.shape, state[0].shape
(torch.Size([2, 1]), torch.Size([2, 1]), torch.Size([1, 2, 8]))
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Cell = Literal["gru", "lstm", "rnn"]
Nonlinearity = Literal["tanh", "relu"]
State = tuple[Tensor, ...]  # (h,) or, for LSTM, (h, c); each (num_layers, batch, hidden)

Z_CLIP = 10.0  # extreme readings must never reach the state as inf/NaN
SCALE_FLOOR = 1e-3  # keeps the scale strictly positive, in z units


class Forecaster(nn.Module):
    """One module for the three cells: `cell` in {"gru", "lstm", "rnn"}, F = `channels`."""

    mean: Tensor  # (channels,) buffer: the card's normalization
    std: Tensor  # (channels,) buffer

    def __init__(
        self,
        cell: Cell,
        hidden_size: int,
        num_layers: int,
        channels: int,
        nonlinearity: Nonlinearity = "tanh",
    ) -> None:
        super().__init__()
        if cell != "rnn" and nonlinearity != "tanh":
            raise ValueError(f"nonlinearity {nonlinearity!r} applies to the rnn cell only")
        self.cell: Cell = cell
        self.nonlinearity: Nonlinearity = nonlinearity
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.channels = channels
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))
        if cell == "gru":
            self.rnn: nn.RNNBase = nn.GRU(channels, hidden_size, num_layers)
        elif cell == "lstm":
            self.rnn = nn.LSTM(channels, hidden_size, num_layers)
        elif cell == "rnn":
            self.rnn = nn.RNN(channels, hidden_size, num_layers, nonlinearity=nonlinearity)
        else:
            raise ValueError(f"unknown cell {cell!r}; expected gru, lstm or rnn")
        self.head = nn.Linear(hidden_size, 2 * channels)
        # Start as the last-value forecaster with unit scale: training begins from a sane
        # baseline instead of spending its first epochs discovering one.
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.bias[channels:] = math.log(math.expm1(1.0 - SCALE_FLOOR))

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("h", "c") if self.cell == "lstm" else ("h",)

    def set_normalization(self, mean: Tensor, std: Tensor) -> None:
        """Store the card's per-channel mean and std (each (channels,)) in the module."""
        self.mean.copy_(mean)
        self.std.copy_(std)

    def initial_state(self, batch: int) -> State:
        """The zero state a new stream starts from, as the server does."""
        shape = (self.num_layers, batch, self.hidden_size)
        return tuple(torch.zeros(shape) for _ in self.state_names)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        """Run a sequence. x: (time, batch, channels) -> loc, scale (same shape), new state."""
        z = self._z(x)
        rnn_state = (state[0], state[1]) if self.cell == "lstm" else state[0]
        out, new_state = self.rnn(z, rnn_state)  # out: (time, batch, hidden)
        loc, scale = self._forecast(z, out)
        return loc, scale, tuple(new_state) if self.cell == "lstm" else (new_state,)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        """Advance one reading. x: (batch, channels) -> loc, scale (batch, channels), state.

        This is the graph the export writes. A GRU or RNN cell is written out here as matrix
        products and gates on the recurrent layer's own weights: ONNX Runtime steps a round of
        1,024 through that about 1.8 times (GRU) and 2.7 times (RNN) as fast as through its
        fused op, which the layer's call exports to. Its fused LSTM op steps rounds of 64 and
        1,024 a little faster than the LSTM written out, so an LSTM steps through the layer's
        call (`python -m benchmarks.cell_graph`)."""
        if self.cell == "lstm":
            return self.step_fused(x, state)
        z = self._z(x)
        h = z
        new_h = []
        for layer in range(self.num_layers):
            h = self._cell(layer, h, state[0][layer])
            new_h.append(h)
        loc, scale = self._forecast(z, h)
        return loc, scale, (torch.stack(new_h),)

    def step_fused(self, x: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        """`step` through the recurrent layer's own call, which exports to ONNX's fused
        GRU/LSTM/RNN op."""
        loc, scale, new_state = self(x.unsqueeze(0), state)
        return loc.squeeze(0), scale.squeeze(0), new_state

    def _cell(self, layer: int, x: Tensor, h: Tensor) -> Tensor:
        """One GRU or RNN layer's step, as `nn.GRU` and `nn.RNN` compute it (the GRU's gates in
        its order: reset, update, new): x (batch, in), h (batch, hidden) -> the new h."""
        w = {name: getattr(self.rnn, f"{name}_l{layer}")
             for name in ("weight_ih", "bias_ih", "weight_hh", "bias_hh")}
        gates_x = F.linear(x, w["weight_ih"], w["bias_ih"])
        gates_h = F.linear(h, w["weight_hh"], w["bias_hh"])
        if self.cell == "rnn":
            return (torch.tanh if self.nonlinearity == "tanh" else torch.relu)(gates_x + gates_h)
        reset_x, update_x, new_x = self._gates(gates_x)
        reset_h, update_h, new_h = self._gates(gates_h)
        reset = torch.sigmoid(reset_x + reset_h)
        update = torch.sigmoid(update_x + update_h)
        n = torch.tanh(new_x + reset * new_h)
        return n + update * (h - n)

    def _gates(self, gates: Tensor) -> list[Tensor]:
        """The GRU's three gates, side by side in `gates`. Sliced by Python ints, not
        chunk(): the exported graph keeps the hidden size a fixed size."""
        size = self.hidden_size
        return [gates[..., k * size : (k + 1) * size] for k in range(3)]

    def _z(self, x: Tensor) -> Tensor:
        """Readings in the network's units: normalized, and clipped so that no extreme reading
        reaches the state as inf or NaN."""
        return torch.clamp((x - self.mean) / self.std, -Z_CLIP, Z_CLIP)

    def _forecast(self, z: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """loc and scale in the readings' units, from z and the top layer's output."""
        head = self.head(out)
        # Slices by a Python int, not chunk(): the exported graph keeps F as a fixed size.
        delta_z, s_z = head[..., : self.channels], head[..., self.channels :]
        loc = (z + delta_z) * self.std + self.mean
        scale = (F.softplus(s_z) + SCALE_FLOOR) * self.std
        return loc, scale

    def nll(self, loc: Tensor, scale: Tensor, target: Tensor) -> Tensor:
        """Gaussian negative log-likelihood per reading, in z units (comparable across data).

        Shapes (..., channels) -> (...): summed over channels, one number per reading.
        """
        std = self.std
        u = (target - loc) / scale
        per_channel = 0.5 * u * u + torch.log(scale / std) + 0.5 * math.log(2 * math.pi)
        return per_channel.sum(dim=-1)


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters, the budget `memory_horizon` holds equal across cells."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
