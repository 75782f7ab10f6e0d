"""Forecast error -> anomaly score in [0, 1] -> alert open/close, vectorized over a batch.

The score means the same thing on every stream: one minus a tail probability.

1. Each channel's standardized error |z| = |x - loc| / scale is turned into a tail
   probability with the card's calibration table (measured on held-out normal data).
2. The reading's surprise is s = -ln(min(1, F * min_c p_c)) (Bonferroni over its observed
   channels); under normal behaviour s is roughly Exp(1).
3. s is divided by the stream's own long-run surprise level (a slow average), so a stream the
   model forecasts less well is judged against itself, in the spirit of an anomaly likelihood.
4. Evidence is read at two horizons: this reading alone (p = e^-s) and the last `window`
   readings together (sum of s, each capped, ~ Gamma(window); p = its survival function).
   The score is
   1 - min(1, 2 * min(p_now, p_window)).

The alert rule opens when the score is at or above the threshold for k of the last m readings,
closes once none of the last m reached the (lower) closing threshold, and then keeps quiet for
a cooldown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.model import Calibration

_TAIL_POINTS = np.concatenate([[1.0], np.logspace(-0.5, -6, 23)])  # probabilities in the table
_LEVEL_CAP = 10.0  # one reading moves the long-run level by at most this much surprise
# A reading adds at most this to the pooled window, so a lone spike (judged on its own at
# full weight) does not keep its neighbours flagged for a whole window.
_POOL_CAP = 8.0


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


def _gamma_log_sf(x: np.ndarray, shape: int) -> np.ndarray:
    """ln P(Gamma(shape, 1) >= x) for integer shape: -x + ln sum_{k<shape} x^k / k!."""
    x = np.maximum(x, 1e-12)
    k = np.arange(shape)
    log_terms = k * np.log(x)[:, None] - np.array([math.lgamma(i + 1) for i in k])
    peak = log_terms.max(axis=1)
    return -x + peak + np.log(np.exp(log_terms - peak[:, None]).sum(axis=1))


@dataclass(frozen=True)
class ScoringParams:
    window: int = 6
    level_alpha: float = 0.002
    level_min: float = 0.5
    level_max: float = 10.0


@dataclass(frozen=True)
class ScoreUpdate:
    score: np.ndarray  # (batch,)
    history: np.ndarray  # (batch, window) the last `window` relative surprises
    level: np.ndarray  # (batch,)


def score(
    s: np.ndarray,
    history: np.ndarray,
    level: np.ndarray,
    scorable: np.ndarray,
    params: ScoringParams,
) -> ScoreUpdate:
    """Score surprises s (batch,) against each stream's history and level.

    Rows not `scorable` (no forecast yet, nothing observed) score 0 and leave history and
    level unchanged.
    """
    relative = s / level
    pooled = np.minimum(relative, _POOL_CAP)
    new_history = np.concatenate([history[:, 1:], pooled[:, None]], axis=1)
    log_p_now = -relative
    log_p_window = _gamma_log_sf(new_history.sum(axis=1), params.window)
    log_p = np.minimum(0.0, np.minimum(log_p_now, log_p_window) + math.log(2.0))
    value = np.where(scorable, 0.0 - np.expm1(log_p), 0.0)
    new_level = level + params.level_alpha * (np.minimum(s, _LEVEL_CAP) - level)
    new_level = np.clip(new_level, params.level_min, params.level_max)
    return ScoreUpdate(
        score=value,
        history=np.where(scorable[:, None], new_history, history),
        level=np.where(scorable, new_level, level),
    )


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
    cooldown: int = 10  # readings after a close during which no alert opens


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
