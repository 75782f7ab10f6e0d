"""What a NAB evaluation writes: per-file results in NAB's format, summary.json, summary.md.

    out/results/<detector>/<category>/<detector>_<name>.csv          anomaly_score = the score
    out/results/<detector>-alerts/<category>/<detector>-alerts_<name>.csv   1 where an alert
                                                      opened at the configured threshold
    out/summary.json, out/summary.md

Both result folders read back with `training.nab.load_scores` and give the summary's
"readings" (swept) and "alerts" (configured) numbers again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.nab import write_results
from training.nab_replay import DetectorReport, Replayed

PROFILE_LABELS = {
    "standard": "standard",
    "reward_low_FP_rate": "low FP",
    "reward_low_FN_rate": "low FN",
}


def write_detector_results(out_dir: Path, detector: str, replayed: Sequence[Replayed]) -> None:
    """Write both result folders of one detector under `out_dir/results`."""
    for r in replayed:
        f = r.file
        category, name = f.name.split("/", 1)
        labels = f.labels()
        for folder, scores in ((detector, r.score), (f"{detector}-alerts", r.opened * 1.0)):
            path = out_dir / "results" / folder / category / f"{folder}_{name}"
            write_results(path, f.timestamps, f.values, scores, labels)


def write_summary(out_dir: Path, reports: Sequence[DetectorReport], command: str) -> None:
    """summary.json (everything) and summary.md (the tables a person reads)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"command": command, "detectors": [r.to_dict() for r in reports]}
    (out_dir / "summary.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (out_dir / "summary.md").write_text(summary_markdown(reports, command), encoding="utf-8")


def summary_markdown(reports: Sequence[DetectorReport], command: str) -> str:
    lines = [
        "# NAB through the streamwatch engine",
        "",
        f"Reproduce: `{command}`",
        "",
        "Normalized NAB score (0 = never fires, 100 = perfect): each profile's score when a",
        "detection is an alert opening, at the profile's best threshold over the corpus and, in",
        "parentheses, at the threshold the server is configured with. The last column counts",
        "every reading at or over the threshold as a detection (NAB's classic sweep).",
        "",
        *_headline_table(reports),
        "",
    ]
    for report in reports:
        lines += _detector_section(report)
    return "\n".join(lines) + "\n"


def _headline_table(reports: Sequence[DetectorReport]) -> list[str]:
    """One row per detector: each profile's alerts score, swept (configured)."""
    profiles = list(reports[0].profiles["alerts"]) if reports else []
    labels = [PROFILE_LABELS.get(p, p) for p in profiles]
    rows = [
        "| detector | " + " | ".join(labels) + " | readings, swept: " + " / ".join(labels) + " |",
        "|---" * (2 + len(profiles)) + "|",
    ]
    for r in reports:
        alerts = [
            f"{_num(r.profiles['alerts'][p].swept.score)} "
            f"({_num(r.profiles['alerts'][p].configured.score)})"
            for p in profiles
        ]
        readings = " / ".join(_num(r.profiles["readings"][p].swept.score) for p in profiles)
        rows.append(f"| {r.detector} | " + " | ".join(alerts) + f" | {readings} |")
    return rows


def _detector_section(r: DetectorReport) -> list[str]:
    profiles = list(r.profiles["alerts"])
    lines = [
        f"## {r.detector}",
        "",
        f"Model `{r.model}`, configured threshold {_thr(r.configured_threshold)}; "
        f"{r.readings} readings, {r.refused} refused by the server (out of order).",
        "",
        "| profile | alerts swept (threshold) | alerts configured | readings swept (threshold) "
        "| readings configured |",
        "|---|---|---|---|---|",
    ]
    for p in profiles:
        a, rd = r.profiles["alerts"][p], r.profiles["readings"][p]
        lines.append(
            f"| {PROFILE_LABELS.get(p, p)} | {_num(a.swept.score)} ({_thr(a.swept.threshold)}) "
            f"| {_num(a.configured.score)} | {_num(rd.swept.score)} ({_thr(rd.swept.threshold)}) "
            f"| {_num(rd.configured.score)} |"
        )
    lines += ["", "Per category (alerts, each profile at its swept threshold):", ""]
    lines += ["| category | " + " | ".join(PROFILE_LABELS.get(p, p) for p in profiles) + " |"]
    lines += ["|---" * (1 + len(profiles)) + "|"]
    for category, scores in r.categories.items():
        cells = [_num(scores[p]) if scores[p] is not None else "no windows" for p in profiles]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    lines += ["", "Events (alerts, per labeled window):", ""]
    lines += [
        "| threshold | windows | detected | false alarms | precision | recall | F1 "
        "| median delay |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for how, e in r.events.items():
        delay = (
            "-"
            if e.median_delay_readings is None
            else f"{e.median_delay_readings:g} readings ({_duration(e.median_delay_s)})"
        )
        lines.append(
            f"| {how} | {e.events} | {e.detected} | {e.false_alarms} | {e.precision:.2f} "
            f"| {e.recall:.2f} | {e.f1:.2f} | {delay} |"
        )
    ranked = sorted((f for f in r.files if f.normalized is not None), key=lambda f: f.normalized)
    lines += ["", "Best and worst files (standard, alerts at the swept threshold):", ""]
    lines += ["| file | score | windows | detected | false alarms |", "|---|---|---|---|---|"]
    shown = ranked[-5:][::-1] + ranked[:5] if len(ranked) > 10 else ranked[::-1]
    for f in shown:
        lines.append(
            f"| {f.name} | {_num(f.normalized)} | {f.windows} | {f.detected} | {f.false_alarms} |"
        )
    if r.notes:
        lines += ["", "Notes:", "", *(f"* {note}" for note in r.notes)]
    quiet = [f for f in r.files if f.normalized is None]
    if quiet:
        alarms = ", ".join(f"{f.name.split('/')[-1]} {f.false_alarms}" for f in quiet)
        lines += ["", f"False alarms in files without windows: {alarms}."]
    return [*lines, ""]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _thr(threshold: float) -> str:
    """A threshold near 1 as 1 - 10^-q, which is how far into the tail it reaches."""
    if threshold > 1.0:
        return "detects nothing"
    if threshold == 1.0:
        return "1"
    return f"1-10^-{-math.log10(1.0 - threshold):.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "-"
    hours = seconds / 3600.0
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"
