"""Scoring: calibration, the surprise, and the alert rule."""

from __future__ import annotations

import numpy as np
import pytest

from service import scoring
from service.model import Calibration

GAUSS = scoring.fit_calibration(np.abs(np.random.default_rng(0).normal(size=200_000)))


@pytest.mark.parametrize("points", [2, 3, 5, 8, 24, 31])
def test_log_tail_inside_the_table_is_numpys_interpolation_bit_for_bit(points: int) -> None:
    rng = np.random.default_rng(points)
    zs = np.concatenate([[0.0], np.cumsum(rng.uniform(0.01, 1.0, points - 1))])
    logs = np.concatenate([[0.0], np.cumsum(-rng.uniform(0.01, 2.0, points - 1))])
    calibration = Calibration(abs_z=zs.tolist(), log_tail=logs.tolist())
    # every point, a value just either side of each, and values between them
    abs_z = np.concatenate([zs, np.nextafter(zs, -1.0)[1:], np.nextafter(zs, np.inf)[:-1],
                            rng.uniform(0.0, zs[-1], 500)])
    np.testing.assert_array_equal(scoring.log_tail(abs_z, calibration),
                                  np.minimum(np.interp(abs_z, zs, logs), 0.0))


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
