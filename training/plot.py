"""One picture per evaluated series: where the detector is right and where it is wrong.

Top: the readings, the forecast band (loc +- 3 scale) each reading was judged by, the labeled
anomaly windows, the probationary period, and the alerts the server opened. Bottom: the score
on a tail scale, -log10(1 - score) (4 means a one-in-10,000 reading), with the configured
threshold and the standard profile's swept one.

>>> plot_corpus(replayed, report, Path("eval/plots/default"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.nab_replay import DetectorReport, Replayed  # noqa: E402
from training.nab_scoring import probation_length  # noqa: E402

BAND_K = 3.0  # the band drawn is loc +- BAND_K * scale
_TAIL_CAP = 17.0  # float64 resolves 1 - score down to ~1e-16


def tail_scale(score: np.ndarray | float) -> np.ndarray:
    """-log10(1 - score): how far into the tail a score reaches; capped where floats end."""
    gap = np.maximum(1.0 - np.asarray(score, np.float64), 10.0**-_TAIL_CAP)
    return -np.log10(gap)


def plot_corpus(replayed: Sequence[Replayed], report: DetectorReport, out_dir: Path) -> list[Path]:
    """One PNG per file under `out_dir` (named `<category>__<name>.png`); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    swept = report.profiles["alerts"].get("standard")
    swept_threshold = swept.swept.threshold if swept is not None else None
    paths = []
    for r in replayed:
        path = out_dir / (r.file.name.removesuffix(".csv").replace("/", "__") + ".png")
        plot_series(r, path, report.detector, swept_threshold)
        paths.append(path)
    return paths


def plot_series(
    r: Replayed, path: Path, detector: str, swept_threshold: float | None = None
) -> None:
    """Draw one replayed file to `path` (PNG)."""
    n = len(r.score)
    t = np.arange(n)
    values = r.file.values
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(14, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    top.plot(t, values, lw=0.6, color="black", label="readings")
    top.fill_between(
        t, r.loc - BAND_K * r.scale, r.loc + BAND_K * r.scale,
        color="tab:blue", alpha=0.25, lw=0, label=f"forecast ± {BAND_K:g} scale",
    )
    low, high = np.percentile(values, [0.5, 99.5])
    pad = 0.25 * (high - low) if high > low else 1.0
    top.set_ylim(low - pad, high + pad)  # a runaway band must not flatten the readings
    shown = np.clip(values, low - pad, high + pad)  # markers of off-scale readings at the edge
    flagged = np.flatnonzero(r.applied & r.may_alert & (r.score >= r.threshold))
    top.plot(flagged, shown[flagged], ".", color="tab:red", ms=3, label="score ≥ threshold")
    opened = np.flatnonzero(r.opened)
    top.plot(opened, shown[opened], "v", color="tab:red", ms=9, label="alert opened")

    bottom.plot(t, tail_scale(r.score), lw=0.6, color="tab:blue", label="score")
    bottom.axhline(
        float(tail_scale(r.threshold)), color="tab:red", lw=0.8, label="configured threshold"
    )
    if swept_threshold is not None and swept_threshold < 1.0:
        bottom.axhline(
            float(tail_scale(swept_threshold)), color="tab:red", lw=0.8, ls="--",
            label="swept threshold (standard)",
        )
    bottom.set_ylabel("-log10(1 - score)")
    bottom.set_ylim(0.0, _TAIL_CAP + 0.5)
    bottom.set_xlabel("reading")

    probation = probation_length(n)
    for ax in (top, bottom):
        ax.axvspan(0, probation, color="grey", alpha=0.12, lw=0)
        for k, (first, last) in enumerate(r.file.window_indices()):
            ax.axvspan(first, last, color="tab:orange", alpha=0.25, lw=0,
                       label="labeled window" if k == 0 and ax is top else None)
    top.legend(loc="upper left", fontsize=7, ncol=3)
    bottom.legend(loc="upper left", fontsize=7, ncol=3)
    windows = len(r.file.windows)
    top.set_title(
        f"{r.file.name} — {detector}: {len(opened)} alerts, {windows} labeled windows"
        + (f", {r.refused} readings refused" if r.refused else "")
        + f"; grey: probationary period ({probation} readings)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
