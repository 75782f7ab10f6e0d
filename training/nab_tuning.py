"""Tune the post-processing on NAB: replay the corpus once, then score many candidates fast.

The engine's replay (`training.nab_replay`) is the slow part, and what it computes up to the
forecast does not depend on the post-processing. So the corpus is replayed once per engine
setting that matters (the gap policy and factor), and each reading's standardized forecast
error z, whether it was stepped, may alert, and followed a gap, is kept in (files, time)
arrays. A candidate is then the server's own one-step functions (`service.likelihood.step`,
`service.scoring.update_alerts`) run over those arrays one time index at a time, all files
side by side, exactly as the engine advances a round; NAB's scorer sweeps the threshold.

    python -m training.nab_tuning ../shared/data/nab --cache runs/nab-tuning

prints the table of candidates; `--cache` keeps the replays between runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from service import likelihood, scoring
from service.model import Calibration
from service.registry import ModelRegistry
from service.settings import Settings
from training.nab import NabFile, Profile, load_corpus, load_profiles
from training.nab_replay import openings, replay_corpus
from training.nab_scoring import _prepare, score_corpus

# Thresholds tried, as q in 1 - 10^-q: 0.05 decades apart from 1 - 10^-1.5 to 1 - 10^-9.
Q_GRID = np.round(np.arange(1.5, 9.001, 0.05), 2)


@dataclass(frozen=True, eq=False)
class ReplayArrays:
    """What the engine had for every reading of the corpus, files side by side.

    All arrays are (files, time), padded past each file's end with readings not `applied`.
    """

    names: list[str]
    lengths: np.ndarray  # (files,)
    ts: np.ndarray  # the reading's epoch seconds
    x: np.ndarray  # the reading's value
    z: np.ndarray  # standardized forecast error; NaN where there was no forecast
    applied: np.ndarray  # bool: the engine stepped the reading
    may_alert: np.ndarray  # bool: scored and past warm-up
    gap: np.ndarray  # bool: a gap in time came before the reading

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path, names=np.array(self.names), lengths=self.lengths, ts=self.ts, x=self.x, z=self.z,
            applied=self.applied, may_alert=self.may_alert, gap=self.gap,
        )

    @classmethod
    def load(cls, path: Path) -> ReplayArrays:
        with np.load(path) as data:
            return cls(
                [str(n) for n in data["names"]], data["lengths"], data["ts"], data["x"], data["z"],
                data["applied"], data["may_alert"], data["gap"],
            )


def replay_arrays(files: Sequence[NabFile], settings: Settings, model: str) -> ReplayArrays:
    """Replay the corpus through the real engine once and keep what scoring needs."""
    registry = ModelRegistry.load(settings.model)
    replayed = replay_corpus(files, registry, settings, lambda f: model)
    n, length = len(files), max(len(f.values) for f in files)
    ts, x, z = np.zeros((n, length)), np.zeros((n, length)), np.full((n, length), np.nan)
    applied, may_alert, gap = (np.zeros((n, length), bool) for _ in range(3))
    for i, r in enumerate(replayed):
        k = len(r.score)
        ts[i, :k] = (r.file.timestamps - np.datetime64(0, "s")) / np.timedelta64(1, "s")
        x[i, :k] = r.file.values
        with np.errstate(invalid="ignore"):
            z[i, :k] = (r.file.values - r.loc) / r.scale
        applied[i, :k], may_alert[i, :k], gap[i, :k] = r.applied, r.may_alert, r.gap
    lengths = np.array([len(f.values) for f in files])
    return ReplayArrays([f.name for f in files], lengths, ts, x, z, applied, may_alert, gap)


# -- scoring a candidate ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """A candidate's NAB scores: per profile, (q, score) swept over Q_GRID and at q_configured."""

    swept: dict[str, tuple[float, float]]
    configured: dict[str, float]
    categories: dict[str, dict[str, float]]  # category -> profile -> score at the standard q
    # "odd" / "even" files (by position in the corpus) -> profile -> score at the configured
    # q: a change tuned on the whole corpus should hold on both halves, not only on average.
    halves: dict[str, dict[str, float]]
    alerts: int  # alerts opened over the corpus at the configured threshold


class NabJudge:
    """NAB's scorer, prepared once per corpus, judging alert openings at many thresholds.

    NAB's per-reading weights (`training.nab_scoring._prepare`) are computed once per file
    and profile: `score_corpus` recomputes them at every threshold, hundreds per candidate.
    """

    def __init__(self, files: Sequence[NabFile], profiles: Mapping[str, Profile]):
        self.files = list(files)
        self.profiles = dict(profiles)
        self._prepared = {
            name: [_prepare(f, np.zeros(len(f.values)), p) for f in self.files]
            for name, p in self.profiles.items()
        }

    def raw(self, profile: str, file: int, opened: np.ndarray) -> float:
        """NAB's raw score of one file whose detections are the readings `opened`."""
        p = self._prepared[profile][file]
        hits = opened[p.scored[opened]]
        window = p.window_id[hits]
        raw = float(p.weight[hits[window < 0]].sum())
        found = np.unique(window[window >= 0], return_index=True)
        raw += float(p.weight[hits[window >= 0][found[1]]].sum())  # each window's first
        missed = len(np.unique(p.window_id[p.scored & (p.window_id >= 0)])) - len(found[0])
        return raw - missed * self.profiles[profile].fn_weight

    def normalized(
        self, profile: str, openings: Sequence[np.ndarray], members: Sequence[int]
    ) -> float:
        """The normalized score of the files `members`, detections at `openings[file]`."""
        prepared = self._prepared[profile]
        raw = sum(self.raw(profile, i, openings[i]) for i in members)
        null = sum(prepared[i].null for i in members)
        perfect = sum(prepared[i].perfect for i in members)
        return 100.0 * (raw - null) / (perfect - null)

    def categories(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for i, f in enumerate(self.files):
            if f.windows:
                groups.setdefault(f.name.split("/")[0], []).append(i)
        return groups


def alert_openings(
    scores: np.ndarray,
    arrays: ReplayArrays,
    thresholds: np.ndarray,
    params: scoring.AlertParams,
) -> list[list[np.ndarray]]:
    """Where the server's alert rule opens alerts: [threshold][file] -> reading indices.

    scores: (files, time); see `training.nab_replay.openings`.
    """
    by_file = openings(scores, arrays.may_alert, arrays.applied, thresholds, params)
    return [list(per_threshold) for per_threshold in zip(*by_file, strict=True)]


def judge(
    scores: np.ndarray,
    arrays: ReplayArrays,
    nab: NabJudge,
    alert_params: scoring.AlertParams,
    q_configured: float,
    q_grid: np.ndarray = Q_GRID,
) -> Scored:
    """NAB scores of a candidate's scores (files, time) under the server's alert rule."""
    qs = np.unique(np.append(q_grid, q_configured))
    openings = alert_openings(scores, arrays, 1.0 - 10.0**-qs, alert_params)
    everything = list(range(len(nab.files)))
    swept: dict[str, tuple[float, float]] = {}
    configured: dict[str, float] = {}
    at_configured = openings[int(np.flatnonzero(qs == q_configured)[0])]
    for name in nab.profiles:
        by_q = [nab.normalized(name, o, everything) for o in openings]
        best = int(np.argmax(by_q))
        swept[name] = (float(qs[best]), by_q[best])
        configured[name] = nab.normalized(name, at_configured, everything)
    categories = {
        category: {name: nab.normalized(name, at_configured, members) for name in nab.profiles}
        for category, members in nab.categories().items()
    }
    halves = {
        half: {name: nab.normalized(name, at_configured, everything[start::2])
               for name in nab.profiles}
        for half, start in (("odd", 1), ("even", 0))
    }
    return Scored(swept, configured, categories, halves, sum(len(o) for o in at_configured))


# -- running a candidate -------------------------------------------------------------------


def likelihood_scores(
    arrays: ReplayArrays,
    calibration: Calibration,
    params: likelihood.LikelihoodParams,
    rewarm: bool,
) -> np.ndarray:
    """The scores (files, time) `service.likelihood.step` gives, as the engine would call it.

    One step per time index over all files; a file's row moves only where the engine stepped
    its reading, and a gap under the rewarm policy starts the stream's state afresh.
    """
    n_files, length = arrays.z.shape
    state = likelihood.initial_state(n_files, 1, params)
    fresh = likelihood.initial_state(n_files, 1, params)
    scores = np.zeros((n_files, length))  # (files, time)
    for t in range(length):
        applied = arrays.applied[:, t]
        if rewarm and arrays.gap[:, t].any():
            state = _where(arrays.gap[:, t], fresh, state)
        x, z = arrays.x[:, t : t + 1], arrays.z[:, t : t + 1]  # (files, channels)
        observed = applied[:, None] & ~np.isnan(x)
        judged = observed & ~np.isnan(z)  # observed, with a forecast to judge it by
        scorable = judged.any(axis=1)
        s = scoring.surprise(np.where(judged, z, 0.0), judged, calibration)
        update = likelihood.step(
            s, x, observed, arrays.ts[:, t], state, scorable, arrays.may_alert[:, t], params
        )
        state = _where(applied, update.state, state)
        scores[:, t] = np.where(applied, update.score, 0.0)
    return scores


def _where(
    rows: np.ndarray, new: likelihood.LikelihoodState, old: likelihood.LikelihoodState
) -> likelihood.LikelihoodState:
    """`new` in `rows`, `old` elsewhere."""
    merged = {}
    for name in likelihood.LikelihoodState.__dataclass_fields__:
        a, b = getattr(new, name), getattr(old, name)
        merged[name] = np.where(rows.reshape(-1, *([1] * (a.ndim - 1))), a, b)
    return likelihood.LikelihoodState(**merged)


# -- the candidates ------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One post-processing: engine gap handling, scoring, alert rule, configured threshold."""

    name: str
    likelihood: likelihood.LikelihoodParams
    gap_policy: str = "rewarm"
    gap_factor: float = 10.0
    alerts: scoring.AlertParams = scoring.AlertParams()
    q_configured: float | None = 5.0  # the configured threshold is 1 - 10^-q; None: the card's


# The likelihood alone, over 10 readings (the first recipe tried).
_PLAIN = likelihood.LikelihoodParams(
    window=10, range_tail=1.0, day_bins=0, level_window=0, quiet_tail=False, forecast_weight=1.0
)
_RANGE = replace(_PLAIN, range_tail=likelihood.LikelihoodParams().range_tail)
_PROFILE = replace(_RANGE, window=15, day_bins=likelihood.LikelihoodParams().day_bins)
# What the server does with its default settings and the bundled card's threshold.
RECOMMENDED = Candidate(
    "likelihood + range + day profile + level + quiet tail (the server's defaults)",
    likelihood.LikelihoodParams.of(Settings().scoring),
    gap_policy=Settings().time.gap_policy,
    gap_factor=Settings().time.gap_factor,
    q_configured=None,
)
CANDIDATES = [
    Candidate("likelihood of one reading's surprise", replace(_PLAIN, window=1)),
    Candidate("likelihood of the 10-reading average", _PLAIN),
    Candidate("... averaged over 15", replace(_PLAIN, window=15)),
    Candidate("... averaged over 20", replace(_PLAIN, window=20)),
    Candidate("likelihood + range (margin 0.05)", replace(_RANGE, range_margin=0.05)),
    Candidate("likelihood + range (margin 0.02)", _RANGE),
    Candidate("likelihood + range, gap policy ignore", _RANGE, gap_policy="ignore"),
    Candidate("likelihood + range, gap factor 100", _RANGE, gap_factor=100.0),
    Candidate("likelihood + range + day profile (window 15 from here on)", _PROFILE),
    Candidate("likelihood + range + day profile, gap factor 100", _PROFILE, gap_factor=100.0),
    Candidate("... + quiet tail", replace(_PROFILE, quiet_tail=True), gap_factor=100.0),
    Candidate("... + level test over 30 values", replace(_PROFILE, level_window=30),
              gap_factor=100.0),
    RECOMMENDED,
    replace(RECOMMENDED, name="... threshold 1 - 10^-4.5", q_configured=4.5),
    replace(RECOMMENDED, name="... threshold 1 - 10^-6", q_configured=6.0),
    replace(RECOMMENDED, name="... gap policy ignore", gap_policy="ignore", gap_factor=10.0),
    replace(RECOMMENDED, name="... no range rule",
            likelihood=likelihood.LikelihoodParams(range_tail=1.0)),
    replace(RECOMMENDED, name="... level over 20 values",
            likelihood=likelihood.LikelihoodParams(level_window=20)),
    replace(RECOMMENDED, name="... level over 50 values",
            likelihood=likelihood.LikelihoodParams(level_window=50)),
    replace(RECOMMENDED, name="... profile alpha 0.02",
            likelihood=likelihood.LikelihoodParams(day_alpha=0.02)),
    replace(RECOMMENDED, name="... profile of 48 bins",
            likelihood=likelihood.LikelihoodParams(day_bins=48)),
    replace(RECOMMENDED, name="... window 10", likelihood=likelihood.LikelihoodParams(window=10)),
    replace(RECOMMENDED, name="... window 20", likelihood=likelihood.LikelihoodParams(window=20)),
    replace(RECOMMENDED, name="... horizon 2000, min var 1e-3 (the defaults until 2026-12)",
            likelihood=likelihood.LikelihoodParams(horizon=2000, min_var=1e-3)),
    replace(RECOMMENDED, name="... horizon 2000",
            likelihood=likelihood.LikelihoodParams(horizon=2000)),
    replace(RECOMMENDED, name="... horizon 8000",
            likelihood=likelihood.LikelihoodParams(horizon=8000)),
    replace(RECOMMENDED, name="... min var 1e-3",
            likelihood=likelihood.LikelihoodParams(min_var=1e-3)),
    replace(RECOMMENDED, name="... min var 0.05",
            likelihood=likelihood.LikelihoodParams(min_var=0.05)),
    replace(RECOMMENDED, name="... settle 100", likelihood=likelihood.LikelihoodParams(settle=100)),
    replace(RECOMMENDED, name="... cooldown 50", alerts=scoring.AlertParams(cooldown=50)),
    replace(RECOMMENDED, name="... cooldown 200", alerts=scoring.AlertParams(cooldown=200)),
    replace(RECOMMENDED, name="... k=2 of m=3", alerts=scoring.AlertParams(k=2, m=3)),
    *(
        replace(RECOMMENDED, name=f"... forecast weight {weight:g}",
                likelihood=likelihood.LikelihoodParams(forecast_weight=weight))
        for weight in (1.0, 0.9, 0.6, 0.5)
    ),
    *(
        replace(RECOMMENDED, name=f"... learn clip {clip:g} sd",
                likelihood=likelihood.LikelihoodParams(learn_clip=clip))
        for clip in (0.0, 4.0, 12.0)
    ),
]


def candidate_scores(
    candidate: Candidate, arrays: ReplayArrays, calibration: Calibration
) -> np.ndarray:
    """A candidate's scores (files, time) over replayed arrays made with its gap settings."""
    rewarm = candidate.gap_policy == "rewarm"
    return likelihood_scores(arrays, calibration, candidate.likelihood, rewarm)


def check_against_nab_scorer(
    scores: np.ndarray, arrays: ReplayArrays, nab: NabJudge, alerts: scoring.AlertParams,
    q: float,
) -> dict[str, float]:
    """The project's NAB scorer (`score_corpus`) on the alert openings at 1 - 10^-q."""
    openings = alert_openings(scores, arrays, np.array([1.0 - 10.0**-q]), alerts)[0]
    flags = {}
    for f, opened in zip(nab.files, openings, strict=True):
        flags[f.name] = np.zeros(len(f.values))
        flags[f.name][opened] = 1.0
    return {
        name: score_corpus(nab.files, flags, 0.5, profile).normalized
        for name, profile in nab.profiles.items()
    }


def cached_replay(
    files: Sequence[NabFile], model: str, policy: str, factor: float, cache: Path | None
) -> ReplayArrays:
    path = cache / f"replay-{model}-{policy}-{factor:g}.npz" if cache else None
    if path is not None and path.is_file():
        return ReplayArrays.load(path)
    settings = Settings(time={"gap_policy": policy, "gap_factor": factor})
    arrays = replay_arrays(files, settings, model)
    if path is not None:
        arrays.save(path)
    return arrays


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m training.nab_tuning", description=__doc__)
    p.add_argument("nab_dir", type=Path)
    p.add_argument("--model", default="default")
    p.add_argument("--cache", type=Path, help="folder keeping the replays between runs")
    p.add_argument("--only", help="run only the candidates whose name contains this")
    p.add_argument("--json", type=Path, help="write the table here too")
    args = p.parse_args(argv)
    files = load_corpus(args.nab_dir)
    profiles = load_profiles(args.nab_dir)
    nab = NabJudge(files, profiles)
    card = ModelRegistry.load(Settings().model).get(args.model).card
    card_q = float(-np.log10(1.0 - card.threshold))
    chosen = [c for c in CANDIDATES if args.only is None or args.only in c.name]
    rows = []
    print("| candidate | swept: standard / low FP / low FN (at q) | configured q | "
          "standard / low FP / low FN | odd files | even files | alerts |")
    print("|---|---|---|---|---|---|---|")
    for c in chosen:
        started = time.perf_counter()
        arrays = cached_replay(files, args.model, c.gap_policy, c.gap_factor, args.cache)
        q = card_q if c.q_configured is None else c.q_configured
        scores = candidate_scores(c, arrays, card.calibration)
        result = judge(scores, arrays, nab, c.alerts, q)
        swept = " / ".join(f"{s:.1f} ({q:g})" for q, s in result.swept.values())
        configured = " / ".join(f"{s:.1f}" for s in result.configured.values())
        odd, even = (" / ".join(f"{s:.1f}" for s in result.halves[h].values())
                     for h in ("odd", "even"))
        print(f"| {c.name} | {swept} | {q:.2f} | {configured} | {odd} | {even} | "
              f"{result.alerts} |", flush=True)
        print(f"  ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
        rows.append({"candidate": asdict(c), "result": asdict(result)})
        if c == RECOMMENDED:
            checked = check_against_nab_scorer(scores, arrays, nab, c.alerts, q)
            print("\n  the same through training.nab_scoring.score_corpus: "
                  + " / ".join(f"{v:.1f}" for v in checked.values()))
            print("  per category at the configured threshold (standard / low FP / low FN):")
            for category, by_profile in result.categories.items():
                print(f"  {category}: " + " / ".join(f"{v:.1f}" for v in by_profile.values()))
            print()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
