"""The tuning harness: it scores as NAB's scorer does and steps as the server would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service import likelihood, scoring
from service.model import Calibration
from training.nab import NabFile, Profile
from training.nab_scoring import score_corpus
from training.nab_tuning import NabJudge, ReplayArrays, alert_openings, likelihood_scores

PROFILES = {
    "standard": Profile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", tp_weight=1.0, fp_weight=0.11,
                                  fn_weight=2.0),
}
PARAMS = likelihood.LikelihoodParams(window=5, horizon=100, settle=10, day_bins=24)


def _file(name: str, n: int, windows: list[tuple[int, int]]) -> NabFile:
    timestamps = np.datetime64("2014-01-01T00:00:00") + np.arange(n) * np.timedelta64(300, "s")
    bounds = tuple((timestamps[a], timestamps[b]) for a, b in windows)
    return NabFile(name, timestamps, np.zeros(n), bounds)


def _arrays(lengths: list[int], seed: int = 0) -> ReplayArrays:
    """Replayed arrays for files of `lengths`, as an engine would have left them."""
    rng = np.random.default_rng(seed)
    n, length = len(lengths), max(lengths)
    applied = np.arange(length)[None, :] < np.array(lengths)[:, None]
    applied[0, 40] = False  # a reading the engine refused
    z = np.where(applied, rng.standard_t(3, (n, length)), np.nan)
    z[:, 0] = np.nan  # no forecast for a stream's first reading
    z[1, 150:155] = 40.0  # a run of misses
    gap = np.zeros((n, length), bool)
    gap[1, 100] = True
    may_alert = applied & (np.arange(length)[None, :] >= 20)
    ts = np.arange(length)[None, :] * 300.0 + np.array([[0.0], [7200.0], [50.0]])[:n]
    x = rng.normal(0.0, 1.0, (n, length)).cumsum(axis=1)
    return ReplayArrays([f"c/f{i}.csv" for i in range(n)], np.array(lengths), ts, x, z,
                        applied, may_alert, gap)


CALIBRATION = Calibration(abs_z=[0.0, 1.0, 2.0, 3.0], log_tail=[0.0, -1.2, -3.0, -5.9])


def test_the_judge_scores_alert_openings_as_the_nab_scorer_does() -> None:
    files = [_file("c/a.csv", 400, [(100, 139), (300, 339)]), _file("c/b.csv", 300, [(200, 229)]),
             _file("d/c.csv", 200, [])]
    judge = NabJudge(files, PROFILES)
    rng = np.random.default_rng(1)
    for _ in range(20):
        openings = [np.sort(rng.choice(len(f.values), rng.integers(0, 8), replace=False))
                    for f in files]
        flags = {f.name: np.isin(np.arange(len(f.values)), o) * 1.0
                 for f, o in zip(files, openings, strict=True)}
        for name, profile in PROFILES.items():
            expected = score_corpus(files, flags, 0.5, profile).normalized
            assert judge.normalized(name, openings, [0, 1, 2]) == pytest.approx(expected, abs=1e-9)


def test_harness_scores_equal_the_server_step_run_on_each_file_alone() -> None:
    arrays = _arrays([300, 250, 180])
    scores = likelihood_scores(arrays, CALIBRATION, PARAMS, rewarm=True)
    assert np.count_nonzero(scores > 0.999) > 0
    for i, length in enumerate(arrays.lengths.tolist()):
        state = likelihood.initial_state(1, 1, PARAMS)
        for t in range(length):
            if not arrays.applied[i, t]:
                assert scores[i, t] == 0.0
                continue
            if arrays.gap[i, t]:
                state = likelihood.initial_state(1, 1, PARAMS)  # the rewarm policy
            z = arrays.z[i : i + 1, t : t + 1]
            has_forecast = ~np.isnan(z)
            s = scoring.surprise(np.where(has_forecast, z, 0.0), has_forecast, CALIBRATION)
            update = likelihood.step(
                s, arrays.x[i : i + 1, t : t + 1], np.ones((1, 1), bool),
                arrays.ts[i, t : t + 1], state, has_forecast[:, 0],
                arrays.may_alert[i, t : t + 1], PARAMS,
            )
            assert scores[i, t] == update.score[0]
            state = update.state
        assert np.all(scores[i, length:] == 0.0)


def test_an_alert_opens_where_the_score_first_reaches_the_threshold_and_cooldown_holds_it() -> None:
    arrays = _arrays([300, 250, 180])
    scores = np.zeros((3, 300))
    scores[0, [30, 35, 250]] = 1.0 - 1e-6  # 35: the alert opened at 30 is still open
    scores[2, 10] = 1.0  # in warm-up: may not alert
    params = scoring.AlertParams(k=1, m=3, cooldown=100)
    at = alert_openings(scores, arrays, np.array([1.0 - 1e-5, 1.0 - 1e-7]), params)
    assert [o.tolist() for o in at[0]] == [[30, 250], [], []]
    assert [o.tolist() for o in at[1]] == [[], [], []]


def test_replayed_arrays_read_back_as_saved(tmp_path: Path) -> None:
    arrays = _arrays([300, 250, 180])
    arrays.save(tmp_path / "replay.npz")
    back = ReplayArrays.load(tmp_path / "replay.npz")
    assert back.names == arrays.names
    for name in ("lengths", "ts", "x", "z", "applied", "may_alert", "gap"):
        np.testing.assert_array_equal(getattr(back, name), getattr(arrays, name))
