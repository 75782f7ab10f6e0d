"""Surprise -> anomaly likelihood score in [0, 1], one compiled pass over a batch of streams.

The server's score (the stepper calls `step_in_place` once a round), after Numenta's anomaly
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
   average_k). The forecast's average is judged by `forecast_weight` times its z (tuned
   on NAB: at 0.75 the same windows are found as at 1, with fewer false alarms). With
   `quiet_tail` the forecast's average is also judged from below: a stream gone flat or
   silent is forecast too well. Once a stream scores, what it learns is clipped to
   `learn_clip` sd of the distribution, so that an incident leaves it far less deaf to the
   next anomaly.
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

import numba
import numpy as np

from service.compiled import (
    B1,
    F4,
    F8,
    HARDWARE_HALF,
    I4,
    I8,
    PREFETCH_AHEAD,
    U1,
    U2,
    array,
    half_to_double,
    inline,
    kernel,
    prefetch_row,
    single_to_half,
)
from service.normalization import std_of_one
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
    forecast_weight: float = _DEFAULT.forecast_weight  # the forecast's average's z is scaled by it

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


_ERFC_DOWN = tuple(reversed(_ERFC[:-1]))  # Horner's order


def _log_sf(y: float) -> float:
    """ln P(N(0, 1) >= y), accurate to ~1e-7 relative, finite for any finite y."""
    x = min(abs(y), 1e100) * math.sqrt(0.5)  # ln P is -5e199 there: as good as -inf
    t = 1.0 / (1.0 + 0.5 * x)
    poly = _ERFC[-1]  # Horner: c + t * poly, coefficient by coefficient
    for c in _ERFC_DOWN:
        poly = poly * t + c
    log_erfc = math.log(t) - x * x + poly  # ln erfc(|y| / sqrt 2)
    return _LN_HALF + log_erfc if y >= 0.0 else math.log1p(-0.5 * math.exp(log_erfc))


# The same function twice: on arrays for Python callers, and inlined into the compiled pass.
gaussian_log_sf = numba.vectorize(["float64(float64)"], cache=True)(_log_sf)  # type: ignore[no-untyped-call]
_log_sf = inline(_log_sf)


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
    """Score one reading per stream and fold it into a copy of that stream's state.

    s: (batch,) the forecast's surprises; x, observed: (batch, channels) the readings;
    ts: (batch,) their epoch seconds. Rows not `scorable` (no forecast, nothing observed)
    score 0 and keep their averages and distributions; an observed value still enters the
    profile and the range. Only `scorable & learn` rows move the distributions.
    """
    new = LikelihoodState(**{
        name: np.array(getattr(state, name), dtype=dtype)
        for name, (_, dtype, _) in fields(params, x.shape[1]).items()
    })
    return LikelihoodUpdate(
        score=step_in_place(s, x, observed, ts, new, scorable, learn, params), state=new
    )


def step_in_place(
    s: np.ndarray,
    x: np.ndarray,
    observed: np.ndarray,
    ts: np.ndarray,
    state: LikelihoodState,
    scorable: np.ndarray,
    learn: np.ndarray,
    params: LikelihoodParams,
    slots: np.ndarray | None = None,
) -> np.ndarray:
    """`step`, writing the new state over `state` (arrays in `fields`' dtypes, strided views
    of the arena's records will do); returns the scores. With `slots` (batch,), row i's
    stream is `slots[i]` of the state's arrays (the arena's columns, say), not row i.

    One compiled call (`_step_rows`, a few loops over the rows): as numpy this was some 150
    array operations a round, 0.4 ms before any arithmetic, and three copies of the state.
    """
    score = np.empty(len(s))
    arrays = [getattr(state, name) for name in LikelihoodState.__dataclass_fields__]
    arrays[0] = arrays[0].view(np.uint16)  # recent: float16, which compiled code cannot use
    _step_rows(*[
        np.asarray(s, np.float64), np.asarray(x, np.float64), np.asarray(observed, np.bool_),
        np.asarray(ts, np.float64), np.asarray(scorable, np.bool_), np.asarray(learn, np.bool_),
        np.arange(len(s)) if slots is None else np.asarray(slots, np.int64), *arrays, score,
        params.window, params.horizon, params.settle, params.min_var, params.range_margin,
        math.log(params.range_tail), params.day_bins, params.day_alpha, params.level_window,
        params.quiet_tail, params.learn_clip, math.log(params.tests), params.forecast_weight,
    ])
    return score


_HALF_STEP = 2.0**-24  # between subnormal halves


def half_in_steps(bits: int) -> float:
    """The value of IEEE half-precision `bits` (numpy's float16), exactly, in integer steps
    (for a CPU that cannot convert half precision itself: `HARDWARE_HALF`)."""
    exponent, fraction = (bits >> 10) & 0x1F, bits & 0x3FF
    if exponent == 0:  # zero or subnormal
        value = fraction * _HALF_STEP
        return -value if bits & 0x8000 else value
    # The float32 of the same sign, exponent (rebiased, 0x1F staying all ones) and fraction.
    exponent = 0xFF if exponent == 0x1F else exponent + 112
    single = ((bits & 0x8000) << 16) | (exponent << 23) | (fraction << 13)
    return np.float64(np.uint32(single).view(np.float32))


def half_bits_in_steps(value: float) -> int:
    """The half-precision bits of `value` rounded to nearest, ties to even (numpy's cast), in
    integer steps; a NaN is 0x7E00."""
    if value != value:
        return 0x7E00
    sign, value = (0x8000, -value) if math.copysign(1.0, value) < 0.0 else (0, value)
    if value == np.inf:
        return sign | 0x7C00
    if value < 2.0**-14:  # zero or subnormal: steps of 2^-24 (1024 steps is the least normal)
        return sign | int(np.rint(value / _HALF_STEP))
    exponent = math.frexp(value)[1] - 1  # value in [2^e, 2^(e + 1))
    if exponent > 15:
        return sign | 0x7C00
    steps = int(np.rint(math.ldexp(value, 10 - exponent)))  # 1024 .. 2048: a carry is right
    bits = ((exponent + 15) << 10) + steps - 1024
    return sign | min(bits, 0x7C00)


@inline
def _half_bits_of_single(value: float) -> int:
    """`half_bits_in_steps` of a float32, by the CPU (whose NaN keeps its sign)."""
    return 0x7E00 if value != value else single_to_half(value)


# The ring of surprises is float16, which compiled code cannot use: its elements are read and
# written as their bits. Each of a reading's 2 x 15 is converted: by the CPU, 1 instruction.
_half = half_to_double if HARDWARE_HALF else inline(half_in_steps)
_half_bits = _half_bits_of_single if HARDWARE_HALF else inline(half_bits_in_steps)


@kernel(
    array(F8, 1), array(F8, 2), array(B1, 2), array(F8, 1), array(B1, 1), array(B1, 1),
    array(I8, 1), array(U2, 3), array(U2, 1), array(I4, 1), array(F4, 2), array(F4, 2),
    array(F8, 2),
    array(F8, 2), array(F4, 3), array(F4, 3), array(U1, 3), array(F4, 3), array(I4, 2),
    array(F8, 2), array(F8, 2),
    array(F8, 1),
    I8, I8, I8, F8, F8, F8, I8, F8, I8, B1, F8, F8, F8,
)
def _step_rows(  # noqa: PLR0912, PLR0913, PLR0915 -- one pass, the whole recipe
    s: np.ndarray, x: np.ndarray, observed: np.ndarray, ts: np.ndarray,  # the readings
    scorable: np.ndarray, learn: np.ndarray,
    slots: np.ndarray,  # row -> its stream's index in the state arrays
    recent: np.ndarray, filled: np.ndarray, count: np.ndarray,  # the state: read, overwritten
    mean: np.ndarray, var: np.ndarray, low: np.ndarray, high: np.ndarray,
    day_mean: np.ndarray, day_var: np.ndarray, day_count: np.ndarray,
    level_values: np.ndarray, level_count: np.ndarray,
    level_mean: np.ndarray, level_var: np.ndarray,
    score: np.ndarray,  # out
    window: int, horizon: int, settle: int, min_var: float, range_margin: float,
    log_range_tail: float, day_bins: int, day_alpha: float, level_window: int,
    quiet_tail: bool, learn_clip: float, log_tests: float, forecast_weight: float,
) -> None:
    """`step`, row after row in each of its loops; the steps are numbered as in the module's
    docstring."""
    n_rows, channels = x.shape
    signals = recent.shape[1]
    judged = mean.shape[1]
    average = np.empty(judged)
    now = np.empty(signals, np.float32)
    settled_of = np.empty(n_rows, np.bool_)  # whether each row's stream has settled
    min_var32 = np.float32(min_var)
    # A row's work is one long chain of steps that wait on each other. The profile (what its
    # bin says and learns, then its tail: 1), the level test (3) and the score's tail with
    # the range (4, 5) are taken in loops of their own, where nothing waits on them and the
    # rows overlap in the CPU: about a fifth of the likelihood's time. Each reads and learns
    # state that nothing else touches, row after row as before: the same numbers, bit for bit.
    profile_of = np.zeros(n_rows, np.float32)
    farthest_of = np.empty(n_rows)
    judged_of = np.empty(n_rows, np.int64)
    for r in range(n_rows if day_bins else 0):
        if r + PREFETCH_AHEAD < n_rows:  # (the model call in between: `gather`'s are gone)
            ahead = slots[r + PREFETCH_AHEAD]
            prefetch_row(day_mean, ahead)
            prefetch_row(day_var, ahead)
            prefetch_row(day_count, ahead)
        q = slots[r]  # the row's stream in the state arrays
        # 1. The time-of-day profile's surprise in the row's bin.
        # an int's %, not a float's: numba's float % is a call to fmod, 2% of a round
        day = int(np.floor(ts[r] / _DAY_S * day_bins)) % day_bins
        farthest, n_judged = 0.0, 0  # the largest |z| of the channels its bin can judge
        for c in range(channels):
            if observed[r, c] and day_count[q, day, c] >= _DAY_MIN_COUNT:
                bin_mean = float(day_mean[q, day, c])
                bin_std = std_of_one(bin_mean, float(day_var[q, day, c]))
                farthest = np.maximum(farthest, abs(x[r, c] - bin_mean) / bin_std)
                n_judged += 1
        farthest_of[r], judged_of[r] = farthest, n_judged
        # What the reading teaches the profile: each observed value into its bin.
        for c in range(channels):
            if not observed[r, c]:
                continue
            bin_mean = np.float64(day_mean[q, day, c])
            bin_var = np.float64(day_var[q, day, c])
            bin_n = np.int64(day_count[q, day, c])
            bin_exact = bin_n * day_alpha < 1.0
            bin_weight = 1.0 / (bin_n + 1) if bin_exact else day_alpha
            bin_delta = x[r, c] - bin_mean
            next_mean = np.float32(bin_mean + bin_weight * bin_delta)
            if bin_exact:
                next_var = np.float32(
                    bin_var + (bin_delta * (bin_delta - bin_weight * bin_delta) - bin_var)
                    / (bin_n + 1)
                )
            else:
                next_var = np.float32(
                    (1.0 - bin_weight) * (bin_var + bin_weight * bin_delta * bin_delta)
                )
            # A value so far out that its bin would overflow float32 is judged, not learned.
            if np.isfinite(next_mean) and np.isfinite(next_var):
                day_mean[q, day, c], day_var[q, day, c] = next_mean, next_var
                day_count[q, day, c] = min(bin_n + 1, DAY_COUNT_MAX)
    for r in range(n_rows if day_bins else 0):
        # Two-sided tail of the farthest (the least of the channels' tails), Bonferroni.
        n_judged = judged_of[r]
        least = math.log(2.0) + _log_sf(farthest_of[r]) if n_judged else 0.0
        profile = np.maximum(0.0, -least - math.log(max(n_judged, 1)))
        profile_of[r] = np.minimum(profile, MAX_SURPRISE)
    statistic_of = np.zeros(n_rows)
    for r in range(n_rows if level_window else 0):
        if r + PREFETCH_AHEAD < n_rows:
            ahead = slots[r + PREFETCH_AHEAD]
            prefetch_row(level_values, ahead)
            prefetch_row(level_var, ahead)
        q = slots[r]
        # 3. The level statistic, and the long-run mean and variance with this value in.
        statistic = 0.0
        for c in range(channels):
            seen = observed[r, c] and np.isfinite(x[r, c])
            value = x[r, c] if seen else 0.0
            before = level_count[q, c]
            if seen:  # the ring is float32: a value beyond its range is kept as its largest
                level_values[q, c, before % level_window] = np.float32(
                    min(max(value, -_FLOAT32_MAX), _FLOAT32_MAX)
                )
            values_n = before + seen
            level_count[q, c] = values_n
            ring = 0.0
            for i in range(level_values.shape[2]):
                ring += level_values[q, c, i]
            long_mean, long_var = level_mean[q, c], level_var[q, c]
            shift = abs(ring / max(min(values_n, level_window), 1) - long_mean) / std_of_one(
                long_mean, long_var
            )
            if seen and before >= level_window and np.isfinite(shift):
                statistic = max(statistic, shift)  # a young mean judges nothing
            # Every value counts exactly until `horizon`, then with weight 1 / horizon.
            weight = max(1.0 / max(values_n, 1), 1.0 / horizon)
            delta = value - long_mean
            new_mean = long_mean + weight * delta
            new_var = (1.0 - weight) * (long_var + weight * delta * delta)
            if seen and np.isfinite(new_mean) and np.isfinite(new_var):
                level_mean[q, c], level_var[q, c] = new_mean, new_var
        statistic_of[r] = statistic
    for r in range(n_rows):
        if r + PREFETCH_AHEAD < n_rows:  # the state's other larger row, a few rows ahead
            prefetch_row(recent, slots[r + PREFETCH_AHEAD])
        q = slots[r]
        # 1. The surprises: the forecast's, and the profile's (above).
        now[0] = np.float32(np.minimum(s[r], MAX_SURPRISE))
        if day_bins:
            now[1] = profile_of[r]
        # 2. Each surprise's average over the last `window` readings, this one in.
        filled_now = min(filled[q] + 1, window)
        for k in range(signals):
            total = np.float64(now[k])
            for i in range(1, recent.shape[2]):
                total += _half(recent[q, k, i])
            average[k] = total / filled_now
        if level_window:  # 3. The level statistic (above).
            average[signals] = statistic_of[r]
        # 4. Each statistic against the stream's distribution of it.
        # The least tail is the tail of the largest z: one tail computed, not `tests`.
        largest = -np.inf
        for j in range(judged):
            sd = np.float64(np.sqrt(np.maximum(var[q, j], min_var32)))
            z = (average[j] - np.float64(mean[q, j])) / sd
            if j == 0:  # the forecast's average: weighted, and with quiet_tail from below too
                z *= forecast_weight
                if quiet_tail:
                    largest = np.maximum(largest, -z)
            largest = np.maximum(largest, z)
        score[r] = largest  # its tail is taken below, in a loop of its own
        settled = scorable[r] and count[q] >= settle
        settled_of[r] = settled

        # What the reading teaches: the distributions (scorable, learning rows only) ...
        if scorable[r] and learn[r]:
            exact = count[q] < horizon
            n = count[q] + 1
            for j in range(judged):
                old_mean, old_var = mean[q, j], var[q, j]
                learned = average[j]
                if learn_clip and settled:
                    limit = np.float32(learn_clip) * np.sqrt(np.maximum(old_var, min_var32))
                    learned = min(max(learned, old_mean - limit), old_mean + limit)
                weight = 1.0 / n if exact else 1.0 / horizon
                delta = learned - old_mean
                new_mean = old_mean + weight * delta
                if exact:
                    new_var = old_var + (delta * (learned - new_mean) - old_var) / n
                else:
                    new_var = (1.0 - weight) * (old_var + weight * delta * delta)
                mean[q, j], var[q, j] = new_mean, new_var
            count[q] = n
        if scorable[r]:  # ... and the last surprises (rows without a forecast keep theirs).
            for k in range(signals):
                for i in range(recent.shape[2] - 1):
                    recent[q, k, i] = recent[q, k, i + 1]
                recent[q, k, recent.shape[2] - 1] = _half_bits(now[k])
            filled[q] = filled_now
    for r in range(n_rows):  # The score: the tail of the largest z ...
        q = slots[r]
        log_p = np.minimum(0.0, _log_sf(score[r]) + log_tests)
        # 5. ... and a value beyond the range the stream has shown.
        for c in range(channels):
            span = high[q, c] - low[q, c]
            margin = range_margin * span
            if observed[r, c] and np.isfinite(span) and (
                x[r, c] > high[q, c] + margin or x[r, c] < low[q, c] - margin
            ):
                log_p = np.minimum(log_p, log_range_tail)
                break
        score[r] = 0.0 - math.expm1(log_p) if settled_of[r] else 0.0
        for c in range(channels):  # What the reading teaches the range (a missing value
            if observed[r, c]:  # leaves it); nothing else reads it.
                low[q, c] = np.fmin(low[q, c], x[r, c])
                high[q, c] = np.fmax(high[q, c], x[r, c])
