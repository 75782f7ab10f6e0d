"""Does a stream still hear anomalies after a large incident? Spikes caught, by `learn_clip`.

Each case is a noisy wave (3 seeds: period, noise) with one incident (a level 10, 40 or
200 noise sd high, for 50, 150 or 300 readings, from reading 1000), then single spikes of
15 noise sd every 500 readings from 1500 to 4000; a case without an incident shows what a
stream hears anyway. Every case is replayed through the server's engine
(`service.replay.score_series`) with the bundled model, and a spike is caught when its score
reaches the card's threshold.

    python -m training.incident_recovery [--clips 0,8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from service.model import Forecaster
from service.replay import score_series
from service.settings import BUNDLED_MODELS_DIR, Settings

SPIKES = [1500, 2000, 2500, 3000, 3500, 4000]
SIZES = [10, 40, 200]  # incident height, in noise sd
DURATIONS = [50, 150, 300]  # incident length, in readings


def cases() -> dict[tuple[int, int, int], np.ndarray]:
    """(seed, size, duration) -> (time, 1) values; size 0: no incident."""
    out = {}
    for seed in range(3):
        rng = np.random.default_rng(seed)
        t = np.arange(SPIKES[-1] + 100)
        noise = 0.3 * (seed + 1)
        wave = np.sin(2 * np.pi * t / (30 + 20 * seed)) + noise * rng.standard_normal(len(t))
        wave[SPIKES] += 15 * noise
        out[seed, 0, 0] = wave[:, None]
        for size in SIZES:
            for duration in DURATIONS:
                v = wave.copy()
                v[1000 : 1000 + duration] += size * noise
                out[seed, size, duration] = v[:, None]
    return out


def caught(model: Forecaster, learn_clip: float) -> dict[tuple[int, int, int], int]:
    """Spikes whose score reaches the card's threshold, per case."""
    series = cases()
    settings = Settings(scoring={"learn_clip": learn_clip}, engine={"max_wait_ms": 0})
    scores = score_series(model, list(series.values()), settings)
    threshold = model.card.threshold
    return {
        case: int(np.count_nonzero(s[SPIKES] >= threshold))
        for case, s in zip(series, scores, strict=True)
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=BUNDLED_MODELS_DIR / "default")
    parser.add_argument("--clips", default=f"0,{Settings().scoring.learn_clip:g}")
    args = parser.parse_args(argv)
    model = Forecaster.load(args.model)
    clips = [float(c) for c in args.clips.split(",")]
    by_clip = {clip: caught(model, clip) for clip in clips}
    print(f"spikes caught of {len(SPIKES)} per case (seeds summed), by learn_clip\n")
    print("| incident (size sd x readings) | " + " | ".join(f"clip {c:g}" for c in clips) + " |")
    print("|---|" + "---|" * len(clips))
    rows = [(0, 0)] + [(size, duration) for size in SIZES for duration in DURATIONS]
    for size, duration in rows:
        label = "none" if not size else f"{size} x {duration}"
        sums = [sum(n for (_, s, d), n in by_clip[c].items() if (s, d) == (size, duration))
                for c in clips]
        print(f"| {label} | " + " | ".join(f"{n} / {3 * len(SPIKES)}" for n in sums) + " |")
    totals = [sum(v for (_, s, _), v in by_clip[c].items() if s) for c in clips]
    total = 3 * len(SPIKES) * len(SIZES) * len(DURATIONS)
    print("| all incidents | " + " | ".join(f"{n} / {total}" for n in totals) + " |")


if __name__ == "__main__":
    main()
