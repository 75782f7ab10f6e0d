"""One model's share of a round: take its streams' records, step the model once, score, put.

Everything here works on the round's readings (at most one per stream) at once, with numpy
or one compiled pass each (`service.compiled`): time checks, per-stream normalization, the
model call, scoring, the alert rule. Only readings inside an open alert (rare) touch a Python
object.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from service import likelihood, normalization, scoring
from service.alerts import Alert, iso, update_peak
from service.errors import InvalidReadingError, OutOfOrderError, StreamwatchError
from service.model import Forecaster
from service.results import (
    ANOMALY,
    CLOSED,
    GAP,
    OPENED,
    SCORED,
    WARMING,
    AlertRef,
    Reading,
    ResultBlock,
    alert_events,
)
from service.settings import Settings
from service.state import ArenaSnapshot, StateArena, state_of
from service.stream_batch import StateCopy, StreamBatch

_INTERVAL_ALPHA = 0.1  # how fast a stream's typical interval follows its recent ones
_V = TypeVar("_V")


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
    block: ResultBlock
    events: list[tuple[str, Alert]]


class Stepper:
    """Advances one model's streams; owns that model's arena and open alerts."""

    def __init__(self, name: str, model: Forecaster, arena: StateArena, settings: Settings):
        self.name = name
        self.model = model
        self.arena = arena
        self._per_stream = model.card.normalization.per_stream
        self._norm = normalization.NormalizerParams(**settings.normalization.model_dump())
        self._likelihood = likelihood.LikelihoodParams.of(settings.scoring)
        self._score_fields = [name for name, *_ in arena.layout.scores]
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

    @property
    def open_alerts(self) -> int:
        return len(self._open)

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

    def copy(self) -> StateCopy:
        """Every stream of this model as of now, to snapshot."""
        return StateCopy(self.name, self.arena.copy(), dict(self._open), dict(self._last_alert))

    def export(self, stream_ids: Sequence[str]) -> StreamBatch:
        """Copies of some bound streams' state, to persist."""
        ids = list(stream_ids)
        slots = np.fromiter((self.arena.slot_of(sid) for sid in ids), np.int64, len(ids))
        return StreamBatch(
            self.name, ids, self.arena.read_records(slots),
            {sid: self._open[sid] for sid in ids if sid in self._open},
            {sid: self._last_alert[sid] for sid in ids if sid in self._last_alert},
        )

    def adopt(self, batch: StreamBatch) -> None:
        """Take persisted state for streams already bound here, replacing theirs."""
        slots = np.fromiter(
            (self.arena.slot_of(sid) for sid in batch.stream_ids), np.int64, len(batch.stream_ids)
        )
        self.arena.write_records(slots, batch.records)
        for sid in batch.stream_ids:
            _put(self._open, sid, batch.open_alerts.get(sid))
            _put(self._last_alert, sid, batch.last_alerts.get(sid))

    def restore(self, batch: StreamBatch) -> None:
        """Replace every stream with the batch's (see `StateArena.restore` for the errors)."""
        self.arena.restore(ArenaSnapshot(batch.stream_ids, batch.records))
        self._open = dict(batch.open_alerts)
        self._last_alert = dict(batch.last_alerts)

    def held_alert_ids(self) -> set[str]:
        """Ids of the alerts open on this model's streams."""
        return {alert.id for alert in self._open.values()}

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

    def apply(self, readings: Sequence[Reading], slots: np.ndarray | None = None) -> StepOutcome:
        """`apply_columns` for readings given one by one."""
        n, channels = len(readings), self.model.card.n_channels
        stream_ids = [r.stream_id for r in readings]
        if slots is None:
            slots = self.arena.slots_of(stream_ids)
        ts = np.fromiter([r.timestamp for r in readings], np.float64, n)
        # fromiter over the flattened values: np.array on a list of tuples is ~2.5x slower
        x = np.fromiter(
            itertools.chain.from_iterable([r.values for r in readings]), np.float64, n * channels
        ).reshape(n, channels)  # (batch, channels)
        return self.apply_columns(stream_ids, ts, x, slots)

    def apply_columns(
        self, stream_ids: list[str], ts: np.ndarray, x: np.ndarray, slots: np.ndarray
    ) -> StepOutcome:
        """Apply one reading per distinct bound stream, given as columns: `ts` (batch,) epoch
        seconds, `x` (batch, channels) with NaN for a missing channel, `slots` (batch,) the
        streams' slots. The results come in the order given."""
        records = self.arena.take(slots)  # (batch,) this round's working copy
        last_ts = records["last_ts"]
        duplicate = ts == last_ts
        late = ts < last_ts
        fresh = ~(duplicate | late)
        errors: dict[int, StreamwatchError] = {}
        for i in np.flatnonzero(late).tolist():
            errors[i] = OutOfOrderError(
                f"stream {stream_ids[i]!r} is at {_fmt(last_ts[i])}; "
                f"a reading at {_fmt(ts[i])} is older and was not applied"
            )
        events: list[tuple[str, Alert]] = []
        rows = np.flatnonzero(fresh)
        if rows.size == len(stream_ids):  # the usual round: every reading is new
            # Huge values may overflow on the way; _advance refuses what is not finite, so
            # numpy's warnings say nothing new (and, raised as errors, would stop the engine).
            with np.errstate(over="ignore", invalid="ignore"):
                events = self._advance(stream_ids, rows, slots, records, ts, x, errors)
        elif rows.size:
            rec = records.take(rows)
            with np.errstate(over="ignore", invalid="ignore"):
                events = self._advance(stream_ids, rows, slots[rows], rec, ts[rows], x[rows],
                                       errors)
            records[rows] = rec  # the duplicates keep the records their first time left
        alerts = alert_events(stream_ids, records["last_flags"], self._last_alert, errors)
        block = ResultBlock(self.name, stream_ids, ts, records, duplicate, alerts, errors)
        return StepOutcome(block, events)

    def _advance(
        self,
        stream_ids: list[str],
        rows: np.ndarray,
        slots: np.ndarray,
        rec: np.ndarray,
        ts: np.ndarray,
        x: np.ndarray,
        errors: dict[int, StreamwatchError],
    ) -> list[tuple[str, Alert]]:
        """Step the readings `rows` of fresh streams; `rec` holds their slots' records. The
        likelihood updates its own fields in place; every other field is read before the
        first is written back. A reading refused here gets its error in `errors`."""
        gap = self._gaps(rec, ts)
        if gap.any() and self._time.gap_policy == "rewarm":
            self.arena.refresh(rec, gap, keep=("threshold", "last_ts", "interval", "seen"))
        count, mean, var = rec["count"], rec["mean"], rec["var"]
        loc, scale = rec["next_loc"].copy(), rec["next_scale"].copy()
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
        state = state_of(rec, self.arena.layout)
        loc_u, scale_u, new_state = self.model.step(u.astype(np.float32), state)
        next_loc = loc_u * std + (mean if self._per_stream else 0.0)
        next_scale = scale_u * std
        finite = np.isfinite(next_loc).all(axis=1) & np.isfinite(next_scale).all(axis=1)
        for s in new_state:
            finite &= np.isfinite(s).all(axis=(0, 2))
        if not finite.all():  # never let a poisoned state in: refuse those readings
            for i in rows[~finite].tolist():
                errors[i] = InvalidReadingError(
                    f"stream {stream_ids[i]!r}: the model produced a non-finite "
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
        whole, rec = rec, (rec if finite.all() else rec[finite])  # the rows stepped

        s = scoring.surprise(z, observed & scorable[:, None], self.model.card.calibration)
        warming = count <= self._norm.warmup_n
        may_alert = scorable & ~warming
        score = likelihood.step_in_place(  # the score fields of `rec` are the state
            s, x, observed, ts, self._score_state(rec), scorable, may_alert, self._likelihood
        )
        threshold = rec["threshold"]
        rule = scoring.update_alerts(
            score,
            threshold,
            may_alert,
            rec["open_hits"],
            rec["hold_hits"],
            rec["is_open"],
            rec["cooldown"],
            self._alerting,
        )
        anomaly = may_alert & (score >= threshold)
        interval = self._next_interval(rec, ts, gap)

        for name, value in zip(self.arena.layout.state_names, new_state, strict=True):
            rec[f"state_{name}"] = value.transpose(1, 0, 2)
        rec["count"], rec["mean"], rec["var"] = count, mean, var
        rec["last_loc"], rec["last_scale"] = loc, scale
        rec["next_loc"], rec["next_scale"] = next_loc, next_scale
        rec["open_hits"], rec["hold_hits"] = rule.open_hits, rule.hold_hits
        rec["is_open"], rec["cooldown"] = rule.is_open, rule.cooldown
        rec["interval"] = interval
        rec["last_ts"] = ts
        rec["last_score"] = score
        rec["seen"] += 1
        rec["last_flags"] = (
            anomaly * ANOMALY
            | warming * WARMING
            | gap * GAP
            | rule.opened * OPENED
            | rule.closed * CLOSED
            | scorable * SCORED
        )
        self.arena.put(slots, rec, time.monotonic())

        events = self._track_alerts(stream_ids, rows, rule, score, ts, loc, x)
        if rec is not whole:
            whole[finite] = rec
        return events

    def _score_state(self, rec: np.ndarray) -> likelihood.LikelihoodState:
        return likelihood.LikelihoodState(
            **{name: rec[f"score_{name}"] for name in self._score_fields}
        )

    def _gaps(self, rec: np.ndarray, ts: np.ndarray) -> np.ndarray:
        dt = ts - rec["last_ts"]
        with np.errstate(invalid="ignore"):
            return (rec["count"] > 1) & (dt > self._time.gap_factor * rec["interval"])

    def _next_interval(self, rec: np.ndarray, ts: np.ndarray, gap: np.ndarray) -> np.ndarray:
        interval = rec["interval"]
        dt = ts - rec["last_ts"]
        followed = np.where(np.isnan(interval), dt, interval + _INTERVAL_ALPHA * (dt - interval))
        return np.where(gap | np.isnan(dt), interval, followed)  # a gap is not the new normal

    def _track_alerts(
        self,
        stream_ids: list[str],
        rows: np.ndarray,
        rule: scoring.AlertUpdate,
        score_value: np.ndarray,
        ts: np.ndarray,
        loc: np.ndarray,
        x: np.ndarray,
    ) -> list[tuple[str, Alert]]:
        events: list[tuple[str, Alert]] = []
        for j in np.flatnonzero(rule.opened | rule.closed | rule.is_open):
            stream_id = stream_ids[rows[j]]
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


def _put(memory: dict[str, _V], key: str, value: _V | None) -> None:
    if value is None:
        memory.pop(key, None)
    else:
        memory[key] = value


def _close(alert: Alert, at: float) -> Alert:
    return replace(alert, closed_at=at)


def _floats(row: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in row.tolist()]


def _fmt(ts: float) -> str:
    return iso(ts)
