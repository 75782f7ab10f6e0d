"""One model's share of a round: read its streams' records, step the model once, score, and
write the records back, where they lie in the arena.

Everything here works on the round's readings (at most one per stream) at once, in compiled
passes over the records (`service.passes`) and the round's arrays (`service.compiled`): time
checks, per-stream normalization, the model call, surprise, likelihood, the alert rule. Only
readings inside an open alert (rare) touch a Python object.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import os
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from service import likelihood, normalization, passes, scoring
from service.alerts import Alert, iso
from service.errors import InvalidReadingError, OutOfOrderError, StreamwatchError
from service.model import Forecaster
from service.results import (
    AlertRef,
    Reading,
    ResultBlock,
    alert_events,
)
from service.settings import Settings
from service.state import ArenaSnapshot, StateArena
from service.stream_batch import StateCopy, StreamBatch

_INTERVAL_ALPHA = 0.1  # how fast a stream's typical interval follows its recent ones
_REWARM_KEEPS = ("threshold", "last_ts", "interval", "seen")  # what a gap's rewarm leaves
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


@dataclass(slots=True)
class _OpenAlert:
    """An open alert as its readings come, as plain fields that each reading inside it updates:
    an `Alert` (a frozen record, some microseconds to make) is made of them only when it is
    read, once it closes or for a snapshot or a stream's info. In an incident, many streams
    are inside an alert each round."""

    opened: Alert  # as it opened: its id, stream, model and time
    readings: int
    peak_score: float
    peak_at: float
    forecast_at_peak: list[float | None]
    actual_at_peak: list[float | None]

    @classmethod
    def of(cls, alert: Alert) -> _OpenAlert:
        return cls(alert, alert.readings, alert.peak_score, alert.peak_at,
                   alert.forecast_at_peak, alert.actual_at_peak)

    def now(self, closed_at: float | None = None) -> Alert:
        a = self.opened
        return Alert(
            id=a.id, stream_id=a.stream_id, model=a.model, opened_at=a.opened_at,
            closed_at=closed_at, peak_score=self.peak_score, peak_at=self.peak_at,
            readings=self.readings, forecast_at_peak=self.forecast_at_peak,
            actual_at_peak=self.actual_at_peak,
        )

    def closed(self, at: float | None = None) -> Alert:
        """The alert closed at `at` (by default, at its peak: a stream let go)."""
        return self.now(self.peak_at if at is None else at)


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
        self._score_columns: tuple[dict[str, np.ndarray], likelihood.LikelihoodState] | None = None
        self._alerting = scoring.AlertParams(
            **settings.alerts.model_dump(include={"k", "m", "close_factor", "cooldown"})
        )
        self._time = settings.time
        self._threshold = settings.scoring.thresholds.get(name, model.card.threshold)
        self._stream_thresholds = settings.scoring.stream_thresholds
        self._open: dict[str, _OpenAlert] = {}  # stream_id -> its open alert
        self._last_alert: dict[str, AlertRef] = {}  # stream_id -> event of its last reading
        self._alert_seq = itertools.count()
        # An alert's id: 48 random bits (as uuid4's first 12 hex digits were, at a tenth of
        # the cost) and this stepper's count of them.
        self._alert_ids = random.Random(os.urandom(16))
        self._result_dtype = passes.result_dtype(arena.record_dtype)
        self.evictions = 0

    @classmethod
    def warmed(cls, name: str, model: Forecaster, arena: StateArena, settings: Settings
               ) -> Stepper:
        """A stepper whose compiled passes are ready for its arena's layout (`service.passes`
        compiles them, or loads them from its cache, at their first call): it steps a reading
        of a scratch stream in an arena of its own first."""
        scratch = cls(name, model, StateArena(arena.layout, 1, 1), settings)
        scratch.bind("warm-up")
        channels = model.card.n_channels
        scratch.apply_columns(["warm-up"], np.zeros(1), np.zeros((1, channels)),
                              np.zeros(1, np.int64))
        return cls(name, model, arena, settings)

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
        held = self._open.pop(stream_id, None)
        if held is None:
            return []
        return [("closed", held.closed())]

    def copy(self) -> StateCopy:
        """Every stream of this model as of now, to snapshot."""
        return StateCopy(self.name, self.arena.copy(), self._open_alerts(self._open),
                         dict(self._last_alert))

    def export(self, stream_ids: Sequence[str]) -> StreamBatch:
        """Copies of some bound streams' state, to persist."""
        ids = list(stream_ids)
        return StreamBatch(
            self.name, ids, self.arena.read_records(self.arena.slots_of(ids)),
            self._open_alerts(ids),
            {sid: self._last_alert[sid] for sid in ids if sid in self._last_alert},
        )

    def adopt(self, batch: StreamBatch) -> None:
        """Take persisted state for streams already bound here, replacing theirs."""
        self.arena.write_records(self.arena.slots_of(batch.stream_ids), batch.records)
        for sid in batch.stream_ids:
            alert = batch.open_alerts.get(sid)
            _put(self._open, sid, None if alert is None else _OpenAlert.of(alert))
            _put(self._last_alert, sid, batch.last_alerts.get(sid))

    def restore(self, batch: StreamBatch) -> None:
        """Replace every stream with the batch's (see `StateArena.restore` for the errors)."""
        self.arena.restore(ArenaSnapshot(batch.stream_ids, batch.records))
        self._open = {sid: _OpenAlert.of(alert) for sid, alert in batch.open_alerts.items()}
        self._last_alert = dict(batch.last_alerts)

    def held_alert_ids(self) -> set[str]:
        """Ids of the alerts open on this model's streams."""
        return {held.opened.id for held in self._open.values()}

    def _open_alerts(self, stream_ids: Iterable[str]) -> dict[str, Alert]:
        """The open alerts of those of `stream_ids` that have one, as of now."""
        return {sid: held.now() for sid in stream_ids if (held := self._open.get(sid)) is not None}

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
            open_alert=None if (held := self._open.get(stream_id)) is None else held.now(),
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
        n, arena = len(stream_ids), self.arena
        # C arrays: the compiled passes are compiled (at the warm-up) for those
        ts, x = np.ascontiguousarray(ts, np.float64), np.ascontiguousarray(x, np.float64)
        slots = np.ascontiguousarray(slots, np.int64)
        status, gap = np.empty(n, np.uint8), np.empty(n, np.bool_)
        # The counts a pass returns spare a numpy call each, which after the model call (its
        # code and data out of the caches) costs several times what it costs alone.
        fresh, gaps = passes.check(arena.compiled, slots, ts, self._time.gap_factor, status, gap)
        errors: dict[int, StreamwatchError] = {}
        events: list[tuple[str, Alert]] = []
        # The arithmetic is all in compiled passes, which give inf and NaN where numpy would
        # warn (and _advance refuses what is not finite): no numpy warning to silence here.
        if fresh == n:  # the usual round: every reading is new
            events = self._advance(stream_ids, np.arange(n), slots, ts, x, gap, gaps > 0, errors)
        else:
            for i in (status == passes.LATE).nonzero()[0].tolist():
                errors[i] = OutOfOrderError(
                    f"stream {stream_ids[i]!r} is at {_fmt(arena.arrays['last_ts'][slots[i]])}; "
                    f"a reading at {_fmt(ts[i])} is older and was not applied"
                )
            rows = (status == passes.FRESH).nonzero()[0]
            if rows.size:
                events = self._advance(stream_ids, rows, slots[rows], ts[rows], x[rows],
                                       gap[rows], bool(gap[rows].any()), errors)
        results = np.empty(n, self._result_dtype)  # duplicates: as their first time left them
        alerted = passes.results(arena.compiled, slots, results)
        alerts = alert_events(stream_ids, results["last_flags"], self._last_alert, errors) \
            if alerted else {}
        duplicate = status == passes.DUPLICATE
        return StepOutcome(
            ResultBlock(self.name, stream_ids, ts, results, duplicate, alerts, errors), events
        )

    def _advance(
        self,
        stream_ids: list[str],
        rows: np.ndarray,
        slots: np.ndarray,
        ts: np.ndarray,
        x: np.ndarray,
        gap: np.ndarray,
        any_gap: bool,
        errors: dict[int, StreamwatchError],
    ) -> list[tuple[str, Alert]]:
        """Step the readings `rows` of fresh streams (at `slots`), in their records in place.
        A reading refused here gets its error in `errors` and leaves its record as it was; so
        does every reading of a round whose model call raises (nothing is written before it
        but a gap's rewarm, which is undone)."""
        arena, n, channels = self.arena, len(slots), x.shape[1]
        rewarmed = None
        if self._time.gap_policy == "rewarm" and any_gap:
            rewarmed = gap.nonzero()[0]
            before = arena.rewarm(slots[rewarmed], keep=_REWARM_KEEPS)
        layout = arena.layout
        u = np.empty((n, channels), np.float32)
        state = np.empty((len(layout.state_names), layout.num_layers, n, layout.hidden_size),
                         np.float32)
        loc, scale, z, mean, var, std = (np.empty((n, channels)) for _ in range(6))
        observed, judged = np.empty((n, channels), np.bool_), np.empty((n, channels), np.bool_)
        scorable, warming, may_alert = (np.empty(n, np.bool_) for _ in range(3))
        count = np.empty(n, np.int64)
        passes.gather(arena.compiled, arena.states, slots, x, self._per_stream,
                      self._norm.warmup_n, self._norm.alpha, self._norm.clip_sigma,
                      u, state, loc, scale, z, observed, scorable, judged, warming, may_alert,
                      count, mean, var, std)
        try:
            loc_u, scale_u, new_state = self.model.step(u, tuple(state))
        except BaseException:
            if rewarmed is not None:  # a round that fails leaves every stream as it was
                arena.write_records(slots[rewarmed], before)
            raise
        next_loc, next_scale, finite = np.empty_like(loc), np.empty_like(loc), np.empty(n, bool)
        poisoned = passes.forecasts(loc_u, scale_u, new_state, std, mean, self._per_stream,
                                    next_loc, next_scale, finite)
        if poisoned:  # never let a poisoned state in: refuse those readings
            for i in rows[~finite].tolist():
                errors[i] = InvalidReadingError(
                    f"stream {stream_ids[i]!r}: the model produced a non-finite "
                    "forecast for this reading; it was not applied"
                )
            if rewarmed is not None:  # a refused reading's stream stays as it was
                undo = ~finite[rewarmed]
                arena.write_records(slots[rewarmed[undo]], before[undo])
            rows, slots, ts, x, gap, observed, scorable, judged, warming, may_alert, z = _kept(
                finite, rows, slots, ts, x, gap, observed, scorable, judged, warming, may_alert, z
            )
            count, mean, var, loc, scale, next_loc, next_scale = _kept(
                finite, count, mean, var, loc, scale, next_loc, next_scale
            )
            new_state = tuple(np.ascontiguousarray(s[:, finite]) for s in new_state)

        s = scoring.surprise(z, judged, self.model.card.calibration)
        score = likelihood.step_in_place(  # the score fields of the records are the state
            s, x, observed, ts, self._score_state, scorable, may_alert, self._likelihood,
            slots=slots,
        )
        opened, closed, is_open = (np.empty(len(slots), np.bool_) for _ in range(3))
        a = self._alerting
        alerting = passes.put(
            arena.compiled, arena.states, arena.arrays["last_seen"], slots, ts,
            time.monotonic(), new_state, count, mean, var, loc, scale, next_loc, next_scale,
            score, scorable, may_alert, warming, gap, a.k, a.m, a.close_factor, a.cooldown,
            _INTERVAL_ALPHA, opened, closed, is_open,
        )
        if not alerting:
            return []
        return self._track_alerts(stream_ids, rows, opened, closed, is_open, score, ts, loc, x)

    @property
    def _score_state(self) -> likelihood.LikelihoodState:
        """The scorer's state: the records' `score_` fields, as columns of the arena (made
        again only when the arena grows, which gives it new arrays)."""
        arrays, cached = self.arena.arrays, self._score_columns
        if cached is None or cached[0] is not arrays:
            cached = self._score_columns = (arrays, likelihood.LikelihoodState(
                **{name: arrays[f"score_{name}"] for name in self._score_fields}
            ))
        return cached[1]

    def _track_alerts(
        self,
        stream_ids: list[str],
        rows: np.ndarray,
        opened: np.ndarray,
        closed: np.ndarray,
        is_open: np.ndarray,
        score_value: np.ndarray,
        ts: np.ndarray,
        loc: np.ndarray,
        x: np.ndarray,
    ) -> list[tuple[str, Alert]]:
        events: list[tuple[str, Alert]] = []
        which = (opened | closed | is_open).nonzero()[0]
        # as lists first: a numpy element read one at a time costs a new object each
        for row, at, value, opens, closes, forecast, actual in zip(
            rows[which].tolist(), ts[which].tolist(), score_value[which].tolist(),
            opened[which].tolist(), closed[which].tolist(), loc[which].tolist(),
            x[which].tolist(), strict=True,
        ):
            stream_id = stream_ids[row]
            if opens:
                alert = Alert(
                    f"{self._alert_ids.getrandbits(48):012x}-{next(self._alert_seq)}",
                    stream_id, self.name, opened_at=at, closed_at=None, peak_score=value,
                    peak_at=at, readings=1, forecast_at_peak=_floats(forecast),
                    actual_at_peak=_floats(actual),
                )
                self._open[stream_id] = _OpenAlert.of(alert)
                events.append(("opened", alert))
                self._last_alert[stream_id] = AlertRef(alert.id, "opened")
            elif closes:
                alert = self._open.pop(stream_id).closed(at)
                events.append(("closed", alert))
                self._last_alert[stream_id] = AlertRef(alert.id, "closed")
            else:  # one more reading inside the alert; the peak moves if it scores higher
                held = self._open[stream_id]
                held.readings += 1
                if value > held.peak_score:
                    held.peak_score, held.peak_at = value, at
                    held.forecast_at_peak, held.actual_at_peak = _floats(forecast), _floats(actual)
        return events


def _kept(keep: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    """The rows `keep` of each array."""
    return [array[keep] for array in arrays]


def _put(memory: dict[str, _V], key: str, value: _V | None) -> None:
    if value is None:
        memory.pop(key, None)
    else:
        memory[key] = value


def _floats(row: list[float]) -> list[float | None]:
    return [None if math.isnan(v) else v for v in row]


def _fmt(ts: float) -> str:
    return iso(ts)
