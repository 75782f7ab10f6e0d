"""The `Forecaster`: a recurrent cell that predicts the next reading's distribution per channel.

Given x_t and the state, it returns a location and a scale for x_{t+1} (a Gaussian, trained
by negative log-likelihood), in the units of x. The card's normalization lives in the module
as buffers, so the exported graph takes raw readings:

    z = clamp((x - mean) / std, -10, 10)   # the network works in z
    loc = (z + delta_z) * std + mean       # delta: the forecast is a change from the last value
    scale = (softplus(s_z) + 1e-3) * std

`forward` runs a whole sequence (training); `step` runs one reading (export, the server).
They are the same computation, so they give the same numbers.

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
        z = torch.clamp((x - self.mean) / self.std, -Z_CLIP, Z_CLIP)
        rnn_state = (state[0], state[1]) if self.cell == "lstm" else state[0]
        out, new_state = self.rnn(z, rnn_state)  # out: (time, batch, hidden)
        head = self.head(out)
        # Slices by a Python int, not chunk(): the exported graph keeps F as a fixed size.
        delta_z, s_z = head[..., : self.channels], head[..., self.channels :]
        loc = (z + delta_z) * self.std + self.mean
        scale = (F.softplus(s_z) + SCALE_FLOOR) * self.std
        return loc, scale, tuple(new_state) if self.cell == "lstm" else (new_state,)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        """Advance one reading. x: (batch, channels) -> loc, scale (batch, channels), state."""
        loc, scale, new_state = self(x.unsqueeze(0), state)
        return loc.squeeze(0), scale.squeeze(0), new_state

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
