"""A reading in, its result out: the records of a reading's trip through the engine.

`results_of` builds a round's `Result`s in bulk from the arena records the round left.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from service.errors import StreamwatchError

# Bits of an arena record's `last_flags`: what the stream's last reading came out as.
ANOMALY, WARMING, GAP, OPENED, CLOSED, SCORED = (1 << i for i in range(6))
_new_result = tuple.__new__  # Result(...) without the Python-level __new__ of a NamedTuple


# Reading and Result are NamedTuples, not frozen dataclasses: the hot path makes one of each
# per reading, and a 12-field frozen dataclass costs ~2.6 us to build against ~0.6 us.
class Reading(NamedTuple):
    stream_id: str
    timestamp: float  # epoch seconds
    values: tuple[float, ...]  # NaN marks a missing channel (null on the wire)
    model: str | None = None


@dataclass(frozen=True, slots=True)
class AlertRef:
    id: str
    event: str


class Result(NamedTuple):
    stream_id: str
    timestamp: float
    model: str
    forecast_loc: list[float] | None  # the forecast this reading was judged against
    forecast_scale: list[float] | None
    score: float
    threshold: float
    anomaly: bool
    warming_up: bool
    gap: bool
    duplicate: bool
    alert: AlertRef | None


Outcome = Result | StreamwatchError


def results_of(
    readings: Sequence[Reading],
    records: np.ndarray,
    model: str,
    last_alerts: Mapping[str, AlertRef],
    *,
    duplicate: bool,
) -> list[Result]:
    """The results of `readings`, read from their streams' arena records (one each, in order)
    as their last reading left them; `last_alerts` holds the alert event of each stream's
    last reading."""
    flags = records["last_flags"]
    locs: list[list[float] | None] = records["last_loc"].tolist()
    scales: list[list[float] | None] = records["last_scale"].tolist()
    for j in np.flatnonzero((flags & SCORED) == 0).tolist():
        locs[j] = scales[j] = None
    stream_ids = [r.stream_id for r in readings]
    alerts: Iterable[AlertRef | None] = itertools.repeat(None)
    alerted = np.flatnonzero(flags & (OPENED | CLOSED)).tolist()
    if alerted:
        alerts = [None] * len(readings)
        for j in alerted:
            alerts[j] = last_alerts.get(stream_ids[j])
    # Columns zipped into Results by C-level iteration: a Python loop per reading, with one
    # tuple built by hand, costs about twice as much.
    columns = zip(
        stream_ids,
        [r.timestamp for r in readings],
        itertools.repeat(model),
        locs,
        scales,
        records["last_score"].tolist(),
        records["threshold"].tolist(),
        *(_flag(flags, bit) for bit in (ANOMALY, WARMING, GAP)),
        itertools.repeat(duplicate),
        alerts,
    )
    return list(map(_new_result, itertools.repeat(Result), columns))


def _flag(flags: np.ndarray, bit: int) -> Iterable[bool]:
    """Whether each of `flags` has `bit` set; mostly none has (no anomaly, no gap)."""
    has = (flags & bit) != 0
    return has.tolist() if has.any() else itertools.repeat(False)
