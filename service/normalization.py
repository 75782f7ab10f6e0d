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

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np

from service.compiled import B1, F8, I8, array, inline, kernel

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


# `std_of` of one value, for compiled code (here and `service.likelihood`).
std_of_one = cast(Callable[[float, float], float], inline(std_of))


def step(
    count: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    x: np.ndarray,
    observed: np.ndarray,
    params: NormalizerParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardize one reading per row, then fold it in: returns (u, count, mean, var).

    count: (batch,) readings folded so far; mean, var, x, observed: (batch, channels).
    A stream's first reading defines its level, so its own standardized value is 0; channels
    not `observed` (missing readings) leave their estimates unchanged.
    """
    u, new_mean, new_var = np.empty(x.shape), np.empty(x.shape), np.empty(x.shape)
    _step_rows(
        np.asarray(count, np.int64), np.asarray(mean, np.float64), np.asarray(var, np.float64),
        np.asarray(x, np.float64), np.asarray(observed, np.bool_),
        params.warmup_n, params.alpha, params.clip_sigma, u, new_mean, new_var,
    )
    return u, count + 1, new_mean, new_var


@inline
def step_one(
    count: int, mean: np.ndarray, var: np.ndarray, x: np.ndarray, observed: np.ndarray,
    warmup_n: int, alpha: float, clip_sigma: float,
    u: np.ndarray, new_mean: np.ndarray, new_var: np.ndarray,  # out
) -> None:
    """`step` of one row (channels,), for compiled code (here and `service.passes`)."""
    warming = count < warmup_n
    n = float(count + 1)
    for c in range(x.shape[0]):
        value, level, spread = x[c], mean[c], var[c]
        if count == 0 and observed[c]:
            level = value
        std = std_of_one(level, spread)
        u[c] = np.minimum(np.maximum((value - level) / std, -INPUT_CLIP), INPUT_CLIP)
        if not observed[c]:
            new_mean[c], new_var[c] = level, spread
        elif warming:  # exact (Welford)
            mean_now = level + (1.0 / n) * (value - level)
            new_mean[c] = mean_now
            new_var[c] = spread + ((value - level) * (value - mean_now) - spread) / n
        else:  # tracking, the reading clipped first so that one outlier cannot blow it up
            limit = clip_sigma * std
            tracked = np.minimum(np.maximum(value, level - limit), level + limit)
            delta = tracked - level
            new_mean[c] = level + alpha * delta
            new_var[c] = (1.0 - alpha) * (spread + alpha * delta * delta)


@kernel(
    array(I8, 1), array(F8, 2), array(F8, 2), array(F8, 2), array(B1, 2), I8, F8, F8,
    array(F8, 2), array(F8, 2), array(F8, 2),
)
def _step_rows(
    count: np.ndarray, mean: np.ndarray, var: np.ndarray, x: np.ndarray, observed: np.ndarray,
    warmup_n: int, alpha: float, clip_sigma: float,
    u: np.ndarray, new_mean: np.ndarray, new_var: np.ndarray,  # out
) -> None:
    for r in range(x.shape[0]):
        step_one(count[r], mean[r], var[r], x[r], observed[r], warmup_n, alpha, clip_sigma,
                 u[r], new_mean[r], new_var[r])


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
