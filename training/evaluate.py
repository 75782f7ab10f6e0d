"""`streamwatch evaluate nab`: detection quality on the Numenta Anomaly Benchmark.

    streamwatch evaluate nab ../shared/data/nab --model default --out eval/nab \\
        [--plot eval/nab/plots] [--baselines] [--per-stream]

Replays every corpus file through the real engine (`training.nab_replay`), scores what the
server would have done with NAB's scorer, and writes NAB results files, `summary.json` and
`summary.md` (`training.nab_report`) and, with `--plot`, one PNG per file
(`training.plot`). `--baselines` adds a last-value and a rolling z-score forecaster through
the same path (`training.baselines`); `--per-stream` adds the model fine-tuned on each
file's probationary period (`training.finetune`).

The full corpus (58 files, 365,558 readings) takes about half a minute per detector on two
cores; `--per-stream` adds a few seconds of fine-tuning per file and a slower replay (one
model call per stream and round), about ten minutes in all. It is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from service import scoring
from service.errors import StreamwatchError
from service.model import Forecaster
from service.registry import ModelRegistry
from service.settings import Settings
from training.baselines import BASELINES, write_baseline
from training.export import ParityError, load_torch_forecaster
from training.finetune import finetune_stream
from training.nab import NabFile, load_corpus, load_profiles
from training.nab_replay import DetectorReport, replay_corpus, score_detector
from training.nab_report import write_detector_results, write_summary
from training.nab_scoring import probation_length
from training.plot import plot_corpus


def main(argv: list[str]) -> int:
    """`streamwatch evaluate nab NAB_DIR --model NAME --out DIR ...`; argv after `evaluate`."""
    args = _parser().parse_args(argv)
    command = shlex.join(["streamwatch", "evaluate", *argv])
    try:
        reports = run_nab(
            args.nab_dir,
            args.model,
            args.out,
            models_dir=args.models_dir,
            plot_dir=args.plot,
            baselines=args.baselines,
            per_stream=args.per_stream,
            files=args.files,
            command=command,
            log=_stderr,
        )
    except (OSError, ValueError, StreamwatchError) as exc:
        print(f"streamwatch evaluate: {exc}", file=sys.stderr)
        return 1
    for report in reports:
        alerts = report.profiles["alerts"]
        scores = (f"{p} {s.swept.score:.1f} ({s.configured.score:.1f})" for p, s in alerts.items())
        print(f"{report.detector}: " + ", ".join(scores))
    print(f"wrote {args.out / 'summary.md'}")
    return 0


def run_nab(
    nab_dir: Path,
    model: str,
    out_dir: Path,
    *,
    models_dir: Path | None = None,
    plot_dir: Path | None = None,
    baselines: bool = False,
    per_stream: bool = False,
    files: str | None = None,
    command: str = "",
    log: Callable[[str], None] = lambda line: None,
) -> list[DetectorReport]:
    """Evaluate `model` (and, if asked, the baselines and the per-stream mode) on the corpus.

    Writes results, summary and plots; returns one report per detector.
    """
    corpus = load_corpus(nab_dir)
    if files is not None:
        corpus = [f for f in corpus if fnmatch.fnmatchcase(f.name, files)]
        if not corpus:
            raise ValueError(f"no corpus file matches {files!r}")
    profiles = load_profiles(nab_dir)
    settings = Settings(model={"dir": models_dir}) if models_dir else Settings()
    registry = ModelRegistry.load(settings.model)
    registry.get(model)  # UnknownModelError names the models there are
    alert_params = scoring.AlertParams(
        **settings.alerts.model_dump(include={"k", "m", "close_factor", "cooldown"})
    )
    # (detector, what it runs, its registry, the model each file's stream is bound to)
    detectors: list[tuple[str, str, ModelRegistry, Callable[[NabFile], str | None]]] = [
        (model, model, registry, lambda f: model)
    ]
    notes: dict[str, list[str]] = {}
    if baselines:
        threshold = settings.scoring.thresholds.get(model, registry.get(model).card.threshold)
        for kind in BASELINES:
            name = f"baseline-{kind}"
            write_baseline(kind, out_dir / "models" / name, threshold=threshold)
            baseline = _single(out_dir / "models" / name, settings)
            detectors.append((name, name, baseline, lambda f: None))
    if per_stream:
        log(f"fine-tuning {model} on the probationary period of {len(corpus)} files")
        registry_ps, model_of, notes[f"{model}-per-stream"] = _per_stream(
            registry, model, corpus, settings, out_dir, log
        )
        label = f"{model}, fine-tuned on each file's probationary period"
        detectors.append((f"{model}-per-stream", label, registry_ps, model_of))

    reports = []
    for detector, label, detector_registry, model_of in detectors:
        started = time.perf_counter()
        replayed = replay_corpus(corpus, detector_registry, settings, model_of)
        report = score_detector(detector, replayed, profiles, alert_params, model=label)
        report.notes.extend(notes.get(detector, []))
        log(f"{detector}: replayed and scored in {time.perf_counter() - started:.1f} s")
        write_detector_results(out_dir, detector, replayed)
        if plot_dir is not None:
            plot_corpus(replayed, report, plot_dir / detector)
        reports.append(report)
    write_summary(out_dir, reports, command)
    return reports


def _single(model_dir: Path, settings: Settings) -> ModelRegistry:
    """A registry holding just the model in `model_dir`, as the default."""
    served = Forecaster.load(model_dir, intra_op_threads=settings.model.intra_op_threads)
    name = model_dir.name
    return ModelRegistry({name: served}, settings.model.model_copy(update={"default": name}))


def _per_stream(
    registry: ModelRegistry,
    model: str,
    corpus: Sequence[NabFile],
    settings: Settings,
    out_dir: Path,
    log: Callable[[str], None],
) -> tuple[ModelRegistry, Callable[[NabFile], str | None], list[str]]:
    """Fine-tune `model` on each file's probationary period: a registry of the results.

    A fine-tuned model whose export fails the parity check is not used: that file keeps the
    general model, and a note says so.
    """
    general = load_torch_forecaster(Path(settings.model.dir) / model)
    card = registry.get(model).card
    served: dict[str, Forecaster] = {model: registry.get(model)}
    names: dict[str, str] = {}
    notes: list[str] = []
    for f in corpus:
        name = f.name.removesuffix(".csv").replace("/", ".")
        target = out_dir / "models" / "per-stream" / name
        started = time.perf_counter()
        stretch = f.values[: probation_length(len(f.values)), None]  # (time, channels)
        try:
            finetune_stream(general, card, stretch, target)
        except ParityError as exc:
            notes.append(f"{f.name}: kept the general model, the fine-tuned export failed: {exc}")
            log(f"  {notes[-1]}")
            names[f.name] = model
            continue
        served[name] = Forecaster.load(target, intra_op_threads=settings.model.intra_op_threads)
        names[f.name] = name
        log(f"  {f.name}: {time.perf_counter() - started:.1f} s")
    per_stream = ModelRegistry(served, settings.model.model_copy(update={"default": model}))
    return per_stream, lambda f: names[f.name], notes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamwatch evaluate",
        description="Measure detection quality on a labeled corpus, through the real engine.",
    )
    commands = p.add_subparsers(dest="corpus", required=True, metavar="CORPUS")
    nab = commands.add_parser("nab", help="the Numenta Anomaly Benchmark")
    nab.add_argument("nab_dir", type=Path, help="NAB checkout: data/, labels/, config/")
    nab.add_argument("--model", default="default", help="model to evaluate (default: default)")
    nab.add_argument("--models-dir", type=Path, help="where models are loaded from")
    nab.add_argument("--out", type=Path, required=True, help="folder for results and summary")
    nab.add_argument("--plot", type=Path, help="folder for one PNG per file and detector")
    nab.add_argument(
        "--baselines",
        action="store_true",
        help="also evaluate the last-value and rolling z-score baselines",
    )
    nab.add_argument(
        "--per-stream",
        action="store_true",
        help="also fine-tune the model on each file's probationary period",
    )
    nab.add_argument("--files", help="only corpus files matching this glob (realTweets/*)")
    return p


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
