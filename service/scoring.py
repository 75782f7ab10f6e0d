"""Forecast error -> surprise, and score -> alert open/close, one compiled pass over a batch.

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

import math
from dataclasses import dataclass

import numpy as np

from service.compiled import B1, F8, I4, I8, U4, array, inline, kernel
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
    table = _table(calibration)
    flat = [_log_tail(a, *table) for a in np.asarray(abs_z, np.float64).ravel().tolist()]
    return np.array(flat).reshape(np.shape(abs_z))


def surprise(z: np.ndarray, observed: np.ndarray, calibration: Calibration) -> np.ndarray:
    """Per-reading surprise from standardized errors z (batch, channels); 0 if none observed."""
    out = np.empty(len(z))
    _surprise_rows(
        np.asarray(z, np.float64), np.asarray(observed, np.bool_), *_table(calibration), out
    )
    return out


def _table(calibration: Calibration) -> tuple[np.ndarray, np.ndarray, float]:
    """The calibration as the compiled code takes it: its points, and the slope beyond them."""
    zs, logs = np.asarray(calibration.abs_z), np.asarray(calibration.log_tail)
    slope = min((logs[-1] - logs[-2]) / (zs[-1] - zs[-2]), -1e-3)  # a tail must fall
    return zs, logs, float(slope)


@inline
def _log_tail(abs_z: float, zs: np.ndarray, logs: np.ndarray, slope: float) -> float:
    last = zs.shape[0] - 1
    if abs_z > zs[last]:
        return float(logs[last] + slope * (abs_z - zs[last]))
    # np.interp(abs_z, zs, logs), step for step (so bit for bit): numba's np.interp costs
    # ~100 ns on one value, this ~10.
    if abs_z != abs_z:  # NaN
        return abs_z
    if abs_z >= zs[last]:
        value = float(logs[last])
    elif abs_z < zs[0]:
        value = float(logs[0])
    else:
        lo, hi = 0, last  # zs[lo] <= abs_z < zs[hi]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if zs[mid] <= abs_z:
                lo = mid
            else:
                hi = mid
        if abs_z == zs[lo]:
            value = float(logs[lo])
        else:
            rise = (logs[lo + 1] - logs[lo]) / (zs[lo + 1] - zs[lo])
            value = rise * (abs_z - zs[lo]) + logs[lo]
    return min(value, 0.0)


@kernel(array(F8, 2), array(B1, 2), array(F8, 1), array(F8, 1), F8, array(F8, 1))
def _surprise_rows(
    z: np.ndarray, observed: np.ndarray, zs: np.ndarray, logs: np.ndarray, slope: float,
    out: np.ndarray,
) -> None:
    for r in range(z.shape[0]):
        # The tail falls as |z| grows: the least of the channels' tails is the farthest's.
        farthest, n_observed = 0.0, 0
        for c in range(z.shape[1]):
            if observed[r, c]:
                farthest = np.maximum(farthest, abs(z[r, c]))
                n_observed += 1
        if n_observed == 0:
            out[r] = 0.0
        else:
            least = _log_tail(farthest, zs, logs, slope)
            out[r] = np.maximum(0.0, -least - math.log(n_observed))


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
    n = len(score_value)
    update = AlertUpdate(
        opened=np.empty(n, np.bool_),
        closed=np.empty(n, np.bool_),
        open_hits=np.array(open_hits, np.uint32),
        hold_hits=np.array(hold_hits, np.uint32),
        is_open=np.array(is_open, np.bool_),
        cooldown=np.array(cooldown, np.int32),
    )
    _alert_rows(
        np.asarray(score_value, np.float64), np.asarray(threshold, np.float64),
        np.asarray(may_alert, np.bool_), update.opened, update.closed, update.open_hits,
        update.hold_hits, update.is_open, update.cooldown,
        params.k, params.m, params.close_factor, params.cooldown,
    )
    return update


@inline
def alert_one(
    score: float, threshold: float, may_alert: bool, open_hits: int, hold_hits: int,
    is_open: bool, cooldown: int, k: int, m: int, close_factor: float, quiet_for: int,
) -> tuple[bool, bool, int, int, bool, int]:
    """The alert rule for one reading, for compiled code (here and `service.passes`):
    (opened, closed, open_hits, hold_hits, is_open, cooldown) after it."""
    mask = (1 << m) - 1
    close_at = 1.0 - min(1.0, (1.0 - threshold) * close_factor)
    above = may_alert and score >= threshold
    holding = may_alert and score >= close_at
    hits = ((np.int64(open_hits) << 1) | above) & mask  # bit i: i readings back
    held = ((np.int64(hold_hits) << 1) | holding) & mask
    n_above, rest = 0, hits
    while rest:
        rest &= rest - 1
        n_above += 1
    opened = not is_open and cooldown <= 0 and n_above >= k and above
    closed = is_open and held == 0
    now_open = (is_open or opened) and not closed
    return (bool(opened), bool(closed), int(hits), int(held), bool(now_open),
            quiet_for if closed else max(cooldown - 1, 0))


@kernel(
    array(F8, 1), array(F8, 1), array(B1, 1), array(B1, 1), array(B1, 1), array(U4, 1),
    array(U4, 1), array(B1, 1), array(I4, 1), I8, I8, F8, I8,
)
def _alert_rows(
    score: np.ndarray, threshold: np.ndarray, may_alert: np.ndarray,
    opened: np.ndarray, closed: np.ndarray,  # out
    open_hits: np.ndarray, hold_hits: np.ndarray, is_open: np.ndarray,  # read, overwritten
    cooldown: np.ndarray,  # read, overwritten
    k: int, m: int, close_factor: float, quiet_for: int,
) -> None:
    for r in range(score.shape[0]):
        opened[r], closed[r], open_hits[r], hold_hits[r], is_open[r], cooldown[r] = alert_one(
            score[r], threshold[r], may_alert[r], open_hits[r], hold_hits[r], is_open[r],
            cooldown[r], k, m, close_factor, quiet_for,
        )
