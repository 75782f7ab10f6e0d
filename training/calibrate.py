"""What the card tells the server about errors: the calibration table, the threshold, metrics.

The table maps a standardized error |x - loc| / scale to its tail probability on held-out
normal readings (`service.scoring.fit_calibration`, the server's own code). The threshold is
the scorer's default, or the one held-out normal readings reach at a chosen false-alarm rate;
either way the streams are replayed through the server's engine offline and the scores of
held-out normal readings are read (`calibrate_threshold`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.model import Calibration
from service.model import Forecaster as ServedForecaster
from service.replay import score_series
from service.scoring import fit_calibration, threshold_for_false_alarm_rate
from service.series import Stream
from service.settings import Settings
from training.dataset import Sequences
from training.model import Forecaster
from training.train import forecast

# The score is a likelihood relative to each stream's own history (`service.likelihood`), so
# one threshold carries across models: 1 - 1e-5 is where all three NAB profiles peak
# (`python -m training.nab_tuning`), as for Numenta's anomaly likelihood.
DEFAULT_THRESHOLD = 0.99999
REPLAY_READINGS = 100_000  # per engine run when measuring the threshold
_TINY = 1e-6


def standardized_errors(model: Forecaster, seqs: Sequences) -> np.ndarray:
    """|x_{t+1} - loc_t| / scale_t at every counted target, flattened over channels."""
    loc, scale = forecast(model, seqs.values)
    z = (seqs.values[1:] - loc[:-1]) / scale[:-1]  # (time - 1, streams, channels)
    return np.abs(z[seqs.mask[1:]]).ravel()


def calibration_table(model: Forecaster, seqs: Sequences) -> Calibration:
    """The card's calibration, fit on the counted (normal, held-out) targets of `seqs`."""
    return fit_calibration(standardized_errors(model, seqs))


def calibrate_threshold(
    model_dir: Path,
    streams: Sequence[Stream],
    normal: np.ndarray,
    false_alarm_rate: float | None = None,
) -> tuple[float, dict[str, Any]]:
    """The card's score threshold, and the record of how it was chosen.

    The exported model in `model_dir` scores the raw `streams` through the server's engine,
    offline (`service.replay.score_series`), each from its first reading; `normal`
    (time, streams) marks the readings whose scores count. Without a `false_alarm_rate` the
    threshold is `DEFAULT_THRESHOLD` and the record says how often normal readings reach it;
    with one, it is the score normal readings reach at that rate (`DEFAULT_THRESHOLD` when
    there are too few of them to measure it).
    """
    scores = _replay(ServedForecaster.load(model_dir), streams)
    counted = np.concatenate([sc[normal[: len(sc), i]] for i, sc in enumerate(scores)])
    replayed = (
        f"replay of {counted.size} held-out normal readings through the engine "
        f"(service.replay.score_series)"
    )
    if false_alarm_rate is None:
        reached = float(np.mean(counted >= DEFAULT_THRESHOLD)) if counted.size else None
        return DEFAULT_THRESHOLD, {
            "normal_rate": reached,
            "how": f"the scorer's default; the rate normal readings reach it: {replayed}",
        }
    needed = math.ceil(1.0 / false_alarm_rate)
    if counted.size < needed:
        return DEFAULT_THRESHOLD, {"false_alarm_rate": false_alarm_rate, "how": (
            f"default {DEFAULT_THRESHOLD}: {counted.size} held-out normal readings, "
            f"{needed} needed to measure a rate of {false_alarm_rate:g}"
        )}
    threshold = threshold_for_false_alarm_rate(counted, false_alarm_rate)
    # The card (and the alert rule) need a threshold strictly inside (0, 1).
    threshold = float(np.clip(threshold, _TINY, np.nextafter(1.0, 0.0)))
    return threshold, {"false_alarm_rate": false_alarm_rate, "how": replayed}


def _replay(model: ServedForecaster, streams: Sequence[Stream]) -> list[np.ndarray]:
    """Scores of every stream, replayed in groups of at most `REPLAY_READINGS` readings.

    One engine run queues its whole group at once: groups bound that queue (and the memory
    of the readings), and the queue limit is raised to the group so no reading is refused.
    """
    groups: list[list[np.ndarray]] = [[]]
    for stream in streams:
        if groups[-1] and sum(map(len, groups[-1])) + len(stream) > REPLAY_READINGS:
            groups.append([])
        groups[-1].append(stream.values)
    scores: list[np.ndarray] = []
    for group in groups:
        settings = Settings(engine={"max_queued": max(1, sum(map(len, group)))})
        scores += score_series(model, group, settings)
    return scores


def forecast_metrics(model: Forecaster, seqs: Sequences) -> dict[str, Any]:
    """NLL and MAE on the counted targets, against the last-value forecaster (z units)."""
    loc, scale = forecast(model, seqs.values)
    target, last = seqs.values[1:], seqs.values[:-1]
    mask = seqs.mask[1:]
    std = model.std.numpy()
    err = np.abs(target - loc[:-1])[mask] / std  # (targets, channels)
    err_last = np.abs(target - last)[mask] / std
    u = (target - loc[:-1]) / scale[:-1]
    nll = 0.5 * u * u + np.log(scale[:-1] / std) + 0.5 * np.log(2 * np.pi)
    return {
        "nll": float(nll.sum(axis=-1)[mask].mean()),
        "mae": float(err.mean()),
        "mae_last_value": float(err_last.mean()),
        "mae_ratio": float(err.mean() / err_last.mean()),
        "targets": int(mask.sum()),
    }
