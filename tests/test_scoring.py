"""Scoring: calibration, the tail, the score's meaning, and the alert rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service import scoring
from service.model import Calibration

GAUSS = scoring.fit_calibration(np.abs(np.random.default_rng(0).normal(size=200_000)))


def test_calibration_table_is_monotone_and_matches_the_gaussian_tail() -> None:
    z, log_tail = np.array(GAUSS.abs_z), np.array(GAUSS.log_tail)
    assert z[0] == 0.0 and log_tail[0] == 0.0
    assert np.all(np.diff(z) > 0) and np.all(np.diff(log_tail) < 0)
    # P(|Z| >= 1.96) = 0.05 for a standard normal
    assert scoring.log_tail(np.array([1.96]), GAUSS)[0] == pytest.approx(np.log(0.05), abs=0.05)


def test_the_tail_keeps_falling_beyond_the_table() -> None:
    far = scoring.log_tail(np.array([5.0, 10.0, 50.0]), GAUSS)
    assert far[0] < GAUSS.log_tail[-1] and far[0] > far[1] > far[2]


def test_calibration_refuses_too_few_errors() -> None:
    with pytest.raises(ValueError, match="at least 100"):
        scoring.fit_calibration(np.ones(10))


def test_surprise_ignores_missing_channels_and_corrects_for_many() -> None:
    z = np.array([[0.1, 8.0], [0.1, 8.0], [0.0, 0.0]])
    observed = np.array([[True, True], [True, False], [False, False]])
    s = scoring.surprise(z, observed, GAUSS)
    assert s[0] > 10 and s[1] < 1 and s[2] == 0.0


def _score_series(s: np.ndarray, params: scoring.ScoringParams) -> np.ndarray:
    """Scores of surprises s: (time,) for one stream, or (time, streams) side by side."""
    s = s.reshape(len(s), -1)
    history = np.ones((s.shape[1], params.history), np.float32)  # as the arena keeps them
    tail = np.zeros((s.shape[1], scoring.TAIL_BINS), np.float32)
    scorable = np.ones(s.shape[1], bool)
    out = np.empty(s.shape)
    for t, row in enumerate(s):
        update = scoring.score(row, history, tail, scorable, params)
        history, tail = update.history, update.tail
        out[t] = update.score
    return out.squeeze(axis=1) if out.shape[1] == 1 else out


def test_scores_of_normal_surprises_rarely_pass_a_strict_threshold() -> None:
    s = np.random.default_rng(1).exponential(size=(1000, 50))  # calibrated: s ~ Exp(1)
    scores = _score_series(s, scoring.ScoringParams())
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    assert (scores >= 0.9999).mean() < 5e-4


def test_a_single_spike_and_a_sustained_shift_both_score_high() -> None:
    params = scoring.ScoringParams()
    s = np.ones(100)
    s[50] = 20.0  # one very surprising reading
    s[80:86] = 4.0  # several moderately surprising ones
    scores = _score_series(s, params)
    assert scores[50] > 0.9999
    assert scores[49] < 0.9 and scores[52] < 0.999  # the spike does not smear
    assert scores[85] > 0.9999 and scores[80] < 0.99


def test_a_fresh_stream_is_judged_by_the_calibrated_tail_alone() -> None:
    s = np.array([0.5, 3.0, 12.0, 40.0])
    empty = np.zeros((4, scoring.TAIL_BINS))
    assert scoring.stream_surprise(s, empty, scoring.ScoringParams()) == pytest.approx(s)


def test_a_stream_is_judged_against_its_own_past_surprises() -> None:
    # The same miss (s = 12, about one in 160,000 under the calibration) alarms a stream the
    # model always forecast well, and not one it regularly misses by that much.
    params = scoring.ScoringParams()
    steady = np.ones(401)
    steady[-1] = 12.0
    erratic = steady.copy()
    erratic[::20] = 12.0
    assert _score_series(steady, params)[-1] > 0.9999
    assert _score_series(erratic, params)[-1] < 0.99


def test_surprises_outside_learn_do_not_enter_the_streams_histogram() -> None:
    # A stream's first forecasts come from a cold state and miss badly; those misses must not
    # teach it that a later miss as bad is normal.
    params = scoring.ScoringParams()
    history = np.ones((2, params.history), np.float32)
    tail = np.zeros((2, scoring.TAIL_BINS), np.float32)
    scorable, learn = np.ones(2, bool), np.array([False, True])
    for _ in range(20):
        update = scoring.score(np.full(2, 40.0), history, tail, scorable, params, learn=learn)
        history, tail = update.history, update.tail
    assert tail[0].sum() == 0.0 and tail[1].sum() > 0.0
    spike = scoring.stream_surprise(np.full(2, 40.0), tail, params)
    assert spike[0] == pytest.approx(40.0) and spike[1] < 5.0


def _rule(scores, threshold=0.99, **params):
    p = scoring.AlertParams(**params)
    state = dict(open_hits=np.zeros(1, np.uint32), hold_hits=np.zeros(1, np.uint32),
                 is_open=np.zeros(1, bool), cooldown=np.zeros(1, np.int32))
    events = []
    for value in scores:
        update = scoring.update_alerts(np.array([value]), np.array([threshold]),
                                       np.array([True]), **state, params=p)
        state = dict(open_hits=update.open_hits, hold_hits=update.hold_hits,
                     is_open=update.is_open, cooldown=update.cooldown)
        events.append("open" if update.opened[0] else "close" if update.closed[0] else "")
    return events


def test_an_alert_needs_k_of_m_readings_over_the_threshold() -> None:
    assert _rule([0.995, 0.1, 0.1, 0.1], k=2, m=3) == ["", "", "", ""]
    assert _rule([0.995, 0.1, 0.995, 0.1], k=2, m=3) == ["", "", "open", ""]


def test_an_alert_closes_with_hysteresis_then_keeps_quiet_for_the_cooldown() -> None:
    # closing threshold with close_factor 10 at 0.99 is 0.9: 0.95 keeps the alert open
    events = _rule([0.995, 0.95, 0.95, 0.1, 0.1, 0.1, 0.995, 0.1, 0.1, 0.1, 0.995],
                   k=1, m=3, cooldown=4)
    assert events == ["open", "", "", "", "", "close", "", "", "", "", "open"]


def test_a_table_with_a_flat_end_still_gives_a_falling_tail() -> None:
    flat = Calibration(abs_z=[0.0, 1.0, 2.0], log_tail=[0.0, -1.0, -1.0])
    assert scoring.log_tail(np.array([100.0]), flat)[0] < -1.0


# -- the fast implementations against the formulas written out plainly ----------------------


def _plain_gamma_log_sf(x: float, shape: int) -> float:
    """ln P(Gamma(shape, 1) >= x) = -x + ln sum_{k<shape} x^k / k!, term by term in log space
    and summed exactly (math.fsum)."""
    x = max(x, 1e-12)
    log_terms = [k * math.log(x) - math.lgamma(k + 1) for k in range(shape)]
    peak = max(log_terms)
    return -x + peak + math.log(math.fsum(math.exp(t - peak) for t in log_terms))


def _plain_stream_surprise(s: np.ndarray, tail: np.ndarray, params: scoring.ScoringParams
                           ) -> np.ndarray:
    low, high = scoring.TAIL_EDGES[:-1], scoring.TAIL_EDGES[1:]
    above = np.clip((high - s[:, None]) / (high - low), 0.0, 1.0)  # (batch, bins)
    above[:, -1] = 1.0
    reached = (tail * above).sum(axis=1)
    p = (reached + params.tail_prior * np.exp(-s)) / (tail.sum(axis=1) + params.tail_prior)
    return -np.log(np.clip(p, 1e-300, 1.0))


def _plain_score(s, history, tail, scorable, params, learn):
    """`scoring.score` written out plainly: a (batch, shape) log-term matrix per window, and
    every update computed for every row and then selected."""
    s = np.minimum(s, scoring.TAIL_EDGES[-1])
    relative = _plain_stream_surprise(s, tail, params)
    pooled = np.minimum(relative, 8.0).astype(history.dtype)
    new_history = np.concatenate([history[:, 1:], pooled[:, None]], axis=1)
    log_p = -relative
    for w in params.windows:
        pooled_sum = new_history[:, -w:].sum(axis=1, dtype=np.float64)
        log_p = np.minimum(log_p, [_plain_gamma_log_sf(v, w) for v in pooled_sum])
    log_p = np.minimum(0.0, log_p + math.log(1 + len(params.windows)))
    value = np.where(scorable, -np.expm1(log_p), 0.0)
    bins = np.searchsorted(scoring.TAIL_EDGES, s, side="right") - 1
    new_tail = tail * (1.0 - params.tail_decay)
    new_tail[np.arange(len(s)), np.minimum(bins, scoring.TAIL_BINS - 1)] += 1.0
    return (value, np.where(scorable[:, None], new_history, history),
            np.where((scorable & learn)[:, None], new_tail, tail))


def test_the_gamma_tail_matches_the_formula_summed_term_by_term() -> None:
    rng = np.random.default_rng(3)
    for shape in (1, 2, 6, 24, 60):
        x = np.concatenate([
            rng.uniform(0, 8 * shape, 200),  # what pooled windows hold
            [0.0, 1e-9, 0.5, 8.0 * shape],
            rng.uniform(600, 3000, 20),  # beyond the series' range: the log-space path
        ])
        got = scoring._gamma_log_sf(x, shape)
        want = np.array([_plain_gamma_log_sf(v, shape) for v in x])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=f"shape {shape}")


def test_scores_match_the_plain_formulas_on_random_streams() -> None:
    rng = np.random.default_rng(4)
    for windows in ((6, 24), (1,), (3, 10, 40)):
        params = scoring.ScoringParams(windows=windows, tail_decay=0.01, tail_prior=50.0)
        batch = 500
        s = rng.exponential(size=batch) * rng.choice([0.3, 1.0, 4.0, 30.0, 3000.0], size=batch)
        history = np.minimum(rng.exponential(size=(batch, params.history)), 8.0).astype(
            np.float32)
        tail = (rng.random((batch, scoring.TAIL_BINS))
                * rng.choice([0.0, 1.0, 40.0, 900.0], size=(batch, scoring.TAIL_BINS))
                ).astype(np.float32)
        scorable, learn = rng.random(batch) > 0.1, rng.random(batch) > 0.3
        got = scoring.score(s, history, tail, scorable, params, learn=learn)
        value, new_history, new_tail = _plain_score(s, history, tail, scorable, params, learn)
        # The plain formula is itself exact to ~1e-14 near a score of 0 (ln p ~ 0 there).
        np.testing.assert_allclose(got.score, value, rtol=1e-12, atol=2e-14)
        np.testing.assert_array_equal(got.history, new_history)
        np.testing.assert_array_equal(got.tail, new_tail)
        assert got.tail.dtype == tail.dtype and got.history.dtype == history.dtype
        np.testing.assert_allclose(scoring.stream_surprise(s, tail, params),
                                   _plain_stream_surprise(s, tail, params), rtol=1e-12, atol=0)
