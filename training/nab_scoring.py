"""NAB's score of a detector, its threshold sweep, and event metrics for operators.

A numpy port of NAB v1.1 scoring (numenta/NAB ``nab/sweeper.py``, ``nab/optimizer.py`` and
``Runner.normalize``); it gives back the published scoreboard. Pure numpy: server-side
evaluation imports it.

    files, profile = load_corpus(nab_dir), load_profiles(nab_dir)["standard"]
    scores = load_scores(nab_dir / "reference" / "numenta", "numenta")
    score_corpus(files, scores, 0.5421876907348634, profile).normalized  # 70.101...
    sweep(files, scores, profile)  # (0.543099145074, 70.101...)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from training.nab import NabFile, Profile

PROBATION_PERCENT = 0.15
# NAB's sweep starts above every score (scores lie in [0, 1]): its first row detects nothing.
NO_DETECTION_THRESHOLD = 1.1


@dataclass(frozen=True)
class FileScore:
    """NAB's score of one file at one threshold.

    ``raw`` is the weighted sum of the file's detections; ``null`` and ``perfect`` are what a
    detector that never fires and one that fires at each window's start get. The counts are
    NAB's: readings after the probationary period, not windows.
    """

    raw: float
    null: float
    perfect: float
    tp: int
    fp: int
    fn: int
    tn: int


@dataclass(frozen=True)
class CorpusScore:
    """NAB's score of a detector over many files: their ``FileScore``s summed, then normalized.

    ``normalized`` = 100 * (raw - null) / (perfect - null), the number NAB publishes: 0 for
    the detector that never fires, 100 for the one firing once at each window's start.
    """

    raw: float
    null: float
    perfect: float
    normalized: float
    tp: int
    fp: int
    fn: int
    tn: int
    files: Mapping[str, FileScore]


@dataclass(frozen=True)
class EventMetrics:
    """Event-level precision and recall of a detector at one threshold (see ``event_metrics``)."""

    events: int
    detected: int
    false_alarms: int
    precision: float
    recall: float
    f1: float
    median_delay_readings: float | None
    median_delay_s: float | None


def probation_length(readings: int) -> int:
    """NAB's probationary period: readings before this index are not scored."""
    return int(min(math.floor(PROBATION_PERCENT * readings), PROBATION_PERCENT * 5000))


def score_file(file: NabFile, scores: np.ndarray, threshold: float, profile: Profile) -> FileScore:
    """Score one file as NAB does; a reading is detected when ``score >= threshold``.

    Only readings after the probationary period count. In a window of w readings ending at
    reading e, the earliest detection i earns ``tp_weight * S(-(e - i + 1) / w) / S(-1)``
    and later ones nothing; a window without one costs ``fn_weight``. A detection outside
    windows costs ``fp_weight`` before the first window and, after one, earns
    ``fp_weight * S((i - e) / (w - 1))``: nearly nothing just past the window, -0.987 *
    fp_weight a window's length later. S(y) = 2 / (1 + e^(5y)) - 1, and -1 beyond y = 3.
    """
    prepared = _prepare(file, scores, profile)
    flagged = prepared.scored & (scores >= threshold)
    outside = prepared.window_id < 0
    raw = float(prepared.weight[flagged & outside].sum())
    for window in np.unique(prepared.window_id[prepared.scored & ~outside]):
        hits = np.flatnonzero(flagged & (prepared.window_id == window))
        # Weights fall along a window, so the earliest detection is the best one.
        raw += float(prepared.weight[hits[0]]) if len(hits) else -profile.fn_weight
    return FileScore(
        raw=raw,
        null=prepared.null,
        perfect=prepared.perfect,
        tp=int(np.count_nonzero(flagged & ~outside)),
        fp=int(np.count_nonzero(flagged & outside)),
        fn=int(np.count_nonzero(prepared.scored & ~flagged & ~outside)),
        tn=int(np.count_nonzero(prepared.scored & ~flagged & outside)),
    )


def score_corpus(
    files: Sequence[NabFile],
    scores: Mapping[str, np.ndarray],
    threshold: float,
    profile: Profile,
) -> CorpusScore:
    """Score a detector over ``files`` at one threshold: NAB's per-file scores, summed."""
    _check_complete(files, scores)
    per_file = {f.name: score_file(f, scores[f.name], threshold, profile) for f in files}
    parts = per_file.values()
    raw = sum(s.raw for s in parts)
    null = sum(s.null for s in parts)
    perfect = sum(s.perfect for s in parts)
    return CorpusScore(
        raw=raw,
        null=null,
        perfect=perfect,
        normalized=_normalize(raw, null, perfect),
        tp=sum(s.tp for s in parts),
        fp=sum(s.fp for s in parts),
        fn=sum(s.fn for s in parts),
        tn=sum(s.tn for s in parts),
        files=per_file,
    )


def sweep(
    files: Sequence[NabFile], scores: Mapping[str, np.ndarray], profile: Profile
) -> tuple[float, float]:
    """Find the threshold with the best corpus score, as NAB's optimizer does.

    Every distinct score of a scored reading is a candidate, and so is 1.1 (detect nothing);
    among equal best scores the highest threshold wins. Returns ``(threshold, normalized)``.
    """
    _check_complete(files, scores)
    prepared = [_prepare(f, scores[f.name], profile) for f in files]
    thresholds, raws = _raw_by_threshold(prepared, [scores[f.name] for f in files], profile)
    best = int(np.argmax(raws))  # the first maximum: the highest such threshold
    null = sum(p.null for p in prepared)
    perfect = sum(p.perfect for p in prepared)
    return float(thresholds[best]), _normalize(float(raws[best]), null, perfect)


def event_metrics(
    files: Sequence[NabFile], scores: Mapping[str, np.ndarray], threshold: float
) -> EventMetrics:
    """Count detected anomaly windows and false alarms at one threshold.

    A reading is flagged when its score is at or above ``threshold``; as in NAB, readings in
    the probationary period are ignored, and so is a window lying wholly inside it.

    * An event (a window) is detected if any reading inside it is flagged.
    * A false alarm is a contiguous run of flagged readings outside all windows, counted
      once per run; a window or an unflagged reading ends a run, so a run that starts in a
      window and outlasts it is one detection and one false alarm.
    * precision = detected / (detected + false_alarms), recall = detected / events, F1 their
      harmonic mean; each is 0.0 when its denominator is 0.
    * The delay of a detected event runs from its window's first reading to its first
      flagged reading; the medians over detected events are None when none is detected.
    """
    _check_complete(files, scores)
    events = detected = false_alarms = 0
    delays_readings: list[int] = []
    delays_s: list[float] = []
    for file in files:
        _check_scores(file, scores[file.name])
        scored = np.arange(len(file.timestamps)) >= probation_length(len(file.timestamps))
        flagged = scored & (scores[file.name] >= threshold)
        outside = np.ones(len(flagged), dtype=bool)
        for first, last in file.window_indices():
            outside[first : last + 1] = False
            if not scored[last]:
                continue
            events += 1
            hits = np.flatnonzero(flagged[first : last + 1])
            if len(hits):
                detected += 1
                delays_readings.append(int(hits[0]))
                elapsed = file.timestamps[first + hits[0]] - file.timestamps[first]
                delays_s.append(float(elapsed / np.timedelta64(1, "s")))
        alarm = flagged & outside
        false_alarms += int(alarm[0]) + int(np.count_nonzero(alarm[1:] & ~alarm[:-1]))

    precision = detected / (detected + false_alarms) if detected + false_alarms else 0.0
    recall = detected / events if events else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return EventMetrics(
        events=events,
        detected=detected,
        false_alarms=false_alarms,
        precision=precision,
        recall=recall,
        f1=f1,
        median_delay_readings=float(np.median(delays_readings)) if delays_readings else None,
        median_delay_s=float(np.median(delays_s)) if delays_s else None,
    )


@dataclass(frozen=True, eq=False)
class _Prepared:
    """What NAB's sweeper knows of each reading of one file before any threshold."""

    weight: np.ndarray  # (readings,) what detecting the reading is worth: NAB's sweepScore
    window_id: np.ndarray  # (readings,) index of the window holding it, -1 outside
    scored: np.ndarray  # (readings,) bool: after the probationary period
    null: float
    perfect: float


def _prepare(file: NabFile, scores: np.ndarray, profile: Profile) -> _Prepared:
    _check_scores(file, scores)
    n = len(file.timestamps)
    bounds = file.window_indices()
    starts = np.array([first for first, _ in bounds], dtype=np.int64)
    ends = np.array([last for _, last in bounds], dtype=np.int64)
    index = np.arange(n)
    window_id = np.full(n, -1, dtype=np.int64)
    for k, (first, last) in enumerate(bounds):
        window_id[first : last + 1] = k
    inside = window_id >= 0

    # Outside windows: the full FP cost before any window; after one, a cost growing with
    # the distance past its end, in units of (width - 1) readings.
    weight = np.full(n, -profile.fp_weight)
    previous = np.searchsorted(ends, index, side="left") - 1  # the last window ending before i
    after = (previous >= 0) & ~inside
    span = (ends - starts)[previous[after]]
    distance = (index[after] - ends[previous[after]]).astype(np.float64)
    # NAB divides by zero after a one-reading window; we charge the full FP cost there.
    position = np.divide(distance, span, out=np.full(len(span), np.inf), where=span > 0)
    weight[after] = profile.fp_weight * _scaled_sigmoid(position)
    # Inside windows: NAB's position is -(end - i + 1) / width, so the last reading is not 0.
    held = window_id[inside]
    position = -(ends[held] - index[inside] + 1) / (ends[held] - starts[held] + 1)
    weight[inside] = profile.tp_weight * _scaled_sigmoid(position) / _scaled_sigmoid(-1.0)

    scored = index >= probation_length(n)
    return _Prepared(
        weight=weight,
        window_id=window_id,
        scored=scored,
        # NAB's null detector misses each window holding a scored reading, while its perfect
        # score counts every labeled window (the corpus has none lost to probation).
        null=-profile.fn_weight * len(np.unique(window_id[scored & inside])),
        perfect=profile.tp_weight * len(bounds),
    )


def _raw_by_threshold(
    prepared: Sequence[_Prepared], scores: Sequence[np.ndarray], profile: Profile
) -> tuple[np.ndarray, np.ndarray]:
    """The corpus raw score at every candidate threshold, thresholds descending."""
    offsets = np.cumsum([0] + [int(p.window_id.max(initial=-1)) + 1 for p in prepared])
    score = np.concatenate([s[p.scored] for p, s in zip(prepared, scores, strict=True)])
    weight = np.concatenate([p.weight[p.scored] for p in prepared])
    window = np.concatenate(
        [
            np.where(p.window_id[p.scored] >= 0, p.window_id[p.scored] + offset, -1)
            for p, offset in zip(prepared, offsets[:-1], strict=True)
        ]
    )
    reading = np.argsort(-score, kind="stable")  # reading indices rise along each window
    score, window = score[reading], window[reading]

    # Lowering the threshold past a reading adds its FP weight, or raises its window's part
    # to the weight of the earliest reading detected so far (from -fn_weight, the miss).
    gain = np.where(window < 0, weight[reading], 0.0)
    inside = np.flatnonzero(window >= 0)
    inside = inside[np.argsort(window[inside], kind="stable")]  # grouped by window
    group, at = window[inside], reading[inside]
    # A running minimum of the reading index per group in one pass: each group is lifted
    # above the previous ones, so the running maximum of (lift - index) never crosses groups.
    lift = group * (len(score) + 1)
    best = weight[lift - np.maximum.accumulate(lift - at)]
    first = np.ones(len(group), dtype=bool)
    first[1:] = group[1:] != group[:-1]
    gain[inside] = best - np.where(first, -profile.fn_weight, np.roll(best, 1))

    last_of_threshold = np.flatnonzero(np.append(score[1:] != score[:-1], True))
    thresholds = np.concatenate([[NO_DETECTION_THRESHOLD], score[last_of_threshold]])
    nothing_detected = sum(p.null for p in prepared)
    raws = nothing_detected + np.concatenate([[0.0], np.cumsum(gain)[last_of_threshold]])
    return thresholds, raws


def _scaled_sigmoid(position: np.ndarray | float) -> np.ndarray:
    """NAB's S(y) = 2 / (1 + e^(5y)) - 1, and exactly -1 beyond y = 3."""
    y = np.asarray(position, dtype=np.float64)
    return np.where(y > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * np.minimum(y, 3.0))) - 1.0)


def _normalize(raw: float, null: float, perfect: float) -> float:
    if perfect == null:
        raise ValueError("no anomaly windows to score: the NAB score is undefined")
    return 100.0 * (raw - null) / (perfect - null)


def _check_scores(file: NabFile, scores: np.ndarray) -> None:
    if scores.shape != file.timestamps.shape:
        raise ValueError(f"{file.name}: {len(scores)} scores for {len(file.timestamps)} readings")
    if not np.all((scores >= 0.0) & (scores <= 1.0)):
        raise ValueError(f"{file.name}: anomaly scores must lie in [0, 1]")


def _check_complete(files: Sequence[NabFile], scores: Mapping[str, np.ndarray]) -> None:
    missing = [f.name for f in files if f.name not in scores]
    if missing:
        raise ValueError(f"no scores for {len(missing)} of the files, e.g. {missing[:3]}")
