"""`streamwatch train`: arguments in, a trained, calibrated, exported model directory out.
`streamwatch export`: a model directory written again as this version exports it.

`service.cli` hands over `argv` with the subcommand first, importing this module (and
PyTorch) only then.

    streamwatch train --synthetic --cell gru --hidden 64 --epochs 30 --seed 0 --out models/x
    streamwatch train --data sensors/ --columns temp,pressure --out models/plant
    streamwatch export models/plant --out models/plant-2
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import ModelLoadError
from service.model import ModelCard, sha256_of
from service.series import DataError, Stream, load_streams
from training.dataset import DatasetError
from training.export import PARITY_STEPS, ParityError, export_model, load_torch_forecaster
from training.pipeline import build_model
from training.synthetic import SyntheticConfig, generate
from training.train import TrainConfig


def main(argv: list[str]) -> int:
    """Run one training subcommand; argv[0] is its name. Returns the exit status."""
    if argv and argv[0] == "evaluate":
        from training.evaluate import main as evaluate

        return evaluate(argv[1:])
    if argv and argv[0] == "export":
        return _export(argv[1:])
    if not argv or argv[0] != "train":
        print(f"streamwatch {argv[0] if argv else '(none)'}: not a training command",
              file=sys.stderr)
        return 2
    parser = _parser()
    args = parser.parse_args(argv[1:])
    if args.synthetic and args.columns:
        parser.error("--columns picks columns of --data files; synthetic data has its own")
    config = TrainConfig(
        cell=args.cell,
        hidden_size=args.hidden,
        num_layers=args.layers,
        nonlinearity=args.nonlinearity,
        epochs=args.epochs,
        batch_size=args.batch_size,
        bptt=args.bptt,
        segment_len=args.segment_len,
        lr=args.lr,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        patience=args.patience,
        seed=args.seed,
    )
    try:
        streams, source = _streams(args)
        card = build_model(
            streams,
            config,
            args.out,
            command=shlex.join(["streamwatch", *argv]),
            name=args.name,
            version=args.version,
            per_stream=not args.no_per_stream,
            false_alarm_rate=args.false_alarm_rate,
            data_source=source,
        )
    except (DataError, DatasetError) as exc:
        print(f"streamwatch train: {exc}", file=sys.stderr)
        return 1
    heldout = card.metrics["heldout"]
    print(
        f"wrote {args.out}: val nll {card.metrics['val_nll']:.4f}, held-out MAE "
        f"{heldout['mae']:.4f} vs last value {heldout['mae_last_value']:.4f}, "
        f"{card.training['seconds']}s"
    )
    return 0


def _export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="streamwatch export",
        description="Write a model directory again as this version exports it: the same "
        "weights and card, the step graph ONNX Runtime runs fastest (a GRU or RNN that an "
        "earlier version exported as ONNX's fused op steps faster after), checked for parity.",
    )
    p.add_argument("model_dir", type=Path, help="the model directory to read")
    p.add_argument("--out", type=Path, required=True, help="model directory to write (a new one)")
    args = p.parse_args(argv)
    if args.out.resolve() == args.model_dir.resolve():
        p.error("--out must be another directory: a failed export deletes what it wrote")
    try:
        card = ModelCard.load(args.model_dir)
        model = load_torch_forecaster(args.model_dir)
        streams = generate(SyntheticConfig(n_streams=5, length=PARITY_STEPS,
                                           channels=card.n_channels))
        values = np.stack([s.values for s in streams], axis=1).astype(np.float32)
        card = export_model(model, args.out, card, values)  # the same weights and card
    except (ModelLoadError, ValueError, ParityError) as exc:
        print(f"streamwatch export: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: sha256 {card.sha256}, parity "
          f"{card.metrics['onnx_parity_max_abs_diff']:.2g}")
    return 0


def _streams(args: argparse.Namespace) -> tuple[list[Stream], dict[str, Any]]:
    if args.synthetic:
        synthetic = SyntheticConfig(
            n_streams=args.synthetic_streams,
            length=args.synthetic_length,
            channels=args.synthetic_channels,
            seed=args.seed,
        )
        return generate(synthetic), {"source": "synthetic", "synthetic": asdict(synthetic)}
    columns = args.columns.split(",") if args.columns else None
    streams = load_streams(args.data, columns)
    files = [args.data] if args.data.is_file() else sorted(args.data.rglob("*.csv"))
    return streams, {
        "source": str(args.data),
        "columns": list(streams[0].channels),
        "files": [{"path": str(f), "sha256": sha256_of(f)} for f in files],
    }


def _parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(
        prog="streamwatch train",
        description="Train a forecaster, calibrate it on held-out data, export it to ONNX.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a CSV file (one stream) or a folder of them")
    source.add_argument("--synthetic", action="store_true", help="the embedded synthetic data")
    p.add_argument("--columns", help="channel columns, comma separated (default: all but time)")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--name", help="model name (default: the --out folder's name)")
    p.add_argument("--version", default="1", help="model version (default: 1)")

    model = p.add_argument_group("model")
    model.add_argument("--cell", choices=["gru", "lstm", "rnn"], default=defaults.cell)
    model.add_argument(
        "--nonlinearity", choices=["tanh", "relu"], default="tanh", help="rnn cell only"
    )
    model.add_argument("--hidden", type=int, default=defaults.hidden_size)
    model.add_argument("--layers", type=int, default=defaults.num_layers)
    model.add_argument(
        "--no-per-stream",
        action="store_true",
        help="train on raw values: the server must not standardize streams",
    )

    loop = p.add_argument_group("training")
    loop.add_argument("--epochs", type=int, default=defaults.epochs)
    loop.add_argument("--batch-size", type=int, default=defaults.batch_size)
    loop.add_argument("--bptt", type=int, default=defaults.bptt, help="readings per BPTT chunk")
    loop.add_argument("--segment-len", type=int, default=defaults.segment_len)
    loop.add_argument("--lr", type=float, default=defaults.lr)
    loop.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    loop.add_argument("--grad-clip", type=float, default=defaults.grad_clip)
    loop.add_argument("--patience", type=int, default=defaults.patience)
    loop.add_argument("--seed", type=int, default=defaults.seed)
    loop.add_argument(
        "--false-alarm-rate",
        type=float,
        help="set the threshold to the score held-out normal readings reach at this rate "
        "(default: the scorer's own threshold, 0.99999, with the rate it gives recorded)",
    )

    synthetic = p.add_argument_group("synthetic data")
    synthetic.add_argument("--synthetic-streams", type=int, default=128)
    synthetic.add_argument("--synthetic-length", type=int, default=2048)
    synthetic.add_argument("--synthetic-channels", type=int, default=1)
    return p
