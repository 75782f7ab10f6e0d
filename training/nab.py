"""The Numenta Anomaly Benchmark on disk: its corpus, profiles, detector scores and results files.

Scoring lives in ``training.nab_scoring``. Pure numpy: server-side evaluation imports both.

    files = load_corpus(nab_dir)
    scores = load_scores(nab_dir / "reference" / "numenta", "numenta")
    profiles = load_profiles(nab_dir)  # standard, reward_low_FP_rate, reward_low_FN_rate
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Profile:
    """The weights of one NAB application profile (its cost matrix)."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


@dataclass(frozen=True, eq=False)
class NabFile:
    """One labeled series of the corpus, named as NAB names it: ``realKnownCause/nyc_taxi.csv``.

    ``windows`` are the anomaly windows as inclusive ``(start, end)`` timestamps, in order.
    """

    name: str
    timestamps: np.ndarray  # (readings,) datetime64[s], increasing
    values: np.ndarray  # (readings,) float64
    windows: tuple[tuple[np.datetime64, np.datetime64], ...]

    def window_indices(self) -> list[tuple[int, int]]:
        """Each window as inclusive reading indices: the readings with start <= t <= end."""
        indices: list[tuple[int, int]] = []
        for start, end in self.windows:
            first = int(np.searchsorted(self.timestamps, start, side="left"))
            last = int(np.searchsorted(self.timestamps, end, side="right")) - 1
            if last < first:
                raise ValueError(f"{self.name}: window [{start}, {end}] holds no reading")
            if indices and first <= indices[-1][1]:
                raise ValueError(f"{self.name}: windows overlap or are out of order")
            indices.append((first, last))
        return indices

    def labels(self) -> np.ndarray:
        """1 for readings inside an anomaly window, else 0: NAB's ``label`` column."""
        labels = np.zeros(len(self.timestamps), dtype=np.int64)
        for first, last in self.window_indices():
            labels[first : last + 1] = 1
        return labels


def load_corpus(nab_dir: Path) -> list[NabFile]:
    """Read every labeled series of the NAB corpus at ``nab_dir``, sorted by name.

    Raises ``ValueError`` if a window bound is not a timestamp of its file, as NAB's labeler
    does: its scorer finds windows by exact timestamp.
    """
    with open(nab_dir / "labels" / "combined_windows.json") as f:
        raw_windows: dict[str, list[list[str]]] = json.load(f)
    files = []
    for name in sorted(raw_windows):
        columns = _read_csv_columns(nab_dir / "data" / name)
        timestamps = np.array(columns["timestamp"], dtype="datetime64[s]")
        bounds = np.array(raw_windows[name], dtype="datetime64[s]").reshape(-1, 2)
        missing = bounds.ravel()[~np.isin(bounds.ravel(), timestamps)]
        if len(missing):
            raise ValueError(f"{name}: window bounds {missing} are not timestamps of the file")
        values = np.array(columns["value"], dtype=np.float64)
        windows = tuple((start, end) for start, end in bounds)
        files.append(NabFile(name, timestamps, values, windows))
    return files


def load_profiles(nab_dir: Path) -> dict[str, Profile]:
    """Read the scoring profiles of ``config/profiles.json``, by name."""
    with open(nab_dir / "config" / "profiles.json") as f:
        raw = json.load(f)
    return {
        name: Profile(
            name,
            tp_weight=float(entry["CostMatrix"]["tpWeight"]),
            fp_weight=float(entry["CostMatrix"]["fpWeight"]),
            fn_weight=float(entry["CostMatrix"]["fnWeight"]),
        )
        for name, entry in raw.items()
    }


def load_scores(results_dir: Path, detector_name: str) -> dict[str, np.ndarray]:
    """Read a detector's per-reading anomaly scores, keyed by corpus file name.

    ``results_dir`` is the detector's own folder, laid out as NAB's ``results/<detector>/``:
    ``<category>/<detector>_<name>.csv`` with an ``anomaly_score`` column, in the results
    format ``timestamp,value,anomaly_score,label`` or the reference ``timestamp,anomaly_score``.
    """
    prefix = f"{detector_name}_"
    scores = {}
    for path in sorted(results_dir.glob(f"*/{prefix}*.csv")):
        name = f"{path.parent.name}/{path.name.removeprefix(prefix)}"
        scores[name] = np.array(_read_csv_columns(path)["anomaly_score"], dtype=np.float64)
    return scores


def write_results(
    path: Path,
    timestamps: np.ndarray,
    values: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
) -> None:
    """Write one file's results in NAB's format: ``timestamp,value,anomaly_score,label``.

    ``labels`` is 1 inside anomaly windows (``NabFile.labels()``); parent folders are made.
    """
    if not len(timestamps) == len(values) == len(scores) == len(labels):
        raise ValueError("timestamps, values, scores and labels must have the same length")
    # Whole seconds are written as NAB writes them, "2014-07-01 00:00:00"; finer ones kept.
    whole_seconds = bool(np.all(timestamps == timestamps.astype("datetime64[s]")))
    stamps = np.datetime_as_string(timestamps, unit="s" if whole_seconds else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["timestamp", "value", "anomaly_score", "label"])
        writer.writerows(
            (str(t).replace("T", " "), repr(float(v)), repr(float(s)), int(label))
            for t, v, s, label in zip(stamps, values, scores, labels, strict=True)
        )


def _read_csv_columns(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as f:
        header, *rows = [row for row in csv.reader(f) if row]
    return {column: [row[i] for row in rows] for i, column in enumerate(header)}
