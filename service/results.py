"""A reading in, its result out: the records of a reading's trip through the engine.

A `ResultBlock` holds a round's results as columns, read from the arena records the round
left; it builds `Result`s in bulk for callers that want one per reading.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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


new_reading = tuple.__new__  # Reading(...) without the Python-level __new__ of a NamedTuple


@dataclass(frozen=True, eq=False)
class ReadingArrays:
    """Readings as columns, as a gateway sends many at once, parsed into arrays: reading i is
    (stream_ids[i], timestamps[i], values[i], models[i]). (`schemas.ReadingColumns` is their
    wire form.)"""

    stream_ids: list[str]
    timestamps: np.ndarray  # (n,) float64, epoch seconds
    values: np.ndarray  # (n, channels) float64; NaN marks a missing channel
    models: list[str | None] | None = None  # None: no reading names a model

    def __len__(self) -> int:
        return len(self.stream_ids)

    def readings(self) -> list[Reading]:
        """The same readings one by one."""
        models = itertools.repeat(None) if self.models is None else self.models
        rows = zip(
            self.stream_ids, self.timestamps.tolist(), map(tuple, self.values.tolist()), models,
            strict=False,  # models may be repeat()
        )
        return list(map(new_reading, itertools.repeat(Reading), rows))


@dataclass(frozen=True, slots=True)
class AlertRef:
    id: str
    event: str

    def to_json(self) -> dict[str, str]:
        """The wire form of a result's alert event."""
        return {"id": self.id, "event": self.event}


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


@dataclass(eq=False)
class ResultBlock:
    """The results of one model's readings in a round, as columns: row i is reading i's.

    `results` holds the fields of the readings' arena records that a result reads
    (`service.passes.RESULT_FIELDS`), as the round left their streams (a row in `errors` was
    not applied, and its fields mean nothing); `alerts` holds the alert event
    of each row whose reading opened or closed one. A caller that answers in columns reads
    the arrays; `outcomes()` builds one `Result` per row for the others.
    """

    model: str
    stream_ids: list[str]
    timestamps: np.ndarray  # (n,) float64
    results: np.ndarray  # (n,) records with (at least) those fields
    duplicate: np.ndarray  # (n,) bool: a retried reading, answered as the first time
    alerts: dict[int, AlertRef] = field(default_factory=dict)
    errors: dict[int, StreamwatchError] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.stream_ids)

    def fields(self, lo: int, hi: int) -> dict[str, Sequence[Any]]:
        """Rows [lo, hi) as columns, one per `Result` field (a refused row's mean nothing)."""
        records, n = self.results[lo:hi], hi - lo
        flags = records["last_flags"]
        locs: list[list[float] | None] = records["last_loc"].tolist()
        scales: list[list[float] | None] = records["last_scale"].tolist()
        for j in np.flatnonzero((flags & SCORED) == 0).tolist():
            locs[j] = scales[j] = None
        alerts: Sequence[AlertRef | None] = (None,) * n
        if any(lo <= j < hi for j in self.alerts):
            alerts = [self.alerts.get(j) for j in range(lo, hi)]
        return dict(zip(Result._fields, (
            self.stream_ids[lo:hi],
            self.timestamps[lo:hi].tolist(),
            (self.model,) * n,
            locs,
            scales,
            records["last_score"].tolist(),
            records["threshold"].tolist(),
            *(_flag(flags, bit) for bit in (ANOMALY, WARMING, GAP)),
            _flag(self.duplicate[lo:hi], True),
            alerts,
        ), strict=True))

    def outcomes(self, lo: int = 0, hi: int | None = None) -> list[Outcome]:
        """One Result per row of [lo, hi) (all rows by default), or the row's error."""
        hi = len(self) if hi is None else hi
        # Columns zipped into Results by C-level iteration: a Python loop per reading, with
        # one tuple built by hand, costs about twice as much.
        columns = zip(*self.fields(lo, hi).values(), strict=True)
        outcomes: list[Outcome] = list(map(_new_result, itertools.repeat(Result), columns))
        for j, error in self.errors.items():
            if lo <= j < hi:
                outcomes[j - lo] = error
        return outcomes


@dataclass(frozen=True)
class ResultRuns:
    """The results of readings sent as columns, as runs of blocks: run (block, row, start,
    stop) holds the results of readings [start, stop) in the block's rows from `row` on."""

    runs: list[tuple[ResultBlock, int, int, int]]

    def outcomes(self) -> list[Outcome]:
        """One Result per reading, or its error, in order."""
        return list(itertools.chain.from_iterable(
            block.outcomes(row, row + stop - start) for block, row, start, stop in self.runs
        ))


def alert_events(
    stream_ids: Sequence[str],
    flags: np.ndarray,
    last_alerts: Mapping[str, AlertRef],
    refused: Mapping[int, object],
) -> dict[int, AlertRef]:
    """Row -> alert event, for the rows not `refused` whose flags say their reading opened or
    closed an alert; `last_alerts` holds the event of each stream's last reading."""
    alerted = np.flatnonzero(flags & (OPENED | CLOSED)).tolist()
    events = {j: last_alerts.get(stream_ids[j]) for j in alerted if j not in refused}
    return {j: ref for j, ref in events.items() if ref is not None}


def _flag(flags: np.ndarray, bit: int | bool) -> Sequence[bool]:
    """Whether each of `flags` has `bit` set; mostly none has (no anomaly, no gap)."""
    has = (flags & bit) != 0
    return has.tolist() if has.any() else (False,) * len(has)
