"""Per-stream online standardization, so one model serves streams of any level and unit.

Each stream keeps a count, a mean and a variance per channel. The first `warmup_n` readings
are averaged exactly (Welford); after that the estimates track slowly (exponential, weight
`alpha`), with each reading clipped to `clip_sigma` standard deviations first so one outlier
cannot blow the scale up. A reading is standardized with the estimates *before* it is
included. Training runs `normalize_series`, the same code, so the model sees offline exactly
what the server feeds it online.

>>> normalize_series(np.array([[1.0], [3.0], [5.0]]), NormalizerParams())[:, 0].round(3)
array([ 0., 10.,  3.], dtype=float32)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INPUT_CLIP = 10.0  # the model never sees a standardized value beyond this


@dataclass(frozen=True)
class NormalizerParams:
    warmup_n: int = 100
    alpha: float = 0.002
    clip_sigma: float = 5.0


def std_of(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Standard deviation with a floor, so a flat stream does not divide by zero."""
    floor = 1e-6 + 1e-3 * np.abs(mean)
    return np.sqrt(np.maximum(var, floor * floor))


def standardize(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """(x - mean) / std, clipped to +-INPUT_CLIP. Arrays (batch, channels)."""
    u = (x - mean) / std_of(mean, var)
    return np.clip(u, -INPUT_CLIP, INPUT_CLIP)


def update(
    count: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    x: np.ndarray,
    observed: np.ndarray,
    params: NormalizerParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold one reading per row into the estimates; returns new (count, mean, var).

    count: (batch,) readings folded so far; mean, var, x, observed: (batch, channels).
    Channels not `observed` (missing readings) leave their estimates unchanged.
    """
    warming = (count < params.warmup_n)[:, None]
    n = (count + 1).astype(np.float64)[:, None]
    limit = params.clip_sigma * std_of(mean, var)
    x_tracked = np.where(warming, x, np.clip(x, mean - limit, mean + limit))
    delta = x_tracked - mean
    weight = np.where(warming, 1.0 / n, params.alpha)
    new_mean = mean + weight * delta
    new_var = np.where(
        warming,
        var + (delta * (x_tracked - new_mean) - var) / n,
        (1.0 - params.alpha) * (var + params.alpha * delta * delta),
    )
    new_mean = np.where(observed, new_mean, mean)
    new_var = np.where(observed, new_var, var)
    return count + 1, new_mean, new_var


def step(
    count: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    x: np.ndarray,
    observed: np.ndarray,
    params: NormalizerParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardize one reading per row, then fold it in: returns (u, count, mean, var).

    A stream's first reading defines its level, so its own standardized value is 0.
    """
    mean = np.where((count == 0)[:, None] & observed, x, mean)
    u = standardize(x, mean, var)
    return (u, *update(count, mean, var, x, observed, params))


def normalize_series(values: np.ndarray, params: NormalizerParams) -> np.ndarray:
    """Standardize one stream's readings (time, channels) as the server would, in order."""
    values = np.asarray(values, dtype=np.float64)
    channels = values.shape[1]
    count = np.zeros(1, np.int64)
    mean = np.zeros((1, channels))
    var = np.zeros((1, channels))
    observed = np.ones((1, channels), bool)
    out = np.empty(values.shape, np.float32)  # (time, channels)
    for t in range(values.shape[0]):
        u, count, mean, var = step(count, mean, var, values[t : t + 1], observed, params)
        out[t] = u[0]
    return out
