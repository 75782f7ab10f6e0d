"""Per-stream online standardization: the same numbers offline and online."""

from __future__ import annotations

import numpy as np

from service import normalization
from service.normalization import NormalizerParams, normalize_series


def test_streams_of_any_level_and_unit_look_alike_after_warm_up() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2000, 1))
    small = normalize_series(base, NormalizerParams())
    large = normalize_series(1e6 + 1e4 * base, NormalizerParams())
    np.testing.assert_allclose(small[200:], large[200:], atol=1e-6)
    assert abs(small[200:].std() - 1.0) < 0.1


def test_a_flat_stream_never_divides_by_zero() -> None:
    u = normalize_series(np.full((500, 2), 3.0), NormalizerParams())
    assert np.isfinite(u).all() and not u.any()


def test_a_step_never_reaches_the_model_unclipped() -> None:
    values = np.concatenate([np.zeros(300), np.full(10, 1e12)])[:, None]
    u = normalize_series(values + np.random.default_rng(1).normal(size=(310, 1)),
                         NormalizerParams())
    assert np.abs(u).max() <= normalization.INPUT_CLIP


def test_missing_channels_leave_their_estimates_alone() -> None:
    count, mean, var = np.array([5]), np.array([[1.0, 2.0]]), np.array([[1.0, 1.0]])
    _, _, new_mean, new_var = normalization.step(
        count, mean, var, np.array([[9.0, 9.0]]), np.array([[True, False]]), NormalizerParams()
    )
    assert new_mean[0, 1] == 2.0 and new_var[0, 1] == 1.0 and new_mean[0, 0] != 1.0


def test_the_server_and_the_series_function_agree_row_by_row() -> None:
    values = np.random.default_rng(2).normal(size=(50, 3)) * [1, 10, 100]
    series = normalize_series(values, NormalizerParams())
    count, mean, var = np.zeros(1, np.int64), np.zeros((1, 3)), np.zeros((1, 3))
    for t in range(50):
        u, count, mean, var = normalization.step(count, mean, var, values[t:t + 1],
                                                 np.ones((1, 3), bool), NormalizerParams())
        np.testing.assert_array_equal(u[0].astype(np.float32), series[t])
