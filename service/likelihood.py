"""Surprise -> anomaly likelihood score in [0, 1], vectorized over a batch of streams.

The server's score (the stepper calls `step` once a round), after Numenta's anomaly
likelihood (Ahmad et al. 2017), its defaults tuned on NAB (`training.nab_tuning`). Per stream,
with state in fixed-size arrays kept in the arena:

1. Two surprises per reading, each about Exp(1) when nothing is wrong: the forecast's
   (`service.scoring.surprise`), and the time-of-day profile's: the stream keeps the mean
   and variance of its values in each of `day_bins` bins of the day, and a value far from
   its bin's mean is surprising (two-sided Gaussian tail, Bonferroni over channels). The
   profile sees what a forecaster without a clock cannot: a day that lost its daily shape.
2. Each surprise is averaged over the last `window` readings: forecast errors come in runs,
   and an average judges a run once instead of each of its readings.
3. A level statistic: how far the mean of each channel's last `level_window` values is from
   the channel's long-run mean, in its long-run standard deviations (the largest over the
   channels). A forecaster follows a level that moved and soon stops missing; the level
   test still sees that the stream is not where it has been.
4. Each average, and the level statistic, is judged against the stream's own distribution
   of it, a Gaussian whose mean and variance are averaged exactly over the first `horizon`
   learned readings and then forget with weight 1 / horizon: p_k = P(N(mean_k, var_k) >=
   average_k). With `quiet_tail` the forecast's average is also judged from below: a stream
   gone flat or silent is forecast too well. Once a stream scores, what it learns is clipped
   to `learn_clip` sd of the distribution, so that an incident leaves it far less deaf to
   the next anomaly.
5. A reading beyond the range of values the stream has shown, by more than `range_margin`
   of that range, is improbable on its own: p_range = `range_tail`. Forecasters trained on
   normal data miss the first level never seen before by less than its size.

The score is 1 - min(1, K * min_k p_k, p_range) over the K tests; 0 until the stream has
learned `settle` readings. Only readings the caller lets `learn` (past warm-up) move the
distributions; every observed value updates the profile, the level and the range.

>>> params = LikelihoodParams(settle=2, day_bins=0)
>>> state = initial_state(1, 1, params)
>>> one = dict(observed=np.array([[True]]), ts=np.array([0.0]), scorable=np.array([True]),
...            learn=np.array([True]), params=params)
>>> for s in (1.0, 0.5, 1.5, 1.0):
...     state = step(np.array([s]), np.array([[0.0]]), state=state, **one).state
>>> bool(step(np.array([60.0]), np.array([[0.0]]), state=state, **one).score[0] > 0.999)
True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from service.normalization import std_of
from service.settings import ScoringSettings

# Coefficients of the Chebyshev fit of ln erfc(x) (Numerical Recipes `erfcc`): relative error
# below 1.2e-7 everywhere, and no underflow far in the tail, where a Gaussian score lives.
_ERFC = (
    -1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
    0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277,
)
_LN_HALF = math.log(0.5)


_DAY_S = 86400.0
_DAY_MIN_COUNT = 3  # values a time-of-day bin needs before it judges one
# A bin counts its values in one byte (a stream keeps 24 of them per channel): the count only
# matters until the bin forgets, at 1 / day_alpha values, so day_alpha is at least 1 / 255.
DAY_COUNT_MAX = 255
# A surprise beyond this counts as this: past it every reading is equally damning, and an
# unbounded one could overflow the float16 ring of surprises and poison a stream for good.
MAX_SURPRISE = 1000.0
_FLOAT32_MAX = float(np.finfo(np.float32).max)


# The server's defaults (a plain model: no environment is read), so that the values live once.
_DEFAULT = ScoringSettings()


@dataclass(frozen=True)
class LikelihoodParams:
    window: int = _DEFAULT.window  # readings whose surprises are averaged
    horizon: int = _DEFAULT.horizon  # readings the per-stream distribution of an average remembers
    settle: int = _DEFAULT.settle  # learned readings before a stream scores
    min_var: float = _DEFAULT.min_var  # floor of that distribution's variance
    range_margin: float = _DEFAULT.range_margin  # share of the seen range a value must exceed it by
    range_tail: float = _DEFAULT.range_tail  # tail probability of a value beyond the range (1: off)
    day_bins: int = _DEFAULT.day_bins  # bins of the time-of-day profile (0: no profile)
    day_alpha: float = _DEFAULT.day_alpha  # weight of a new value in its bin, once it has 1 / alpha
    level_window: int = _DEFAULT.level_window  # values the level test's mean covers (0: no test)
    quiet_tail: bool = _DEFAULT.quiet_tail  # also judge the forecast's average from below
    learn_clip: float = _DEFAULT.learn_clip  # what a scoring stream learns is within this many sd

    def __post_init__(self) -> None:
        if self.day_bins and self.day_alpha * DAY_COUNT_MAX < 1.0:
            raise ValueError(f"day_alpha must be at least 1/{DAY_COUNT_MAX}")

    @classmethod
    def of(cls, settings: ScoringSettings) -> LikelihoodParams:
        """The parameters the scoring settings name."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**settings.model_dump(include=names))

    @property
    def signals(self) -> int:
        """Surprises averaged per reading: the forecast's, and the profile's."""
        return 2 if self.day_bins else 1

    @property
    def judged(self) -> int:
        """Statistics with a learned distribution: the averages, and the level's."""
        return self.signals + (1 if self.level_window else 0)

    @property
    def tests(self) -> int:
        """Tail probabilities the score takes the least of (Bonferroni)."""
        return self.judged + (1 if self.quiet_tail else 0)


@dataclass(frozen=True)
class LikelihoodState:
    # Statistics of surprises are kept at the precision they need (a float16 surprise is good
    # to 0.1%), so that a stream stays under 1 KiB; values keep float64.
    recent: np.ndarray  # (batch, signals, window) float16 the last surprises, newest last
    filled: np.ndarray  # (batch,) uint16 readings in `recent`, at most window
    count: np.ndarray  # (batch,) int32 readings learned
    mean: np.ndarray  # (batch, judged) float32 distribution of each average, and the level's
    var: np.ndarray  # (batch, judged) float32
    low: np.ndarray  # (batch, channels) float64 lowest value seen; +inf before any
    high: np.ndarray  # (batch, channels) float64 highest value seen; -inf before any
    day_mean: np.ndarray  # (batch, day_bins, channels) float32 the time-of-day profile
    day_var: np.ndarray  # (batch, day_bins, channels) float32
    day_count: np.ndarray  # (batch, day_bins, channels) uint8 values seen in each bin, capped
    level_values: np.ndarray  # (batch, channels, level_window) float32 last values, a ring
    level_count: np.ndarray  # (batch, channels) int32 values seen; the ring's next is % window
    level_mean: np.ndarray  # (batch, channels) float64 long-run mean of the values
    level_var: np.ndarray  # (batch, channels) float64


@dataclass(frozen=True)
class LikelihoodUpdate:
    score: np.ndarray  # (batch,) in [0, 1]
    state: LikelihoodState


def fields(
    params: LikelihoodParams, channels: int
) -> dict[str, tuple[tuple[int, ...], type, float]]:
    """Per-stream arrays, named as in `LikelihoodState`.

    As `service.state.ArenaLayout.fields` lists its own: name -> (trailing shape, dtype,
    value of a fresh stream).
    """
    inf, k, day = float("inf"), params.signals, (params.day_bins, channels)
    ring = (channels, max(params.level_window, 1))  # a field of size 0 does not pack
    return {
        "recent": ((k, params.window), np.float16, 0.0),
        "filled": ((), np.uint16, 0),
        "count": ((), np.int32, 0),
        "mean": ((params.judged,), np.float32, 0.0),
        "var": ((params.judged,), np.float32, 0.0),
        "low": ((channels,), np.float64, inf),
        "high": ((channels,), np.float64, -inf),
        "day_mean": (day, np.float32, 0.0),
        "day_var": (day, np.float32, 0.0),
        "day_count": (day, np.uint8, 0),
        "level_values": (ring, np.float32, 0.0),
        "level_count": ((channels,), np.int32, 0),
        "level_mean": ((channels,), np.float64, 0.0),
        "level_var": ((channels,), np.float64, 0.0),
    }


def initial_state(batch: int, channels: int, params: LikelihoodParams) -> LikelihoodState:
    """The state of `batch` fresh streams."""
    arrays: dict[str, np.ndarray] = {
        name: np.full((batch, *shape), fill, dtype)
        for name, (shape, dtype, fill) in fields(params, channels).items()
    }
    return LikelihoodState(**arrays)


def gaussian_log_sf(y: np.ndarray) -> np.ndarray:
    """ln P(N(0, 1) >= y), accurate to ~1e-7 relative, finite for any finite y."""
    x = np.minimum(np.abs(y), 1e100) * math.sqrt(0.5)  # ln P is -5e199 there: as good as -inf
    t = 1.0 / (1.0 + 0.5 * x)
    poly = np.full_like(t, _ERFC[-1])  # Horner, in place: c + t * poly, coefficient by coefficient
    for c in reversed(_ERFC[:-1]):
        poly *= t
        poly += c
    log_erfc = np.log(t) - x * x + poly  # ln erfc(|y| / sqrt 2)
    return np.where(y >= 0.0, _LN_HALF + log_erfc, np.log1p(-0.5 * np.exp(log_erfc)))


def step(
    s: np.ndarray,
    x: np.ndarray,
    observed: np.ndarray,
    ts: np.ndarray,
    state: LikelihoodState,
    scorable: np.ndarray,
    learn: np.ndarray,
    params: LikelihoodParams,
) -> LikelihoodUpdate:
    """Score one reading per stream and fold it into that stream's state.

    s: (batch,) the forecast's surprises; x, observed: (batch, channels) the readings;
    ts: (batch,) their epoch seconds. Rows not `scorable` (no forecast, nothing observed)
    score 0 and keep their averages and distributions; an observed value still enters the
    profile and the range. Only `scorable & learn` rows move the distributions.
    """
    day = _day_bin(ts, state, params)
    surprises = [s]
    if day is not None:
        surprises.append(_profile_surprise(x, observed, day))
    now = np.minimum(np.stack(surprises, axis=1), MAX_SURPRISE).astype(np.float32)
    recent = np.concatenate([state.recent[:, :, 1:], now[:, :, None]], axis=2)  # (b, k, w)
    filled = np.minimum(state.filled + 1, params.window)
    average = recent.sum(axis=2, dtype=np.float64) / filled[:, None]  # (batch, signals)
    level = _level(x, observed, state, params)
    if level is not None:
        average = np.concatenate([average, level.statistic[:, None]], axis=1)  # (batch, judged)
    sd = np.sqrt(np.maximum(state.var, params.min_var))
    z = (average - state.mean) / sd
    if params.quiet_tail:  # the forecast's average from below too, in the same pass
        z = np.concatenate([z, -z[:, :1]], axis=1)  # (batch, tests)
    log_p = np.minimum(0.0, gaussian_log_sf(z).min(axis=1) + math.log(params.tests))

    with np.errstate(invalid="ignore"):  # inf - inf before a stream's first value
        span = state.high - state.low  # (batch, channels)
        margin = params.range_margin * span
        outside = (x > state.high + margin) | (x < state.low - margin)
        beyond = observed & np.isfinite(span) & outside
    log_p = np.where(beyond.any(axis=1), np.minimum(log_p, math.log(params.range_tail)), log_p)
    settled = scorable & (state.count >= params.settle)
    score = np.where(settled, 0.0 - np.expm1(log_p), 0.0)

    learning = scorable & learn
    count, mean, var = _learn(average, state, settled, params)
    seen = np.where(observed, x, np.nan)
    if not scorable.all():  # rarely: rows without a forecast keep their last surprises
        recent[~scorable] = state.recent[~scorable]
    return LikelihoodUpdate(
        score=score,
        state=LikelihoodState(
            recent=recent,
            filled=np.where(scorable, filled, state.filled).astype(state.filled.dtype),
            count=np.where(learning, count, state.count),
            mean=np.where(learning[:, None], mean, state.mean),
            var=np.where(learning[:, None], var, state.var),
            low=np.fmin(state.low, seen),  # fmin/fmax: a missing value leaves the range
            high=np.fmax(state.high, seen),
            **_learn_profile(x, observed, state, day, params),
            **_learned_level(level, state),
        ),
    )


@dataclass(frozen=True)
class _Level:
    statistic: np.ndarray  # (batch,) largest |recent mean - long-run mean| / sd over channels
    values: np.ndarray  # (batch, channels, level_window) the ring with this reading's values
    count: np.ndarray  # (batch, channels)
    mean: np.ndarray  # (batch, channels) the long-run mean with this reading's values
    var: np.ndarray  # (batch, channels)


def _level(
    x: np.ndarray, observed: np.ndarray, state: LikelihoodState, params: LikelihoodParams
) -> _Level | None:
    """The level statistic of each row, and the level state with the observed values in."""
    w = params.level_window
    if not w:
        return None
    seen = observed & np.isfinite(x)
    value = np.where(seen, x, 0.0)
    values = state.level_values.copy()
    rows, channels = np.nonzero(seen)
    # The ring is float32: a value beyond its range is kept as its largest, still far out.
    values[rows, channels, state.level_count[rows, channels] % w] = np.clip(
        value[rows, channels], -_FLOAT32_MAX, _FLOAT32_MAX
    )
    count = state.level_count + seen
    recent = values.sum(axis=2, dtype=np.float64) / np.maximum(np.minimum(count, w), 1)
    known = seen & (state.level_count >= w)  # a young mean and variance judge nothing
    with np.errstate(over="ignore", invalid="ignore"):  # a non-finite statistic is refused
        shift = np.abs(recent - state.level_mean) / std_of(state.level_mean, state.level_var)
    statistic = np.where(known & np.isfinite(shift), shift, 0.0).max(axis=1)
    # Every value counts exactly until `horizon`, then with weight 1 / horizon.
    weight = np.maximum(1.0 / np.maximum(count, 1), 1.0 / params.horizon)
    delta = value - state.level_mean
    with np.errstate(over="ignore", invalid="ignore"):
        mean = state.level_mean + weight * delta
        var = (1.0 - weight) * (state.level_var + weight * delta * delta)
    learned = seen & np.isfinite(mean) & np.isfinite(var)
    return _Level(
        statistic,
        values,
        count,
        np.where(learned, mean, state.level_mean),
        np.where(learned, var, state.level_var),
    )


def _learned_level(level: _Level | None, state: LikelihoodState) -> dict[str, np.ndarray]:
    if level is None:
        return {"level_values": state.level_values, "level_count": state.level_count,
                "level_mean": state.level_mean, "level_var": state.level_var}
    return {"level_values": level.values, "level_count": level.count,
            "level_mean": level.mean, "level_var": level.var}


@dataclass(frozen=True)
class _DayBin:
    """Each row's time-of-day bin, and what the profile holds in it."""

    rows: np.ndarray  # (batch,) 0 .. batch - 1
    index: np.ndarray  # (batch,) the bin
    mean: np.ndarray  # (batch, channels) float64
    var: np.ndarray  # (batch, channels) float64
    count: np.ndarray  # (batch, channels) int64


def _day_bin(ts: np.ndarray, state: LikelihoodState, params: LikelihoodParams) -> _DayBin | None:
    if not params.day_bins:
        return None
    rows = np.arange(len(ts))
    index = (np.floor(ts / _DAY_S * params.day_bins) % params.day_bins).astype(np.intp)
    return _DayBin(
        rows,
        index,
        state.day_mean[rows, index].astype(np.float64),
        state.day_var[rows, index].astype(np.float64),
        state.day_count[rows, index].astype(np.int64),
    )


def _profile_surprise(x: np.ndarray, observed: np.ndarray, day: _DayBin) -> np.ndarray:
    """-ln of the two-sided tail of each reading in its time-of-day bin, Bonferroni over
    the channels that bin can judge; 0 where it can judge none."""
    mean = day.mean
    std = std_of(mean, day.var)
    judged = observed & (day.count >= _DAY_MIN_COUNT)
    z = np.where(judged, np.abs(x - mean) / std, 0.0)
    log_p = np.where(judged, math.log(2.0) + gaussian_log_sf(z), 0.0)
    n_judged = np.maximum(judged.sum(axis=1), 1)
    return np.maximum(0.0, -log_p.min(axis=1) - np.log(n_judged))


def _learn_profile(
    x: np.ndarray,
    observed: np.ndarray,
    state: LikelihoodState,
    day: _DayBin | None,
    params: LikelihoodParams,
) -> dict[str, np.ndarray]:
    """The profile with each observed value folded into its bin: exact, then forgetting."""
    if day is None:
        return {"day_mean": state.day_mean, "day_var": state.day_var,
                "day_count": state.day_count}
    mean, var, count = day.mean, day.var, day.count  # (batch, channels)
    exact = count * params.day_alpha < 1.0
    n = count + 1
    weight = np.where(exact, 1.0 / n, params.day_alpha)
    delta = np.where(observed, x, mean) - mean
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below
        new_mean = (mean + weight * delta).astype(np.float32)
        new_var = np.where(
            exact,
            var + (delta * (delta - weight * delta) - var) / n,
            (1.0 - weight) * (var + weight * delta * delta),
        ).astype(np.float32)
    # A value so far out that its bin would overflow float32 is judged, but not learned.
    learned = observed & np.isfinite(new_mean) & np.isfinite(new_var)
    profile = {
        "day_mean": state.day_mean.copy(),
        "day_var": state.day_var.copy(),
        "day_count": state.day_count.copy(),
    }
    at = (day.rows, day.index)
    profile["day_mean"][at] = np.where(learned, new_mean, mean)
    profile["day_var"][at] = np.where(learned, new_var, var)
    profile["day_count"][at] = np.where(learned, np.minimum(n, DAY_COUNT_MAX), count)
    return profile


def _learn(
    average: np.ndarray, state: LikelihoodState, settled: np.ndarray, params: LikelihoodParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold each row's statistics (batch, judged) into its (count, mean, var): exact, then
    forgetting.

    Once a row is `settled`, a statistic further than `learn_clip` sd from its mean is learned
    as if it were that far: a reading can widen the distribution by at most a factor of
    1 + learn_clip^2 / horizon. Unclipped, one large incident widens it so far that later
    anomalies of the stream go unheard for thousands of readings.
    """
    if params.learn_clip:
        limit = params.learn_clip * np.sqrt(np.maximum(state.var, params.min_var))
        clipped = np.clip(average, state.mean - limit, state.mean + limit)
        average = np.where(settled[:, None], clipped, average)
    exact = (state.count < params.horizon)[:, None]
    n = state.count + 1
    weight = np.where(exact, 1.0 / n[:, None], 1.0 / params.horizon)
    delta = average - state.mean
    mean = state.mean + weight * delta
    var = np.where(
        exact,
        state.var + (delta * (average - mean) - state.var) / n[:, None],
        (1.0 - weight) * (state.var + weight * delta * delta),
    )
    return n, mean, var
