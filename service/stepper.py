"""One model's share of a round: gather slots, step the model once, score, scatter.

Everything here is vectorized over the round's readings (at most one per stream):
time checks, per-stream normalization, the model call, scoring, the alert rule. Only
readings inside an open alert (rare) touch a Python object.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from service import normalization, scoring
from service.alerts import Alert, iso, update_peak
from service.errors import InvalidReadingError, OutOfOrderError, StreamwatchError
from service.model import Forecaster
from service.settings import Settings
from service.state import StateArena

_ANOMALY, _WARMING, _GAP, _OPENED, _CLOSED, _SCORED = (1 << i for i in range(6))
_INTERVAL_ALPHA = 0.1  # how fast a stream's typical interval follows its recent ones


@dataclass(frozen=True, slots=True)
class Reading:
    stream_id: str
    timestamp: float  # epoch seconds
    values: tuple[float, ...]  # NaN marks a missing channel (null on the wire)
    model: str | None = None


@dataclass(frozen=True, slots=True)
class AlertRef:
    id: str
    event: str


@dataclass(frozen=True, slots=True)
class Result:
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


@dataclass(frozen=True, slots=True)
class StreamInfo:
    stream_id: str
    model: str
    readings: int
    warming_up: bool
    last_timestamp: float | None
    last_score: float
    open_alert: Alert | None


@dataclass(frozen=True)
class StepOutcome:
    outcomes: list[Outcome]
    events: list[tuple[str, Alert]]


class Stepper:
    """Advances one model's streams; owns that model's arena and open alerts."""

    def __init__(self, name: str, model: Forecaster, arena: StateArena, settings: Settings):
        self.name = name
        self.model = model
        self.arena = arena
        self._per_stream = model.card.normalization.per_stream
        self._norm = normalization.NormalizerParams(**settings.normalization.model_dump())
        self._scoring = scoring.ScoringParams(
            window=settings.scoring.window, level_alpha=settings.scoring.level_alpha
        )
        self._alerting = scoring.AlertParams(
            **settings.alerts.model_dump(include={"k", "m", "close_factor", "cooldown"})
        )
        self._time = settings.time
        self._threshold = settings.scoring.thresholds.get(name, model.card.threshold)
        self._stream_thresholds = settings.scoring.stream_thresholds
        self._open: dict[str, Alert] = {}  # stream_id -> its open alert
        self._last_alert: dict[str, AlertRef] = {}  # stream_id -> event of its last reading
        self._alert_seq = itertools.count()
        self.evictions = 0

    def bind(self, stream_id: str) -> None:
        threshold = self._threshold
        for override in self._stream_thresholds:
            if fnmatch.fnmatchcase(stream_id, override.pattern):
                threshold = override.threshold
                break
        self.arena.bind(stream_id, threshold)

    def release(self, stream_id: str) -> list[tuple[str, Alert]]:
        self.arena.release(stream_id)
        self._last_alert.pop(stream_id, None)
        alert = self._open.pop(stream_id, None)
        if alert is None:
            return []
        return [("closed", _close(alert, alert.peak_at))]

    def info(self, stream_id: str) -> StreamInfo:
        slot = self.arena.slot_of(stream_id)
        assert slot is not None
        a = self.arena.arrays
        last_ts = float(a["last_ts"][slot])
        return StreamInfo(
            stream_id=stream_id,
            model=self.name,
            readings=int(a["seen"][slot]),
            warming_up=bool(a["count"][slot] < self._norm.warmup_n),
            last_timestamp=None if math.isnan(last_ts) else last_ts,
            last_score=float(a["last_score"][slot]),
            open_alert=self._open.get(stream_id),
        )

    def apply(self, readings: Sequence[Reading]) -> StepOutcome:
        """Apply one reading per distinct stream; outcomes in the order given."""
        arena, a = self.arena, self.arena.arrays
        slots = np.fromiter((arena.slot_of(r.stream_id) for r in readings), np.int64, len(readings))
        ts = np.fromiter((r.timestamp for r in readings), np.float64, len(readings))
        x = np.array([r.values for r in readings], np.float64)  # (batch, channels)
        last_ts = a["last_ts"][slots]
        duplicate = ts == last_ts
        late = ts < last_ts
        fresh = ~(duplicate | late)
        outcomes: list[Outcome | None] = [None] * len(readings)
        for i in np.flatnonzero(late).tolist():
            outcomes[i] = OutOfOrderError(
                f"stream {readings[i].stream_id!r} is at {_fmt(last_ts[i])}; "
                f"a reading at {_fmt(ts[i])} is older and was not applied"
            )
        for i in np.flatnonzero(duplicate).tolist():
            outcomes[i] = self._stored_result(readings[i], int(slots[i]))
        events: list[tuple[str, Alert]] = []
        rows = np.flatnonzero(fresh)
        if rows.size:
            events = self._advance(readings, rows, slots[rows], ts[rows], x[rows], outcomes)
        return StepOutcome(outcomes, events)  # type: ignore[arg-type]

    def _advance(
        self,
        readings: Sequence[Reading],
        rows: np.ndarray,
        slots: np.ndarray,
        ts: np.ndarray,
        x: np.ndarray,
        outcomes: list[Outcome | None],
    ) -> list[tuple[str, Alert]]:
        a = self.arena.arrays
        gap = self._gaps(slots, ts)
        if gap.any() and self._time.gap_policy == "rewarm":
            self.arena.reset(slots[gap], keep=("threshold", "last_ts", "interval", "seen"))
        count, mean, var = a["count"][slots], a["mean"][slots], a["var"][slots]
        loc, scale = a["next_loc"][slots], a["next_scale"][slots]
        observed = ~np.isnan(x)
        has_forecast = count > 0
        scorable = has_forecast & observed.any(axis=1)
        z = np.where(observed & has_forecast[:, None], (x - loc) / scale, 0.0)
        x_filled = np.where(observed, x, np.where(has_forecast[:, None], loc, mean))
        if self._per_stream:
            u, count, mean, var = normalization.step(
                count, mean, var, x_filled, observed, self._norm
            )
            std = normalization.std_of(mean, var)
        else:
            u, count, std = x_filled, count + 1, np.ones_like(x_filled)
        state = self.arena.gather_state(slots)
        loc_u, scale_u, new_state = self.model.step(u.astype(np.float32), state)
        next_loc = loc_u * std + (mean if self._per_stream else 0.0)
        next_scale = scale_u * std
        finite = np.isfinite(next_loc).all(axis=1) & np.isfinite(next_scale).all(axis=1)
        for s in new_state:
            finite &= np.isfinite(s).all(axis=(0, 2))
        if not finite.all():  # never let a poisoned state in: refuse those readings
            for i in rows[~finite].tolist():
                outcomes[i] = InvalidReadingError(
                    f"stream {readings[i].stream_id!r}: the model produced a non-finite "
                    "forecast for this reading; it was not applied"
                )
            keep = finite
            rows, slots, ts, x, gap, observed, scorable, z = (
                v[keep] for v in (rows, slots, ts, x, gap, observed, scorable, z)
            )
            count, mean, var, loc, scale, next_loc, next_scale = (
                v[keep] for v in (count, mean, var, loc, scale, next_loc, next_scale)
            )
            new_state = tuple(s[:, keep] for s in new_state)

        s = scoring.surprise(z, observed & scorable[:, None], self.model.card.calibration)
        scored = scoring.score(s, a["history"][slots], a["level"][slots], scorable, self._scoring)
        warming = count <= self._norm.warmup_n
        may_alert = scorable & ~warming
        threshold = a["threshold"][slots]
        rule = scoring.update_alerts(
            scored.score,
            threshold,
            may_alert,
            a["open_hits"][slots],
            a["hold_hits"][slots],
            a["is_open"][slots],
            a["cooldown"][slots],
            self._alerting,
        )
        anomaly = may_alert & (scored.score >= threshold)

        self.arena.scatter_state(slots, new_state)
        a["count"][slots], a["mean"][slots], a["var"][slots] = count, mean, var
        a["last_loc"][slots], a["last_scale"][slots] = loc, scale
        a["next_loc"][slots], a["next_scale"][slots] = next_loc, next_scale
        a["history"][slots], a["level"][slots] = scored.history, scored.level
        a["open_hits"][slots], a["hold_hits"][slots] = rule.open_hits, rule.hold_hits
        a["is_open"][slots], a["cooldown"][slots] = rule.is_open, rule.cooldown
        a["interval"][slots] = self._next_interval(slots, ts, gap)
        a["last_ts"][slots] = ts
        a["last_score"][slots] = scored.score
        a["seen"][slots] += 1
        a["last_seen"][slots] = time.monotonic()
        a["last_flags"][slots] = (
            anomaly * _ANOMALY
            | warming * _WARMING
            | gap * _GAP
            | rule.opened * _OPENED
            | rule.closed * _CLOSED
            | scorable * _SCORED
        ).astype(np.uint8)

        events = self._track_alerts(readings, rows, rule, scored.score, ts, loc, x)
        for j, i in enumerate(rows):
            outcomes[i] = self._result(readings[i], int(slots[j]), duplicate=False)
        return events

    def _gaps(self, slots: np.ndarray, ts: np.ndarray) -> np.ndarray:
        a = self.arena.arrays
        interval = a["interval"][slots]
        dt = ts - a["last_ts"][slots]
        with np.errstate(invalid="ignore"):
            return (a["count"][slots] > 1) & (dt > self._time.gap_factor * interval)

    def _next_interval(self, slots: np.ndarray, ts: np.ndarray, gap: np.ndarray) -> np.ndarray:
        a = self.arena.arrays
        interval = a["interval"][slots]
        dt = ts - a["last_ts"][slots]
        followed = np.where(np.isnan(interval), dt, interval + _INTERVAL_ALPHA * (dt - interval))
        return np.where(gap | np.isnan(dt), interval, followed)  # a gap is not the new normal

    def _track_alerts(
        self,
        readings: Sequence[Reading],
        rows: np.ndarray,
        rule: scoring.AlertUpdate,
        score_value: np.ndarray,
        ts: np.ndarray,
        loc: np.ndarray,
        x: np.ndarray,
    ) -> list[tuple[str, Alert]]:
        events: list[tuple[str, Alert]] = []
        for j in np.flatnonzero(rule.opened | rule.closed | rule.is_open):
            stream_id = readings[rows[j]].stream_id
            at, value = float(ts[j]), float(score_value[j])
            forecast, actual = _floats(loc[j]), _floats(x[j])
            if rule.opened[j]:
                alert = Alert(
                    id=f"{uuid.uuid4().hex[:12]}-{next(self._alert_seq)}",
                    stream_id=stream_id,
                    model=self.name,
                    opened_at=at,
                    closed_at=None,
                    peak_score=value,
                    peak_at=at,
                    readings=1,
                    forecast_at_peak=forecast,
                    actual_at_peak=actual,
                )
                self._open[stream_id] = alert
                events.append(("opened", alert))
                self._last_alert[stream_id] = AlertRef(alert.id, "opened")
            elif rule.closed[j]:
                alert = _close(self._open.pop(stream_id), at)
                events.append(("closed", alert))
                self._last_alert[stream_id] = AlertRef(alert.id, "closed")
            else:
                self._open[stream_id] = update_peak(
                    self._open[stream_id], value, at, forecast, actual
                )
        return events

    def _stored_result(self, reading: Reading, slot: int) -> Result:
        """A retried reading: the result it got the first time, with nothing stepped."""
        return self._result(reading, slot, duplicate=True)

    def _result(self, reading: Reading, slot: int, *, duplicate: bool) -> Result:
        a = self.arena.arrays
        flags = int(a["last_flags"][slot])
        scored = bool(flags & _SCORED)
        return Result(
            stream_id=reading.stream_id,
            timestamp=reading.timestamp,
            model=self.name,
            forecast_loc=a["last_loc"][slot].tolist() if scored else None,
            forecast_scale=a["last_scale"][slot].tolist() if scored else None,
            score=float(a["last_score"][slot]),
            threshold=float(a["threshold"][slot]),
            anomaly=bool(flags & _ANOMALY),
            warming_up=bool(flags & _WARMING),
            gap=bool(flags & _GAP),
            duplicate=duplicate,
            alert=self._last_alert.get(reading.stream_id) if flags & (_OPENED | _CLOSED) else None,
        )


def _close(alert: Alert, at: float) -> Alert:
    return replace(alert, closed_at=at)


def _floats(row: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in row.tolist()]


def _fmt(ts: float) -> str:
    return iso(ts)
