"""The anomaly likelihood: the Gaussian tail, per-stream learning, the range rule, the
time-of-day profile, batching."""

from __future__ import annotations

import dataclasses
import math

import numba
import numpy as np
import pytest

from service import likelihood
from service.likelihood import LikelihoodParams, LikelihoodState, gaussian_log_sf, step

# Without the time-of-day profile, the level test and the quiet tail unless a test is about it,
# and the forecast's z taken as it is.
PARAMS = LikelihoodParams(
    window=4, horizon=50, settle=10, range_margin=0.1, range_tail=1e-12, day_bins=0,
    level_window=0, quiet_tail=False, forecast_weight=1.0,
)
WITH_PROFILE = dataclasses.replace(PARAMS, day_bins=24, day_alpha=0.1)
EVERYTHING = dataclasses.replace(WITH_PROFILE, level_window=6, quiet_tail=True)
EVERY_S = 300.0  # five-minute readings: 288 a day


def _run(
    surprises: list[float],
    values: list[float] | None = None,
    params: LikelihoodParams = PARAMS,
    learn: bool = True,
) -> tuple[np.ndarray, LikelihoodState]:
    """One stream fed `surprises` (and `values`, default 0) every EVERY_S seconds: its scores
    and final state."""
    values = values if values is not None else [0.0] * len(surprises)
    state = likelihood.initial_state(1, 1, params)
    scores = []
    for i, (s, v) in enumerate(zip(surprises, values, strict=True)):
        update = step(
            np.array([s]), np.array([[v]]), np.array([[True]]), np.array([i * EVERY_S]), state,
            np.array([True]), np.array([learn]), params,
        )
        scores.append(float(update.score[0]))
        state = update.state
    return np.array(scores), state


def _calm(n: int, seed: int = 0) -> list[float]:
    """Surprises of a stream whose forecasts are right: Exp(1)."""
    return np.random.default_rng(seed).exponential(1.0, n).tolist()


@pytest.mark.parametrize("y", [-6.0, -2.0, -0.5, 0.0, 0.3, 1.0, 2.5, 5.0, 8.0, 20.0])
def test_gaussian_log_sf_matches_erfc_to_a_millionth_relative(y: float) -> None:
    expected = math.log(0.5 * math.erfc(y / math.sqrt(2.0)))
    assert gaussian_log_sf(np.array([y]))[0] == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_gaussian_log_sf_stays_finite_far_beyond_where_erfc_underflows() -> None:
    log_p = gaussian_log_sf(np.array([40.0, 1e3]))
    assert np.all(np.isfinite(log_p))
    assert log_p[1] < log_p[0] < math.log(1e-300)


def test_a_stream_scores_zero_until_it_has_learned_settle_readings() -> None:
    scores, state = _run([50.0] * PARAMS.settle + [50.0])
    assert np.all(scores[: PARAMS.settle] == 0.0)
    assert int(state.count[0]) == PARAMS.settle + 1


def test_a_run_of_large_surprises_after_a_calm_history_scores_near_one() -> None:
    scores, _ = _run(_calm(200) + [12.0] * 4)
    assert scores[-1] > 1.0 - 1e-6
    assert np.quantile(scores[PARAMS.settle : 200], 0.9) < 0.999


@pytest.mark.parametrize("weight", [1.0, 0.75, 0.5])
def test_the_forecast_weight_scales_the_z_of_the_forecasts_average(weight: float) -> None:
    history = _calm(200)
    params = dataclasses.replace(PARAMS, forecast_weight=weight)
    _, state = _run(history, params=params)
    scores, _ = _run(history + [8.0] * 3, params=params)
    # The score of the last reading from the distribution learned before it (learning is the
    # same whatever the weight): the tail of weight * z.
    average = (8.0 * 3 + float(np.float16(history[-1]))) / PARAMS.window  # the ring is float16
    _, before = _run(history + [8.0] * 2, params=params)
    z = (average - float(before.mean[0, 0])) / math.sqrt(float(before.var[0, 0]))
    tail = math.exp(min(0.0, float(gaussian_log_sf(np.array([weight * z]))[0])))
    assert 1.0 - scores[-1] == pytest.approx(tail, rel=1e-4)
    assert float(state.mean[0, 0]) == pytest.approx(float(_run(history)[1].mean[0, 0]))


def test_a_stream_that_often_misses_is_not_alarmed_by_one_more_miss() -> None:
    rng = np.random.default_rng(1)
    noisy = np.where(rng.random(300) < 0.3, 12.0, rng.exponential(1.0, 300)).tolist()
    calm_scores, _ = _run(_calm(300) + [12.0, 12.0])
    noisy_scores, _ = _run(noisy + [12.0, 12.0])
    assert noisy_scores[-1] < 0.999 < calm_scores[-1]


def test_a_reading_beyond_the_seen_range_by_more_than_the_margin_scores_its_range_tail() -> None:
    values = np.sin(np.arange(100.0)).tolist()  # range [-1, 1]: a margin of 0.2
    beyond, _ = _run([1.0] * 101, values + [1.25])
    inside, _ = _run([1.0] * 101, values + [1.15])
    assert beyond[-1] == pytest.approx(1.0 - PARAMS.range_tail, abs=1e-15)
    assert inside[-1] < 0.99


def test_the_range_widens_so_the_same_new_level_does_not_score_twice() -> None:
    values = np.sin(np.arange(100.0)).tolist() + [3.0, 3.0]
    scores, state = _run([1.0] * 102, values)
    assert scores[-2] > 0.999 > scores[-1]
    assert float(state.high[0, 0]) == 3.0


def test_readings_not_learned_leave_the_distribution_but_fill_the_average() -> None:
    _, before = _run(_calm(30))
    update = step(
        np.array([9.0]), np.array([[0.0]]), np.array([[True]]), np.array([1e6]), before,
        np.array([True]), np.array([False]), PARAMS,
    )
    after = update.state
    assert after.count == before.count
    np.testing.assert_array_equal(after.mean, before.mean)
    np.testing.assert_array_equal(after.var, before.var)
    assert after.recent[0, 0, -1] == 9.0


@pytest.mark.parametrize("params", [WITH_PROFILE, EVERYTHING])
def test_a_row_not_scorable_scores_zero_and_a_missing_value_leaves_the_whole_state(
    params: LikelihoodParams,
) -> None:
    _, before = _run(_calm(30), np.linspace(0.0, 1.0, 30).tolist(), params)
    update = step(
        np.array([0.0]), np.array([[np.nan]]), np.array([[False]]), np.array([1e6]), before,
        np.array([False]), np.array([True]), params,
    )
    assert update.score[0] == 0.0
    for field in dataclasses.fields(LikelihoodState):
        after = getattr(update.state, field.name)
        np.testing.assert_array_equal(after, getattr(before, field.name))


def test_the_distribution_forgets_so_a_lasting_change_stops_scoring() -> None:
    params = dataclasses.replace(PARAMS, horizon=30, window=2)
    rng = np.random.default_rng(2)
    scores, _ = _run(_calm(100) + (4.0 + rng.exponential(1.0, 300)).tolist(), params=params)
    assert scores[100:104].max() > 0.999
    assert np.median(scores[-100:]) < 0.9


@pytest.mark.parametrize("params", [WITH_PROFILE, EVERYTHING])
def test_a_batch_steps_each_stream_as_if_it_were_alone(params: LikelihoodParams) -> None:
    rng = np.random.default_rng(3)
    n, length = 5, 400
    s = rng.exponential(1.0, (n, length)) * rng.choice([1.0, 4.0], (n, 1))
    x = rng.normal(0.0, 1.0, (n, length)).cumsum(axis=1)
    ts = np.arange(length) * 1800.0 + rng.uniform(0.0, 86400.0, (n, 1))  # (streams, time)
    learn = rng.random((n, length)) < 0.9
    state = likelihood.initial_state(n, 1, params)
    batch_scores = np.zeros((n, length))
    for t in range(length):
        update = step(
            s[:, t], x[:, t : t + 1], np.ones((n, 1), bool), ts[:, t], state,
            np.ones(n, bool), learn[:, t], params,
        )
        batch_scores[:, t], state = update.score, update.state
    assert np.count_nonzero(batch_scores > 0.5) > 0  # the comparison below is not all zeros
    for i in range(n):
        alone = likelihood.initial_state(1, 1, params)
        for t in range(length):
            update = step(
                s[i, t : t + 1], x[i : i + 1, t : t + 1], np.ones((1, 1), bool),
                ts[i, t : t + 1], alone, np.ones(1, bool), learn[i, t : t + 1], params,
            )
            assert update.score[0] == batch_scores[i, t]
            alone = update.state


def test_stepping_the_arenas_records_in_place_equals_stepping_a_copy() -> None:
    """The server steps strided views of its records in place; the tuning harness, copies."""
    rng = np.random.default_rng(5)
    n, channels = 6, 2
    layout = likelihood.fields(EVERYTHING, channels)
    records = np.zeros(n, [("other", np.float64), *((name, dtype, shape) for name, (shape, dtype, _)
                                                     in layout.items())])
    copy = likelihood.initial_state(n, channels, EVERYTHING)
    for name in layout:
        records[name] = getattr(copy, name)
    views = LikelihoodState(**{name: records[name] for name in layout})
    for t in range(300):
        x = rng.normal(0.0, 1.0 + 20.0 * (t % 97 == 0), (n, channels))
        observed = rng.random((n, channels)) < 0.9
        args = (rng.exponential(1.0, n), np.where(observed, x, np.nan), observed,
                np.full(n, t * EVERY_S), observed.any(axis=1), rng.random(n) < 0.9)
        update = step(*args[:4], copy, *args[4:], EVERYTHING)
        score = likelihood.step_in_place(*args[:4], views, *args[4:], EVERYTHING)
        np.testing.assert_array_equal(score, update.score)
        copy = update.state
    assert np.count_nonzero(score) > 0
    for name in layout:
        np.testing.assert_array_equal(records[name], getattr(copy, name), err_msg=name)


def test_the_ring_of_surprises_holds_them_rounded_as_numpys_float16() -> None:
    """Snapshots keep the ring as float16: the compiled pass must round as numpy does."""
    surprises = [0.0, 1e-7, 3e-5, 6.1e-5, 0.1, 1.0 / 3.0, 2.0, 3.14159, 99.99, 1000.0, 5000.0]
    params = dataclasses.replace(PARAMS, window=len(surprises))
    _, state = _run(surprises, params=params)
    expected = np.minimum(np.array(surprises), likelihood.MAX_SURPRISE).astype(np.float32)
    np.testing.assert_array_equal(state.recent[0, 0], expected.astype(np.float16))


@pytest.mark.parametrize("params", [PARAMS, WITH_PROFILE, EVERYTHING])
def test_fields_describe_every_array_of_the_state_with_its_shape_and_dtype(
    params: LikelihoodParams,
) -> None:
    state = likelihood.initial_state(3, 2, params)
    layout = likelihood.fields(params, 2)
    assert set(layout) == {f.name for f in dataclasses.fields(LikelihoodState)}
    for name, (shape, dtype, _) in layout.items():
        array = getattr(state, name)
        assert array.shape == (3, *shape)
        assert array.dtype == np.dtype(dtype)


def _daily(days: int, shape: np.ndarray, seed: int = 4) -> np.ndarray:
    """`days` of five-minute values following `shape` (288,), with a little noise."""
    noise = np.random.default_rng(seed).normal(0.0, 0.05, days * 288)
    return np.tile(shape, days) + noise


def test_a_day_that_loses_its_daily_shape_alerts_with_the_profile_and_not_without() -> None:
    # The forecast is right all along (calm surprises): only the time of day tells.
    shape = np.sin(np.arange(288) * 2 * np.pi / 288)
    values = np.concatenate([_daily(10, shape), np.full(288, 0.0)]).tolist()
    surprises = _calm(len(values))
    remembering = {"horizon": 2000}  # longer than a day, so the flat day stays unusual
    with_profile, _ = _run(surprises, values, dataclasses.replace(WITH_PROFILE, **remembering))
    without, _ = _run(surprises, values, dataclasses.replace(PARAMS, **remembering))
    alerting = 1.0 - 1e-5
    assert np.count_nonzero(with_profile[288 * 10 :] >= alerting) > 24
    assert np.count_nonzero(with_profile[288 * 4 : 288 * 10] >= alerting) == 0  # normal days
    assert np.count_nonzero(without[288 * 10 :] >= alerting) == 0


def test_the_profile_holds_each_bins_mean_and_forgets_old_days() -> None:
    params = dataclasses.replace(WITH_PROFILE, day_alpha=0.05)
    hourly = np.repeat(np.arange(24.0), 12)  # the value is the hour of the day
    values = np.concatenate([_daily(5, hourly), _daily(60, hourly + 100.0)]).tolist()
    _, state = _run(_calm(len(values)), values, params)
    np.testing.assert_allclose(state.day_mean[0, :, 0], np.arange(24.0) + 100.0, atol=0.05)
    assert np.all(state.day_count[0, :, 0] == likelihood.DAY_COUNT_MAX)  # 65 * 12 seen
    assert np.all(np.sqrt(state.day_var[0, :, 0]) < 0.2)


@pytest.mark.parametrize("enormous", [1e30, 1e300])
def test_an_enormous_value_scores_near_one_and_leaves_every_state_array_finite(
    enormous: float,
) -> None:
    # Finite, so the server takes it; squared, 1e30 overflows a float32 profile bin and 1e300
    # a float64 variance, and 1e300 is beyond float32 (the level's ring) to begin with.
    values = np.sin(np.arange(400.0)).tolist() + [enormous, 0.5]
    scores, state = _run([1.0] * 400 + [1e12, 1.0], values, EVERYTHING)
    assert scores[400] > 1.0 - 1e-9
    for field in dataclasses.fields(LikelihoodState):
        array = getattr(state, field.name)
        if field.name not in ("low", "high"):
            assert np.all(np.isfinite(array)), field.name
    assert state.high[0, 0] == enormous  # the range did learn it


def test_a_level_the_forecast_follows_alerts_with_the_level_test_and_not_without() -> None:
    # The forecast keeps up with the new level (calm surprises), and the new level stays
    # inside the range seen: only the mean of the last values tells.
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.normal(0.0, 1.0, 600), rng.normal(2.0, 1.0, 100)]).tolist()
    surprises = _calm(len(values))
    level = dataclasses.replace(PARAMS, level_window=30, horizon=2000, range_tail=1.0)
    with_level, _ = _run(surprises, values, level)
    without, _ = _run(surprises, values, dataclasses.replace(level, level_window=0))
    alerting = 1.0 - 1e-5
    assert np.count_nonzero(with_level[600:] >= alerting) > 10
    assert np.count_nonzero(with_level[100:600] >= alerting) == 0
    assert np.count_nonzero(without[600:] >= alerting) == 0


def test_the_level_is_the_mean_of_the_last_values_and_the_long_run_mean_of_all() -> None:
    params = dataclasses.replace(PARAMS, level_window=4)
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    _, state = _run([1.0] * len(values), values, params)
    ring = state.level_values[0, 0]
    assert sorted(ring.tolist()) == [4.0, 5.0, 6.0, 7.0]
    assert state.level_count[0, 0] == len(values)
    assert state.level_mean[0, 0] == pytest.approx(np.mean(values))
    assert state.level_var[0, 0] == pytest.approx(np.var(values))


def test_a_stream_gone_flat_alerts_with_the_quiet_tail_and_not_without() -> None:
    # Forecasts usually miss by Exp(1); then the stream goes flat and they are exact.
    surprises = _calm(600) + [0.0] * 60
    quiet = dataclasses.replace(PARAMS, window=15, horizon=2000, quiet_tail=True)
    with_tail, _ = _run(surprises, params=quiet)
    without, _ = _run(surprises, params=dataclasses.replace(quiet, quiet_tail=False))
    alerting = 0.999
    assert np.count_nonzero(with_tail[600:] >= alerting) > 5
    assert np.count_nonzero(with_tail[100:600] >= alerting) == 0
    assert np.count_nonzero(without[600:] >= alerting) == 0


@numba.njit
def _halves_read(bits: np.ndarray, out: np.ndarray) -> None:
    for i in range(bits.size):
        out[i] = likelihood._half(bits[i])


@numba.njit
def _halves_written(values: np.ndarray, out: np.ndarray) -> None:
    for i in range(values.size):
        out[i] = likelihood._half_bits(values[i])


_read_in_steps = numba.njit(likelihood.half_in_steps)
_written_in_steps = numba.njit(likelihood.half_bits_in_steps)


def _singles() -> np.ndarray:
    """float32s of every magnitude a half has and beyond, with the edges of its range."""
    rng = np.random.default_rng(0)
    scaled = rng.normal(size=200_000) * 10.0 ** rng.integers(-9, 7, 200_000)
    edges = [0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, 6e-8, 2.98e-8, 2.99e-8,
             2.0**-14, 2.0**-24, 1e-10, 1000.0]
    return np.concatenate([scaled, edges, np.negative(edges)]).astype(np.float32)


@pytest.mark.parametrize("way", ["as the likelihood does", "in integer steps"])
def test_the_ring_of_surprises_reads_and_writes_half_precision_as_numpy_does(way: str) -> None:
    bits = np.arange(65536, dtype=np.uint16)  # every half, NaNs and infinities included
    read = np.empty(bits.size)
    singles = _singles()
    written = np.empty(singles.size, np.uint16)
    if way == "in integer steps":
        read[:] = [_read_in_steps(b) for b in bits]
        written[:] = [_written_in_steps(v) for v in singles]
    else:
        _halves_read(bits, read)
        _halves_written(singles, written)
    np.testing.assert_array_equal(read, bits.view(np.float16).astype(np.float64))
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(written, singles.astype(np.float16).view(np.uint16))
    nan = np.array([np.nan, -np.nan], np.float32)
    if way == "in integer steps":
        assert [_written_in_steps(v) for v in nan] == [0x7E00, 0x7E00]
    else:
        _halves_written(nan, written[:2])
        assert written[:2].tolist() == [0x7E00, 0x7E00]
