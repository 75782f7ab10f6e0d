"""The NAB corpus replayed through the real engine, and that replay's NAB scores.

Each corpus file is one stream. All files go through one engine side by side
(`service.replay`), each reading in file order with its own timestamp, exactly as the server
would receive them; a reading the server refuses (NAB has a few that step back in time) is
scored 0. Two things the server does are then scored with NAB's scorer
(`training.nab_scoring`):

* alerts: a detection is an alert opening (the alert rule: k of m readings over the
  threshold, hysteresis, cooldown). The rule itself (`service.scoring.update_alerts`) is
  re-run over the engine's scores at every threshold of a grid, which is the sweep.
* readings: a detection is a reading the server flags (`score >= threshold`), swept as NAB
  sweeps every entry.

Both are reported at each profile's swept best threshold and at the configured threshold
(the card's, or the settings' override): what the server actually does.

>>> registry = ModelRegistry.load(Settings().model)  # doctest: +SKIP
>>> replayed = replay_corpus(load_corpus(nab_dir), registry, Settings())  # doctest: +SKIP
>>> report = score_detector("x", replayed, profiles, AlertParams())  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from service import scoring
from service.errors import StreamwatchError
from service.registry import ModelRegistry
from service.replay import readings_of, replay
from service.results import Reading, Result
from service.settings import Settings
from training.nab import NabFile, Profile
from training.nab_scoring import (
    CorpusScore,
    EventMetrics,
    event_metrics,
    score_corpus,
    score_file,
    sweep,
)

# Alert thresholds tried, as q in 1 - 10^-q: a tenth of a decade apart, 0.9 to 1 - 1e-12.
THRESHOLD_GRID = 1.0 - 10.0 ** -np.round(np.arange(1.0, 12.01, 0.1), 2)
MODES = ("alerts", "readings")


@dataclass(frozen=True, eq=False)
class Replayed:
    """What the engine answered for one corpus file, reading by reading."""

    file: NabFile
    score: np.ndarray  # (readings,) the engine's score; 0 for a refused reading
    loc: np.ndarray  # (readings,) the forecast each reading was judged by; NaN if none
    scale: np.ndarray  # (readings,)
    applied: np.ndarray  # (readings,) bool: stepped (not refused, not a retried duplicate)
    may_alert: np.ndarray  # (readings,) bool: scored and past warm-up, as the alert rule saw it
    opened: np.ndarray  # (readings,) bool: an alert opened at this reading
    threshold: float  # the stream's configured threshold
    gap: np.ndarray  # (readings,) bool: the engine saw a gap in time before this reading

    @property
    def refused(self) -> int:
        return int(np.count_nonzero(~self.applied))


@dataclass(frozen=True)
class Operating:
    """A detector's NAB score at one threshold."""

    threshold: float
    score: float


@dataclass(frozen=True)
class ProfileScores:
    swept: Operating  # the best threshold for this profile over the whole corpus
    configured: Operating  # the threshold the server is configured with


@dataclass(frozen=True)
class FileRow:
    name: str
    readings: int
    windows: int
    refused: int
    alerts: int  # alerts opened at the standard profile's swept threshold
    detected: int  # windows those alerts hit
    false_alarms: int  # alerts outside every window
    raw: float  # NAB standard raw score of the file at that threshold
    null: float
    perfect: float

    @property
    def normalized(self) -> float | None:
        """The file's own normalized standard score; None for a file without windows."""
        if self.perfect == self.null:
            return None
        return 100.0 * (self.raw - self.null) / (self.perfect - self.null)


@dataclass(frozen=True)
class DetectorReport:
    """Everything measured about one detector on the corpus."""

    detector: str
    model: str
    configured_threshold: float
    profiles: dict[str, dict[str, ProfileScores]]  # mode -> profile -> scores
    categories: dict[str, dict[str, float | None]]  # category -> profile -> alerts, swept
    events: dict[str, EventMetrics]  # "configured" / "swept": alerts, standard profile
    files: list[FileRow]
    readings: int
    refused: int
    notes: list[str] = field(default_factory=list)  # what a reader must know to trust it

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        for row, file in zip(data["files"], self.files, strict=True):
            row["normalized"] = file.normalized
        return data


# -- replay --------------------------------------------------------------------------------


def nab_readings(file: NabFile, model: str | None = None) -> list[Reading]:
    """One corpus file as one stream's readings, named as NAB names the file."""
    seconds = (file.timestamps - np.datetime64(0, "s")) / np.timedelta64(1, "s")
    return readings_of(file.name, seconds.astype(np.float64), file.values[:, None], model)


def replay_corpus(
    files: Sequence[NabFile],
    registry: ModelRegistry,
    settings: Settings,
    model_of: Callable[[NabFile], str | None] | None = None,
) -> list[Replayed]:
    """Replay every file through one engine, side by side; `model_of` binds a file's stream."""
    streams = [nab_readings(f, model_of(f) if model_of else None) for f in files]
    total = sum(len(s) for s in streams)
    # All readings are queued at once, and no round need wait for more to arrive.
    engine = settings.engine.model_copy(
        update={"max_wait_ms": 0.0, "max_queued": max(total, settings.engine.max_queued)}
    )
    outcomes, _ = asyncio.run(
        replay(registry, settings.model_copy(update={"engine": engine}), streams)
    )
    return [_replayed(f, o) for f, o in zip(files, outcomes, strict=True)]


def _replayed(file: NabFile, outcomes: Sequence[Result | StreamwatchError]) -> Replayed:
    n = len(outcomes)
    score, loc, scale = np.zeros(n), np.full(n, np.nan), np.full(n, np.nan)
    applied, may_alert, opened, gap = (np.zeros(n, bool) for _ in range(4))
    threshold = np.nan
    for i, outcome in enumerate(outcomes):
        if not isinstance(outcome, Result):
            continue  # refused: the server did not apply it
        score[i] = outcome.score
        threshold = outcome.threshold
        if outcome.duplicate:
            continue  # answered with the earlier reading's result; nothing stepped
        applied[i] = True
        gap[i] = outcome.gap
        if outcome.forecast_loc is not None and outcome.forecast_scale is not None:
            loc[i], scale[i] = outcome.forecast_loc[0], outcome.forecast_scale[0]
            may_alert[i] = not outcome.warming_up
        opened[i] = outcome.alert is not None and outcome.alert.event == "opened"
    return Replayed(file, score, loc, scale, applied, may_alert, opened, float(threshold), gap)


# -- the alert rule at other thresholds ------------------------------------------------------


def alert_openings(
    replayed: Sequence[Replayed], thresholds: np.ndarray, params: scoring.AlertParams
) -> list[list[np.ndarray]]:
    """Where alerts open at each threshold: [file][threshold] -> reading indices."""
    n_files, length = len(replayed), max(len(r.score) for r in replayed)
    score = np.zeros((n_files, length))
    may_alert = np.zeros((n_files, length), bool)
    applied = np.zeros((n_files, length), bool)
    for i, r in enumerate(replayed):
        score[i, : len(r.score)] = r.score
        may_alert[i, : len(r.score)] = r.may_alert
        applied[i, : len(r.score)] = r.applied
    return openings(score, may_alert, applied, thresholds, params)


def openings(
    score: np.ndarray,
    may_alert: np.ndarray,
    applied: np.ndarray,
    thresholds: np.ndarray,
    params: scoring.AlertParams,
) -> list[list[np.ndarray]]:
    """Where alerts open at each threshold: [file][threshold] -> reading indices.

    score, may_alert, applied: (files, time). Runs `service.scoring.update_alerts`, the
    server's rule, with every (file, threshold) pair as one row, one time index at a time;
    readings the engine did not step (`applied` false) are skipped.
    """
    n_files, length = score.shape
    n_thr = len(thresholds)
    rows = n_files * n_thr
    threshold = np.tile(np.asarray(thresholds, np.float64), n_files)  # (rows,) file-major
    open_hits, hold_hits = np.zeros(rows, np.uint32), np.zeros(rows, np.uint32)
    is_open, cooldown = np.zeros(rows, bool), np.zeros(rows, np.int32)
    hits: list[tuple[int, np.ndarray]] = []
    for t in range(length):
        step = np.repeat(applied[:, t], n_thr)
        u = scoring.update_alerts(
            np.repeat(score[:, t], n_thr),
            threshold,
            np.repeat(may_alert[:, t], n_thr),
            open_hits,
            hold_hits,
            is_open,
            cooldown,
            params,
        )
        open_hits = np.where(step, u.open_hits, open_hits)
        hold_hits = np.where(step, u.hold_hits, hold_hits)
        is_open = np.where(step, u.is_open, is_open)
        cooldown = np.where(step, u.cooldown, cooldown)
        opened = np.flatnonzero(u.opened & step)
        if opened.size:
            hits.append((t, opened))
    found: list[list[list[int]]] = [[[] for _ in range(n_thr)] for _ in range(n_files)]
    for t, opened in hits:
        for row in opened.tolist():
            found[row // n_thr][row % n_thr].append(t)
    return [[np.array(ts, np.int64) for ts in per_file] for per_file in found]


def _flags(file: NabFile, indices: np.ndarray) -> np.ndarray:
    flags = np.zeros(len(file.timestamps))
    flags[indices] = 1.0
    return flags


# -- scoring -------------------------------------------------------------------------------


def score_detector(
    detector: str,
    replayed: Sequence[Replayed],
    profiles: Mapping[str, Profile],
    alert_params: scoring.AlertParams,
    model: str = "",
) -> DetectorReport:
    """NAB scores of one detector's replay: both modes, every profile, swept and configured."""
    files = [r.file for r in replayed]
    configured = _configured_threshold(replayed)
    grid = np.unique(np.append(THRESHOLD_GRID, configured))[::-1]  # high to low
    openings = alert_openings(replayed, grid, alert_params)
    at_grid = [
        {f.name: _flags(f, openings[i][k]) for i, f in enumerate(files)} for k in range(len(grid))
    ]
    at_configured = at_grid[int(np.flatnonzero(grid == configured)[0])]
    scores = {r.file.name: r.score for r in replayed}

    results: dict[str, dict[str, ProfileScores]] = {mode: {} for mode in MODES}
    best_flags: dict[str, dict[str, np.ndarray]] = {}
    for name, profile in profiles.items():
        by_threshold = [_normalized(files, flags, 0.5, profile) for flags in at_grid]
        best = int(np.argmax(by_threshold))  # the first maximum: the highest such threshold
        best_flags[name] = at_grid[best]
        results["alerts"][name] = ProfileScores(
            swept=Operating(float(grid[best]), by_threshold[best]),
            configured=Operating(configured, _normalized(files, at_configured, 0.5, profile)),
        )
        results["readings"][name] = ProfileScores(
            swept=Operating(*sweep(files, scores, profile)),
            configured=Operating(configured, _normalized(files, scores, configured, profile)),
        )
    standard = _standard(profiles)
    headline = best_flags[standard]
    return DetectorReport(
        detector=detector,
        model=model,
        configured_threshold=configured,
        profiles=results,
        categories=_categories(files, best_flags, profiles),
        events={
            "configured": event_metrics(files, at_configured, 0.5),
            "swept": event_metrics(files, headline, 0.5),
        },
        files=_file_rows(replayed, headline, profiles[standard]),
        readings=sum(len(f.timestamps) for f in files),
        refused=sum(r.refused for r in replayed),
    )


def _configured_threshold(replayed: Sequence[Replayed]) -> float:
    thresholds = {r.threshold for r in replayed if np.isfinite(r.threshold)}
    if len(thresholds) != 1:
        raise ValueError(
            f"the streams have thresholds {sorted(thresholds)}; a NAB run needs exactly one "
            "(drop per-stream threshold overrides)"
        )
    return thresholds.pop()


def _standard(profiles: Mapping[str, Profile]) -> str:
    return "standard" if "standard" in profiles else next(iter(profiles))


def _categories(
    files: Sequence[NabFile],
    flags: Mapping[str, Mapping[str, np.ndarray]],
    profiles: Mapping[str, Profile],
) -> dict[str, dict[str, float | None]]:
    """Each category's normalized alert score at the corpus-wide swept threshold."""
    by_category: dict[str, list[NabFile]] = {}
    for f in files:
        by_category.setdefault(f.name.split("/")[0], []).append(f)
    table: dict[str, dict[str, float | None]] = {}
    for category, members in by_category.items():
        has_windows = any(f.windows for f in members)
        table[category] = {
            name: _normalized(members, flags[name], 0.5, profile) if has_windows else None
            for name, profile in profiles.items()
        }
    return table


def _normalized(
    files: Sequence[NabFile], scores: Mapping[str, np.ndarray], threshold: float, profile: Profile
) -> float:
    result: CorpusScore = score_corpus(
        files, {f.name: scores[f.name] for f in files}, threshold, profile
    )
    return result.normalized


def _file_rows(
    replayed: Sequence[Replayed], flags: Mapping[str, np.ndarray], profile: Profile
) -> list[FileRow]:
    rows = []
    for r in replayed:
        f = r.file
        scored = score_file(f, flags[f.name], 0.5, profile)
        events = event_metrics([f], {f.name: flags[f.name]}, 0.5)
        rows.append(
            FileRow(
                name=f.name,
                readings=len(f.timestamps),
                windows=len(f.windows),
                refused=r.refused,
                alerts=int(np.count_nonzero(flags[f.name])),
                detected=events.detected,
                false_alarms=events.false_alarms,
                raw=scored.raw,
                null=scored.null,
                perfect=scored.perfect,
            )
        )
    return rows
