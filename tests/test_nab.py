"""NAB corpus loading, the NAB scorer and sweep, event metrics and the results writer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from training.nab import NabFile, Profile, load_corpus, load_profiles, load_scores, write_results
from training.nab_scoring import (
    event_metrics,
    probation_length,
    score_corpus,
    score_file,
    sweep,
)

NAB_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "nab"
STANDARD = Profile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
LOW_FN = Profile("reward_low_FN_rate", tp_weight=1.0, fp_weight=0.11, fn_weight=2.0)


def _s(y: float) -> float:
    """NAB's scaled sigmoid by hand: 2 / (1 + e^(5y)) - 1 = -tanh(5y / 2)."""
    return -math.tanh(2.5 * y)


def _file(n: int, windows: list[tuple[int, int]], name: str = "cat/series.csv") -> NabFile:
    """A series of ``n`` readings a minute apart with windows given as reading indices."""
    timestamps = np.datetime64("2014-01-01T00:00:00") + np.arange(n) * np.timedelta64(60, "s")
    bounds = tuple((timestamps[first], timestamps[last]) for first, last in windows)
    return NabFile(name, timestamps, np.zeros(n), bounds)


def _flags(n: int, *indices: int) -> np.ndarray:
    scores = np.zeros(n)
    scores[list(indices)] = 1.0
    return scores


# 100 readings: probation is readings 0..14, one window of 10 readings at 40..49.
ONE_WINDOW = _file(100, [(40, 49)])


@pytest.fixture(scope="module")
def nab_dir() -> Path:
    if not (NAB_DIR / "labels" / "combined_windows.json").is_file():
        pytest.fail(
            f"NAB corpus not found at {NAB_DIR}: clone the repo with shared/ beside it "
            "(shared/data/nab holds numenta/NAB's data, labels, config and reference/)."
        )
    return NAB_DIR


@pytest.fixture(scope="module")
def corpus(nab_dir: Path) -> list[NabFile]:
    return load_corpus(nab_dir)


@pytest.fixture(scope="module")
def numenta_scores(nab_dir: Path) -> dict[str, np.ndarray]:
    return load_scores(nab_dir / "reference" / "numenta", "numenta")


# --- the acceptance test: the published scoreboard -------------------------------------


@pytest.mark.parametrize("profile_name", ["standard", "reward_low_FP_rate", "reward_low_FN_rate"])
def test_published_numenta_scores_at_published_thresholds_reproduce_the_scoreboard(
    nab_dir: Path,
    corpus: list[NabFile],
    numenta_scores: dict[str, np.ndarray],
    profile_name: str,
) -> None:
    profile = load_profiles(nab_dir)[profile_name]
    published = json.loads((nab_dir / "config" / "thresholds.json").read_text())["numenta"]
    board = json.loads((nab_dir / "reference" / "final_results.json").read_text())["numenta"]

    result = score_corpus(corpus, numenta_scores, published[profile_name]["threshold"], profile)

    assert result.normalized == pytest.approx(board[profile_name], abs=0.1)
    assert result.raw == pytest.approx(published[profile_name]["score"], abs=1e-6)
    assert result.null == -116.0 * profile.fn_weight
    assert result.perfect == 116.0 * profile.tp_weight


@pytest.mark.parametrize("profile_name", ["standard", "reward_low_FP_rate", "reward_low_FN_rate"])
def test_sweep_finds_at_least_the_published_score_and_its_threshold_scores_so(
    nab_dir: Path,
    corpus: list[NabFile],
    numenta_scores: dict[str, np.ndarray],
    profile_name: str,
) -> None:
    profile = load_profiles(nab_dir)[profile_name]
    board = json.loads((nab_dir / "reference" / "final_results.json").read_text())["numenta"]

    threshold, normalized = sweep(corpus, numenta_scores, profile)

    assert normalized >= board[profile_name] - 1e-9
    rescored = score_corpus(corpus, numenta_scores, threshold, profile)
    assert rescored.normalized == pytest.approx(normalized, abs=1e-9)


def test_corpus_holds_58_series_116_windows_and_365558_readings(corpus: list[NabFile]) -> None:
    assert len(corpus) == 58
    assert sum(len(f.windows) for f in corpus) == 116
    assert sum(len(f.timestamps) for f in corpus) == 365_558
    taxi = next(f for f in corpus if f.name == "realKnownCause/nyc_taxi.csv")
    assert len(taxi.windows) == 5
    assert taxi.values[0] == 10844.0
    assert taxi.timestamps[0] == np.datetime64("2014-07-01T00:00:00")


def test_null_detector_normalizes_to_0_and_perfect_detector_to_100_on_the_corpus(
    corpus: list[NabFile],
) -> None:
    null = {f.name: np.zeros(len(f.timestamps)) for f in corpus}
    perfect = {f.name: np.zeros(len(f.timestamps)) for f in corpus}
    for f in corpus:
        perfect[f.name][[first for first, _ in f.window_indices()]] = 1.0

    for profile in (STANDARD, LOW_FN):
        assert score_corpus(corpus, null, 0.5, profile).normalized == 0.0
        assert score_corpus(corpus, perfect, 0.5, profile).normalized == pytest.approx(100.0)


# --- hand-computed cases -----------------------------------------------------------------


def test_detection_at_a_window_start_earns_the_full_tp_weight() -> None:
    result = score_file(ONE_WINDOW, _flags(100, 40), 0.5, STANDARD)

    assert result.raw == pytest.approx(1.0)
    assert (result.tp, result.fp, result.fn, result.tn) == (1, 0, 9, 75)


def test_detection_at_a_window_end_earns_the_sigmoid_of_minus_one_tenth() -> None:
    # NAB's position is -(end - i + 1) / width: -0.1 at the last of 10 readings, never 0.
    result = score_file(ONE_WINDOW, _flags(100, 49), 0.5, STANDARD)

    assert result.raw == pytest.approx(_s(-0.1) / _s(-1.0))


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    both = score_file(ONE_WINDOW, _flags(100, 43, 47), 0.5, STANDARD)
    earliest = score_file(ONE_WINDOW, _flags(100, 43), 0.5, STANDARD)

    assert both.raw == pytest.approx(earliest.raw)
    assert both.raw == pytest.approx(_s(-0.7) / _s(-1.0))
    assert both.tp == 2


def test_window_without_detection_costs_the_fn_weight() -> None:
    none = _flags(100)

    assert score_file(ONE_WINDOW, none, 0.5, STANDARD).raw == -1.0
    assert score_file(ONE_WINDOW, none, 0.5, LOW_FN).raw == -2.0


def test_detection_before_any_window_costs_the_full_fp_weight() -> None:
    result = score_file(ONE_WINDOW, _flags(100, 20), 0.5, STANDARD)

    assert result.raw == pytest.approx(-0.11 - 1.0)
    assert (result.tp, result.fp) == (0, 1)


@pytest.mark.parametrize(
    ("index", "position"),
    [(50, 1 / 9), (58, 1.0), (67, 2.0), (76, 3.0)],
)
def test_detection_after_a_window_costs_more_the_further_past_it_in_window_lengths(
    index: int, position: float
) -> None:
    # Distance past the end (reading 49) is measured in (width - 1) = 9 readings.
    result = score_file(ONE_WINDOW, _flags(100, index), 0.5, STANDARD)

    assert result.raw == pytest.approx(0.11 * _s(position) - 1.0)


def test_detection_far_past_a_window_costs_the_full_fp_weight() -> None:
    result = score_file(ONE_WINDOW, _flags(100, 77), 0.5, STANDARD)  # 28 / 9 > 3

    assert result.raw == pytest.approx(-0.11 - 1.0)


def test_probationary_period_is_not_scored() -> None:
    assert probation_length(100) == 15
    assert (probation_length(4999), probation_length(5000), probation_length(10320)) == (
        749,
        750,
        750,
    )
    in_probation = score_file(ONE_WINDOW, _flags(100, 0, 14), 0.5, STANDARD)
    just_after = score_file(ONE_WINDOW, _flags(100, 15), 0.5, STANDARD)

    assert (in_probation.raw, in_probation.fp, in_probation.tn) == (-1.0, 0, 75)
    assert just_after.raw == pytest.approx(-0.11 - 1.0)


def test_a_score_equal_to_the_threshold_is_a_detection() -> None:
    scores = _flags(100, 40) * 0.7

    assert score_file(ONE_WINDOW, scores, 0.7, STANDARD).raw == pytest.approx(1.0)
    assert score_file(ONE_WINDOW, scores, np.nextafter(0.7, 1.0), STANDARD).raw == -1.0


def test_null_and_perfect_detectors_normalize_to_0_and_100() -> None:
    files = [_file(200, [(60, 79), (140, 159)], "a/two.csv"), _file(100, [], "a/none.csv")]
    perfect = {"a/two.csv": _flags(200, 60, 140), "a/none.csv": _flags(100)}
    null = {"a/two.csv": _flags(200), "a/none.csv": _flags(100)}

    assert score_corpus(files, null, 0.5, LOW_FN).normalized == 0.0
    assert score_corpus(files, perfect, 0.5, LOW_FN).normalized == pytest.approx(100.0)
    result = score_corpus(files, null, 0.5, LOW_FN)
    assert (result.raw, result.null, result.perfect) == (-4.0, -4.0, 2.0)


def test_sweep_matches_scoring_every_candidate_threshold_one_by_one() -> None:
    rng = np.random.default_rng(7)
    files = [_file(300, [(100, 129), (200, 239)], "a/x.csv"), _file(250, [(120, 139)], "a/y.csv")]
    scores = {f.name: np.round(rng.random(len(f.timestamps)) ** 4, 2) for f in files}
    candidates = np.unique(np.concatenate(list(scores.values())))[::-1]

    by_hand = max(
        [score_corpus(files, scores, 1.1, STANDARD).normalized]
        + [score_corpus(files, scores, float(t), STANDARD).normalized for t in candidates]
    )
    threshold, normalized = sweep(files, scores, STANDARD)

    assert normalized == pytest.approx(by_hand)
    assert score_corpus(files, scores, threshold, STANDARD).normalized == pytest.approx(by_hand)


def test_scores_outside_0_1_or_of_the_wrong_length_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_file(ONE_WINDOW, np.full(100, 1.5), 0.5, STANDARD)
    with pytest.raises(ValueError, match="99 scores for 100 readings"):
        score_file(ONE_WINDOW, np.zeros(99), 0.5, STANDARD)
    with pytest.raises(ValueError, match="no scores"):
        score_corpus([ONE_WINDOW], {}, 0.5, STANDARD)


def test_overlapping_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        score_file(_file(100, [(40, 49), (45, 60)]), _flags(100), 0.5, STANDARD)


# --- event metrics -----------------------------------------------------------------------


def test_event_metrics_count_windows_and_false_alarm_runs_and_delays() -> None:
    first = _file(100, [(40, 49), (70, 79)], "a/first.csv")
    # 5 is probationary; {20, 21}, {30} and {50, 51} are false alarms: the run from 45 on
    # detects the first window 5 readings in and outlasts it; the second window is missed.
    first_scores = _flags(100, 5, 20, 21, 30, 45, 46, 47, 48, 49, 50, 51)
    second = _file(100, [(40, 59)], "a/second.csv")
    second_scores = _flags(100, 42)  # detected 2 readings (120 s) in

    metrics = event_metrics(
        [first, second], {"a/first.csv": first_scores, "a/second.csv": second_scores}, 0.5
    )

    assert (metrics.events, metrics.detected, metrics.false_alarms) == (3, 2, 3)
    assert metrics.precision == pytest.approx(2 / 5)
    assert metrics.recall == pytest.approx(2 / 3)
    assert metrics.f1 == pytest.approx(0.5)
    assert metrics.median_delay_readings == 3.5
    assert metrics.median_delay_s == 210.0


def test_event_metrics_without_detections_have_no_delay_and_zero_precision() -> None:
    metrics = event_metrics([ONE_WINDOW], {ONE_WINDOW.name: _flags(100)}, 0.5)

    assert (metrics.events, metrics.detected, metrics.false_alarms) == (1, 0, 0)
    assert (metrics.precision, metrics.recall, metrics.f1) == (0.0, 0.0, 0.0)
    assert metrics.median_delay_readings is None
    assert metrics.median_delay_s is None


# --- files on disk -----------------------------------------------------------------------


def test_written_results_are_in_nab_format_and_load_back(tmp_path: Path) -> None:
    scores = np.linspace(0.0, 1.0, 100)
    values = np.arange(100) * 1.5
    path = tmp_path / "mine" / "cat" / "mine_series.csv"

    write_results(path, ONE_WINDOW.timestamps, values, scores, ONE_WINDOW.labels())

    lines = path.read_text().splitlines()
    assert lines[0] == "timestamp,value,anomaly_score,label"
    assert lines[1] == "2014-01-01 00:00:00,0.0,0.0,0"
    assert lines[41] == f"2014-01-01 00:40:00,60.0,{float(scores[40])!r},1"
    assert lines[51] == f"2014-01-01 00:50:00,75.0,{float(scores[50])!r},0"
    loaded = load_scores(tmp_path / "mine", "mine")
    assert list(loaded) == ["cat/series.csv"]
    np.testing.assert_array_equal(loaded["cat/series.csv"], scores)


def test_profiles_are_loaded_by_name(nab_dir: Path) -> None:
    profiles = load_profiles(nab_dir)

    assert profiles["standard"] == STANDARD
    assert profiles["reward_low_FN_rate"] == LOW_FN
    assert profiles["reward_low_FP_rate"].fp_weight == 0.22


def test_a_window_bound_that_is_not_a_timestamp_of_its_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "labels").mkdir()
    (tmp_path / "data" / "cat" / "s.csv").write_text(
        "timestamp,value\n2014-01-01 00:00:00,1\n2014-01-01 00:05:00,2\n"
    )
    windows = {"cat/s.csv": [["2014-01-01 00:00:00.000000", "2014-01-01 00:04:00.000000"]]}
    (tmp_path / "labels" / "combined_windows.json").write_text(json.dumps(windows))

    with pytest.raises(ValueError, match="not timestamps of the file"):
        load_corpus(tmp_path)
