"""The `streamwatch` command: serve, replay, compile here; train, export, evaluate from `training`.

The training subcommands import `training` (and PyTorch) only when called, so a server
install without the `train` extra still has a working `streamwatch serve`.
"""

from __future__ import annotations

import argparse
import gc
import logging
import logging.config
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.settings import Settings

_TRAINING_COMMANDS = {
    "train": "train, calibrate and export a model",
    "export": "write a model again as this version exports it",
    "evaluate": "score models on a labelled corpus (NAB)",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _TRAINING_COMMANDS:
        return _training(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "replay":
        from service.replay import replay_command

        return replay_command(args)
    if args.command == "compile":
        return _compile(args)
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamwatch", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="start the server (settings from STREAMWATCH_*)")
    serve.add_argument("--host", help="bind address (default from settings: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default from settings: 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (each keeps its own state)")
    serve.add_argument("--models-dir", type=Path, help="where models are loaded from")
    replay = commands.add_parser("replay", help="run a CSV through the engine, offline")
    replay.add_argument("file", type=Path, help="CSV with a header row (as for training)")
    replay.add_argument("--stream", required=True, help="stream id to replay it as")
    replay.add_argument("--model", help="model to bind the stream to (default: routing)")
    replay.add_argument("--columns", help="channel columns, comma separated (default: card's)")
    replay.add_argument("--out", type=Path, required=True, help="results CSV to write")
    replay.add_argument("--models-dir", type=Path, help="where models are loaded from")
    compile_ = commands.add_parser(
        "compile", help="compile the models' passes into numba's cache (an image build runs it)"
    )
    compile_.add_argument("--models-dir", type=Path, help="where models are loaded from")
    for name, does in sorted(_TRAINING_COMMANDS.items()):
        commands.add_parser(name, help=f"{does} (needs the train extra: pip install .[train])")
    return parser


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.logs import log_config
    from service.security import bind_host
    from service.settings import command_settings

    server = {k: v for k in ("host", "port", "workers") if (v := getattr(args, k)) is not None}
    settings = command_settings(args.models_dir, **({"server": server} if server else {}))
    gc.set_threshold(*settings.server.gc_thresholds)
    logging.config.dictConfig(log_config(settings.log))
    logging.captureWarnings(True)  # warnings become log lines too, not bare stderr text
    host = bind_host(settings.server.host, keyed=bool(settings.security.api_keys))
    _say_who_may_connect(settings, host)
    app: object = create_app(settings)
    if settings.server.workers > 1:
        print(
            "streamwatch: each of several workers keeps its own streams, so a stream's readings "
            "must all reach the same worker; with a load balancer that cannot, use one worker",
            file=sys.stderr,
        )
        if args.models_dir is not None:  # the workers read their settings from the environment
            os.environ["STREAMWATCH_MODEL__DIR"] = str(args.models_dir)
        app = "service.app:create_app_from_env"
    uvicorn.run(
        app,  # type: ignore[arg-type]
        factory=isinstance(app, str),
        host=host,
        port=settings.server.port,
        workers=settings.server.workers,
        ws_max_size=settings.limits.max_frame_bytes,
        log_config=log_config(settings.log),
        log_level=settings.log.level.lower(),
        access_log=False,  # ours (service.api.access) has the request id and no query string
    )
    return 0


def _compile(args: argparse.Namespace) -> int:
    """Make each model's stepper, as a server's start does: that compiles its passes (or
    loads them from numba's cache) for the model's record layout."""
    from service.directory import StreamDirectory
    from service.registry import ModelRegistry
    from service.settings import command_settings

    settings = command_settings(args.models_dir)
    StreamDirectory(ModelRegistry.load(settings.model), settings)
    return 0


def _say_who_may_connect(settings: Settings, host: str) -> None:
    log = logging.getLogger("streamwatch")
    keys = settings.security.api_keys
    if keys:
        log.info("%d API key(s); every route but /healthz and /readyz needs one", len(keys))
    elif host != settings.server.host:
        log.warning(
            "no API keys configured: the server is open, so it listens on %s only, not on %s; "
            "set STREAMWATCH_SECURITY__API_KEYS to listen there",
            host,
            settings.server.host,
        )
    else:
        log.warning("no API keys configured: the server is open, listening on %s only", host)


def _training(argv: list[str]) -> int:
    try:
        from training.cli import main as training_main
    except ImportError as exc:
        print(
            f"streamwatch {argv[0]} needs the training extra (pip install '.[train]'): {exc}",
            file=sys.stderr,
        )
        return 2
    status: int = training_main(argv)
    return status
