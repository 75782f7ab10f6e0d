"""The embedded data set: varied synthetic streams with labeled, injected anomalies.

Each stream draws its own level, unit, seasonal shapes (periods from a few readings to
hundreds), trend, random-walk and noise levels, and a few regime changes (noise, amplitude
and slope move to new values over a short transition; the level stays continuous). Anomalies
are then injected from a separate generator, each confined to its labeled window, so a
stream generated with and without anomalies differs exactly inside the labels. Everything is
drawn from `numpy` generators seeded by `(seed, stream index)`: the same config gives the
same streams, and adding streams does not change the earlier ones.

>>> streams = generate(SyntheticConfig(n_streams=2, length=500, seed=1))
>>> streams[0].values.shape, streams[0].anomaly_mask.shape
((500, 1), (500,))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.series import Anomaly, Stream

ANOMALY_KINDS = ("spike", "level_shift", "drift", "variance_change", "stuck", "frequency_change")
START_TIMESTAMP = 1_704_067_200.0  # 2024-01-01T00:00:00Z
INTERVAL_S = 300.0  # five minutes, the cadence of most sensor logs (NAB among them)


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. `anomalies_per_stream` is a Poisson mean; 0 gives clean streams."""

    n_streams: int = 64
    length: int = 2048
    channels: int = 1
    anomalies_per_stream: float = 1.5
    kinds: tuple[str, ...] = ANOMALY_KINDS
    seed: int = 0


@dataclass(frozen=True, eq=False)
class _Channel:
    values: np.ndarray  # (time,) in units of the channel's base noise
    noise_scale: np.ndarray  # (time,) one-step innovation scale, sizes the anomalies
    seasonals: list[_Seasonal]
    season_gain: np.ndarray  # (time,) regime multiplier of the seasonal amplitude


@dataclass(frozen=True)
class _Seasonal:
    period: float
    phase: float
    amplitudes: np.ndarray  # (harmonics,) amplitude of harmonic k+1, in units of the noise
    phases: np.ndarray  # (harmonics,)


def generate(config: SyntheticConfig) -> list[Stream]:
    """Generate `config.n_streams` streams of `config.length` readings each."""
    unknown = set(config.kinds) - set(ANOMALY_KINDS)
    if unknown:
        raise ValueError(f"unknown anomaly kinds {sorted(unknown)}; known: {ANOMALY_KINDS}")
    return [_stream(config, i) for i in range(config.n_streams)]


def _stream(config: SyntheticConfig, index: int) -> Stream:
    clean_rng = np.random.default_rng([config.seed, index, 0])
    anomaly_rng = np.random.default_rng([config.seed, index, 1])
    t = np.arange(config.length, dtype=np.float64)
    shared = _channel(clean_rng, t).values if config.channels > 1 else None
    chans = [_channel(clean_rng, t) for _ in range(config.channels)]
    values = np.stack([ch.values for ch in chans], axis=1)  # (time, channels)
    if shared is not None:
        # Channels of one machine move together in part: a common component.
        loadings = clean_rng.normal(0.0, 1.0, size=config.channels)
        values += shared[:, None] * loadings[None, :]
    unit = 10.0 ** clean_rng.uniform(-2.0, 3.0)
    level = unit * clean_rng.uniform(-20.0, 20.0)
    quantum = clean_rng.uniform(0.3, 1.5) if clean_rng.random() < 0.15 else None

    anomalies = _draw_anomalies(anomaly_rng, config, chans)
    for anomaly in anomalies:
        _inject(anomaly_rng, anomaly, values, chans, t)
    if quantum is not None:
        # Some sensors report in coarse steps; rounding happens after injection, as in a device.
        values = np.round(values / quantum) * quantum
    mask = np.zeros(config.length, dtype=bool)
    for anomaly in anomalies:
        mask[anomaly.start : anomaly.end] = True
    return Stream(
        stream_id=f"synthetic-{config.seed}-{index}",
        timestamps=START_TIMESTAMP + INTERVAL_S * t,
        values=level + unit * values,
        channels=_channel_names(config.channels),
        anomaly_mask=mask,
        anomalies=tuple(anomalies),
    )


def _channel_names(channels: int) -> tuple[str, ...]:
    return ("value",) if channels == 1 else tuple(f"ch{c}" for c in range(channels))


def _channel(rng: np.random.Generator, t: np.ndarray) -> _Channel:
    """One clean channel, in units of its base noise."""
    n = len(t)
    regimes = _regimes(rng, n)  # (time, 3): noise, amplitude and slope multipliers
    noise = rng.uniform(0.1, 1.0) * regimes[:, 0]
    seasonals = [_seasonal(rng) for _ in range(rng.choice(4, p=[0.15, 0.45, 0.3, 0.1]))]
    season = sum((_seasonal_wave(s, t) for s in seasonals), np.zeros(n)) * regimes[:, 1]
    slope = rng.normal(0.0, 4.0 / n) * regimes[:, 2] if rng.random() < 0.4 else np.zeros(n)
    walk = _ar1(rng, n, phi=1.0 if rng.random() < 0.3 else rng.uniform(0.0, 0.99))
    walk_scale = 10.0 ** rng.uniform(-1.5, 0.3) if rng.random() < 0.7 else 0.0
    # Many real sensors have heavier tails than Gaussian even when nothing is wrong.
    df = rng.uniform(2.2, 6.0) if rng.random() < 0.35 else None
    eps = rng.normal(size=n) if df is None else rng.standard_t(df, n) * np.sqrt((df - 2) / df)
    values = season + np.cumsum(slope) + walk_scale * walk + noise * eps
    return _Channel(values, np.sqrt(noise**2 + walk_scale**2), seasonals, regimes[:, 1])


def _regimes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Piecewise-constant multipliers with smooth transitions; (time, 3)."""
    out = np.ones((n, 3))
    for _ in range(rng.poisson(0.7)):
        start = int(rng.integers(0, n))
        width = int(rng.integers(10, 100))
        ramp = np.clip((np.arange(n) - start) / width, 0.0, 1.0)[:, None]
        factor = np.exp(rng.uniform(-0.7, 0.7, size=3))
        out *= 1.0 + ramp * (factor - 1.0)
    return out


def _seasonal(rng: np.random.Generator) -> _Seasonal:
    harmonics = int(rng.integers(1, 5))
    # Amplitudes from a fraction of the noise to 30 times it: hidden to dominant cycles.
    base = 10.0 ** rng.uniform(-0.5, 1.5)
    decay = rng.uniform(0.5, 2.0)
    amplitudes = base * np.arange(1, harmonics + 1) ** -decay * rng.uniform(0.3, 1.0, harmonics)
    return _Seasonal(
        period=float(np.exp(rng.uniform(np.log(6.0), np.log(400.0)))),
        phase=float(rng.uniform(0.0, 2 * np.pi)),
        amplitudes=amplitudes,
        phases=rng.uniform(0.0, 2 * np.pi, harmonics),
    )


def _seasonal_wave(s: _Seasonal, t: np.ndarray, rate: float = 1.0) -> np.ndarray:
    angle = 2 * np.pi * t * rate / s.period + s.phase
    harmonics = np.arange(1, len(s.amplitudes) + 1)
    waves = np.sin(harmonics[None, :] * angle[:, None] + s.phases[None, :])  # (time, harmonics)
    return waves @ s.amplitudes


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    eps = rng.normal(size=n)
    out = np.empty(n)
    acc = 0.0
    for i in range(n):
        acc = phi * acc + eps[i]
        out[i] = acc
    return out


def _draw_anomalies(
    rng: np.random.Generator, config: SyntheticConfig, chans: list[_Channel]
) -> list[Anomaly]:
    """Non-overlapping windows after the first 10% of the stream (the normalizer's warm-up)."""
    n = config.length
    seasonal = any(ch.seasonals for ch in chans)
    kinds = [k for k in config.kinds if k != "frequency_change" or seasonal]
    if not kinds or config.anomalies_per_stream <= 0:
        return []
    taken = np.zeros(n, dtype=bool)
    anomalies: list[Anomaly] = []
    for _ in range(rng.poisson(config.anomalies_per_stream)):
        kind = str(rng.choice(kinds))
        length = _duration(rng, kind, n)
        first = max(1, n // 10)
        start = int(rng.integers(first, max(first + 1, n - length)))
        end = min(n, start + length)
        # A gap either side keeps windows apart, so each one's effect is its own.
        if taken[max(0, start - 20) : end + 20].any():
            continue
        taken[start:end] = True
        anomalies.append(Anomaly(kind, start, end))
    return sorted(anomalies, key=lambda a: a.start)


def _duration(rng: np.random.Generator, kind: str, n: int) -> int:
    low, high = {
        "spike": (1, 3),
        "level_shift": (20, 300),
        "drift": (50, 400),
        "variance_change": (30, 300),
        "stuck": (20, 200),
        "frequency_change": (50, 400),
    }[kind]
    return int(rng.integers(low, min(high, max(low + 1, n // 5)) + 1))


def _inject(
    rng: np.random.Generator,
    anomaly: Anomaly,
    values: np.ndarray,
    chans: list[_Channel],
    t: np.ndarray,
) -> None:
    """Change `values` (time, channels) in place, inside the anomaly's window only."""
    window = slice(anomaly.start, anomaly.end)
    length = anomaly.end - anomaly.start
    n_channels = values.shape[1]
    hit = rng.choice(n_channels, size=int(rng.integers(1, n_channels + 1)), replace=False)
    for c in hit:
        ch = chans[c]
        sigma = ch.noise_scale[anomaly.start]
        sign = rng.choice([-1.0, 1.0])
        if anomaly.kind == "spike":
            values[window, c] += sign * rng.uniform(5.0, 12.0) * sigma
        elif anomaly.kind == "level_shift":
            values[window, c] += sign * rng.uniform(4.0, 10.0) * sigma
        elif anomaly.kind == "drift":
            ramp = np.arange(1, length + 1) / length
            values[window, c] += sign * rng.uniform(6.0, 15.0) * sigma * ramp
        elif anomaly.kind == "variance_change":
            values[window, c] += rng.uniform(3.0, 6.0) * sigma * rng.normal(size=length)
        elif anomaly.kind == "stuck":
            values[window, c] = values[anomaly.start - 1, c]
        elif anomaly.kind == "frequency_change":
            if not ch.seasonals:
                values[window, c] += sign * rng.uniform(4.0, 10.0) * sigma  # nothing to warp
                continue
            rate = float(np.exp(rng.choice([-1.0, 1.0]) * rng.uniform(np.log(1.8), np.log(3.0))))
            tw, gain = t[window], ch.season_gain[window]
            for s in ch.seasonals:
                values[window, c] += gain * (_seasonal_wave(s, tw, rate) - _seasonal_wave(s, tw))
