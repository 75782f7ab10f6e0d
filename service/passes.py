"""A round's compiled passes over the arena's records, in place (numba).

The stepper reads and writes each stream's record where it lies, row by row, instead of
copying the round's records out and back and working field by field on the copy: on 100,000
streams a round then touches each record's few cache lines once or twice, not once per field.

`records` is the arena's `compiled` view (its record dtype as numba takes it), `states` its
recurrent states as (slots, states, layers, hidden) float32; a row's stream is `slots[row]`.
The record's layout depends on the model, so each pass is compiled at its first call for that
layout (a stepper calls them all once when it is made) and cached on disk as
`service.compiled`'s passes are.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from service.compiled import PREFETCH_AHEAD, float32_row, kernel, prefetch_row
from service.normalization import std_of_one, step_one
from service.results import ANOMALY, CLOSED, GAP, OPENED, SCORED, WARMING
from service.scoring import alert_one

FRESH, DUPLICATE, LATE = 0, 1, 2
_EXPONENT = np.uint32(0x7F800000)  # a float32's exponent bits

@kernel()
def check(
    records: np.ndarray, slots: np.ndarray, ts: np.ndarray, gap_factor: float,
    status: np.ndarray, gap: np.ndarray,  # out
) -> tuple[int, int]:
    """Each reading's time against its stream's last: FRESH, DUPLICATE (the same time) or
    LATE (older); and whether it comes after a gap (more than `gap_factor` typical intervals).
    Returns how many are fresh and how many come after a gap."""
    fresh = gaps = 0
    for r in range(slots.shape[0]):
        rec = records[slots[r]]
        last = rec.last_ts
        status[r] = DUPLICATE if ts[r] == last else LATE if ts[r] < last else FRESH
        gap[r] = rec.count > 1 and ts[r] - last > gap_factor * rec.interval
        fresh += status[r] == FRESH
        gaps += gap[r]
    return fresh, gaps


@kernel()
def gather(
    records: np.ndarray, states: np.ndarray, slots: np.ndarray, x: np.ndarray,
    per_stream: bool, warmup_n: int, alpha: float, clip_sigma: float,
    u: np.ndarray, state: np.ndarray,  # out: the model's input, (batch, channels) float32, and
    # its state, (states, layers, batch, hidden) float32
    loc: np.ndarray, scale: np.ndarray, z: np.ndarray,  # out: the forecast x is judged by
    observed: np.ndarray, scorable: np.ndarray,  # out
    judged: np.ndarray, warming: np.ndarray, may_alert: np.ndarray,  # out
    count: np.ndarray, mean: np.ndarray, var: np.ndarray, std: np.ndarray,  # out: normalization
) -> None:
    """What the model and the scorer need of each fresh reading, read from its record.

    A missing channel is filled with the forecast of it (with the stream's mean before the
    first forecast); each reading is standardized with its stream's statistics before they
    take it in (`service.normalization`), or passed as it is when the model normalizes.
    A reading is scorable if it has a forecast and a channel observed (each such channel is
    judged), and may alert if scorable past its stream's warm-up.
    """
    channels, n = x.shape[1], slots.shape[0]
    filled = np.empty(channels)
    for r in range(n):
        if r + PREFETCH_AHEAD < n:
            prefetch_row(records, slots[r + PREFETCH_AHEAD])
        q = slots[r]
        rec = records[q]
        has_forecast = rec.count > 0
        any_observed = False
        for c in range(channels):
            seen = not np.isnan(x[r, c])
            observed[r, c] = seen
            any_observed = any_observed or seen
            loc[r, c], scale[r, c] = rec.next_loc[c], rec.next_scale[c]
            z[r, c] = (x[r, c] - loc[r, c]) / scale[r, c] if seen and has_forecast else 0.0
            filled[c] = x[r, c] if seen else loc[r, c] if has_forecast else rec.mean[c]
        scorable[r] = has_forecast and any_observed
        for c in range(channels):
            judged[r, c] = observed[r, c] and scorable[r]
        count[r] = rec.count + 1
        warming[r] = count[r] <= warmup_n
        may_alert[r] = scorable[r] and not warming[r]
        if per_stream:
            step_one(rec.count, rec.mean, rec.var, filled, observed[r], warmup_n, alpha,
                     clip_sigma, u[r], mean[r], var[r])
            for c in range(channels):
                std[r, c] = std_of_one(mean[r, c], var[r, c])
        else:
            for c in range(channels):
                u[r, c] = filled[c]
                mean[r, c], var[r, c], std[r, c] = rec.mean[c], rec.var[c], 1.0
        row, hidden = float32_row(states, q), states.shape[3]
        for k in range(states.shape[1]):
            for layer in range(states.shape[2]):
                start = (k * states.shape[2] + layer) * hidden
                for h in range(hidden):
                    state[k, layer, r, h] = row[start + h]


@kernel()
def forecasts(
    loc_u: np.ndarray, scale_u: np.ndarray, new_state: tuple[np.ndarray, ...],
    std: np.ndarray, mean: np.ndarray, per_stream: bool,
    next_loc: np.ndarray, next_scale: np.ndarray, finite: np.ndarray,  # out
) -> int:
    """The model's standardized forecasts back in each stream's units; whether the forecast
    and the new state are all finite (a row that is not must not be applied). Returns how
    many rows are not."""
    poisoned = 0
    for r in range(loc_u.shape[0]):
        ok = True
        for c in range(loc_u.shape[1]):
            next_loc[r, c] = loc_u[r, c] * std[r, c] + (mean[r, c] if per_stream else 0.0)
            next_scale[r, c] = scale_u[r, c] * std[r, c]
            ok = ok and np.isfinite(next_loc[r, c]) and np.isfinite(next_scale[r, c])
        # A float32 is not finite if its exponent bits are all ones: the largest exponent of
        # the row's state (an integer max, which the CPU takes many lanes at a time).
        exponents = np.uint32(0)
        for s in range(len(new_state)):
            bits = new_state[s].view(np.uint32)
            for layer in range(bits.shape[0]):
                for h in range(bits.shape[2]):
                    exponents = max(exponents, bits[layer, r, h] & _EXPONENT)
        ok = ok and exponents != _EXPONENT
        finite[r] = ok
        poisoned += not ok
    return poisoned


@kernel()
def put(
    records: np.ndarray, states: np.ndarray, last_seen: np.ndarray, slots: np.ndarray,
    ts: np.ndarray, seen_at: float, new_state: tuple[np.ndarray, ...],
    count: np.ndarray, mean: np.ndarray, var: np.ndarray, loc: np.ndarray, scale: np.ndarray,
    next_loc: np.ndarray, next_scale: np.ndarray, score: np.ndarray,
    scorable: np.ndarray, may_alert: np.ndarray, warming: np.ndarray, gap: np.ndarray,
    k: int, m: int, close_factor: float, quiet_for: int, interval_alpha: float,
    opened: np.ndarray, closed: np.ndarray, is_open: np.ndarray,  # out: the alert rule's
) -> int:
    """Fold each stepped reading into its record: the model's new state, the normalization,
    the forecasts, the alert rule (`service.scoring`), the typical interval, the flags.
    Returns how many rows opened, closed or are inside an alert."""
    alerting = 0
    for r in range(slots.shape[0]):
        q = slots[r]
        rec = records[q]
        threshold = rec.threshold
        opened[r], closed[r], rec.open_hits, rec.hold_hits, is_open[r], rec.cooldown = alert_one(
            score[r], threshold, may_alert[r], rec.open_hits, rec.hold_hits, rec.is_open,
            rec.cooldown, k, m, close_factor, quiet_for,
        )
        rec.is_open = is_open[r]
        anomaly = may_alert[r] and score[r] >= threshold
        dt, interval = ts[r] - rec.last_ts, rec.interval
        if not (gap[r] or np.isnan(dt)):  # a gap is not the new normal
            rec.interval = dt if np.isnan(interval) else interval + interval_alpha * (dt - interval)
        row, hidden = float32_row(states, q), states.shape[3]
        for s in range(len(new_state)):
            for layer in range(states.shape[2]):
                start = (s * states.shape[2] + layer) * hidden
                for h in range(hidden):
                    row[start + h] = new_state[s][layer, r, h]
        rec.count = count[r]
        for c in range(mean.shape[1]):
            rec.mean[c], rec.var[c] = mean[r, c], var[r, c]
            rec.last_loc[c], rec.last_scale[c] = loc[r, c], scale[r, c]
            rec.next_loc[c], rec.next_scale[c] = next_loc[r, c], next_scale[r, c]
        rec.last_ts = ts[r]
        rec.last_score = score[r]
        rec.seen += 1
        rec.last_flags = (
            (ANOMALY if anomaly else 0) | (WARMING if warming[r] else 0) | (GAP if gap[r] else 0)
            | (OPENED if opened[r] else 0) | (CLOSED if closed[r] else 0)
            | (SCORED if scorable[r] else 0)
        )
        last_seen[q] = seen_at
        alerting += opened[r] or closed[r] or is_open[r]
    return alerting


@kernel()
def results(records: np.ndarray, slots: np.ndarray, out: np.ndarray) -> int:
    """The fields a reading's result reads (`RESULT_FIELDS`) of each row's record. Returns
    how many rows' readings opened or closed an alert."""
    events = 0
    for r in range(slots.shape[0]):
        rec, res = records[slots[r]], out[r]
        for c in range(rec.last_loc.shape[0]):
            res.last_loc[c], res.last_scale[c] = rec.last_loc[c], rec.last_scale[c]
        res.last_score, res.threshold, res.last_flags = rec.last_score, rec.threshold, \
            rec.last_flags
        events += (rec.last_flags & (OPENED | CLOSED)) != 0
    return events


RESULT_FIELDS = ("last_loc", "last_scale", "last_score", "threshold", "last_flags")


def result_dtype(record_dtype: np.dtype) -> np.dtype:
    """The packed dtype of `results`' output, for records of `record_dtype`."""
    fields = cast(dict[str, Any], record_dtype.fields)
    return np.dtype([(name, fields[name][0]) for name in RESULT_FIELDS])
