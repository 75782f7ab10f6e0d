"""Forecast error -> surprise, and score -> alert open/close, vectorized over a batch.

1. Each channel's standardized error |z| = |x - loc| / scale is turned into a tail
   probability with the card's calibration table (measured on held-out normal data).
2. The reading's surprise is s = -ln(min(1, F * min_c p_c)) (Bonferroni over its observed
   channels); under normal behaviour s is roughly Exp(1).
3. `service.likelihood` turns a stream's surprises into its score in [0, 1].
4. The alert rule opens when the score is at or above the threshold for k of the last m
   readings, closes once none of the last m reached the (lower) closing threshold, and then
   keeps quiet for a cooldown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.model import Calibration

_TAIL_POINTS = np.concatenate([[1.0], np.logspace(-0.5, -6, 23)])  # probabilities in the table


def fit_calibration(abs_z: np.ndarray) -> Calibration:
    """Tabulate ln P(|E| >= z) from held-out |standardized errors| of normal readings."""
    abs_z = np.sort(np.abs(np.asarray(abs_z, np.float64)))
    n = abs_z.size
    if n < 100:
        raise ValueError(f"need at least 100 held-out errors to calibrate, got {n}")
    tails = _TAIL_POINTS[_TAIL_POINTS >= 10.0 / n]  # only tails the data can measure
    z_points = np.quantile(abs_z, 1.0 - tails)
    z_points[0] = 0.0
    keep = np.concatenate([[True], np.diff(z_points) > 1e-9])
    return Calibration(abs_z=z_points[keep].tolist(), log_tail=np.log(tails[keep]).tolist())


def log_tail(abs_z: np.ndarray, calibration: Calibration) -> np.ndarray:
    """ln P(|E| >= abs_z): interpolated in the table, extended linearly beyond its end."""
    zs = np.asarray(calibration.abs_z)
    logs = np.asarray(calibration.log_tail)
    slope = min((logs[-1] - logs[-2]) / (zs[-1] - zs[-2]), -1e-3)  # a tail must fall
    inside = np.interp(abs_z, zs, logs)
    beyond = logs[-1] + slope * (abs_z - zs[-1])
    return np.where(abs_z > zs[-1], beyond, np.minimum(inside, 0.0))


def surprise(z: np.ndarray, observed: np.ndarray, calibration: Calibration) -> np.ndarray:
    """Per-reading surprise from standardized errors z (batch, channels); 0 if none observed."""
    channel_log_p = np.where(observed, log_tail(np.abs(z), calibration), 0.0)
    n_observed = np.maximum(observed.sum(axis=1), 1)
    return np.maximum(0.0, -channel_log_p.min(axis=1) - np.log(n_observed))


def threshold_for_false_alarm_rate(normal_scores: np.ndarray, rate: float) -> float:
    """The score threshold that normal readings reach at most `rate` of the time."""
    normal_scores = np.asarray(normal_scores, np.float64)
    if normal_scores.size < 1.0 / rate:
        raise ValueError(f"need >= {int(1 / rate)} normal scores for a rate of {rate}")
    return float(np.quantile(normal_scores, 1.0 - rate, method="higher"))


@dataclass(frozen=True)
class AlertParams:
    k: int = 1
    m: int = 3
    close_factor: float = 10.0  # closing threshold: tail probability this many times larger
    cooldown: int = 100  # readings after a close during which no alert opens


@dataclass(frozen=True)
class AlertUpdate:
    opened: np.ndarray  # (batch,) bool
    closed: np.ndarray  # (batch,) bool
    open_hits: np.ndarray  # (batch,) uint32: bit i = reading i back reached the threshold
    hold_hits: np.ndarray  # (batch,) uint32: same for the closing threshold
    is_open: np.ndarray  # (batch,) bool
    cooldown: np.ndarray  # (batch,) int32 readings of quiet left


def update_alerts(
    score_value: np.ndarray,
    threshold: np.ndarray,
    may_alert: np.ndarray,
    open_hits: np.ndarray,
    hold_hits: np.ndarray,
    is_open: np.ndarray,
    cooldown: np.ndarray,
    params: AlertParams,
) -> AlertUpdate:
    """Advance every row's alert rule by one reading; threshold is per row (batch,)."""
    mask = np.uint32((1 << params.m) - 1)
    close_at = 1.0 - np.minimum(1.0, (1.0 - threshold) * params.close_factor)
    above = may_alert & (score_value >= threshold)
    holding = may_alert & (score_value >= close_at)
    open_hits = ((open_hits << np.uint32(1)) | above.astype(np.uint32)) & mask
    hold_hits = ((hold_hits << np.uint32(1)) | holding.astype(np.uint32)) & mask
    n_above = np.bitwise_count(open_hits)
    quiet = cooldown <= 0
    opened = ~is_open & quiet & (n_above >= params.k) & above
    closed = is_open & (hold_hits == 0)
    new_cooldown = np.where(closed, params.cooldown, np.maximum(cooldown - 1, 0))
    return AlertUpdate(
        opened=opened,
        closed=closed,
        open_hits=open_hits,
        hold_hits=hold_hits,
        is_open=(is_open | opened) & ~closed,
        cooldown=new_cooldown.astype(np.int32),
    )
