"""Figure 6: resident bytes per stream at 100,000 and 1,000,000 streams.

A fresh process (pinned to the server core) builds the engine on the model, then binds N
streams by stepping one reading each through `Engine.submit`; bytes per stream is the growth
of its resident set over N. The baseline is the recurrent state alone (layers x hidden x 4
bytes per state tensor), the floor any design must pay.

    python -m benchmarks.memory [--models-dir DIR] [--streams 100000 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import tempfile
from pathlib import Path

from benchmarks._common import (
    PYTHON,
    ROOT,
    SERVER_CPU,
    Figure,
    default_models_dir,
    print_figures,
    rss_bytes,
)

CHUNK = 10_000


def run(models_dir: Path, counts: tuple[int, ...] = (100_000, 1_000_000)) -> list[Figure]:
    figures = []
    for n in counts:
        command = ["taskset", "-c", str(SERVER_CPU), PYTHON, "-m", "benchmarks.memory",
                   "--child", "--models-dir", str(models_dir), "--streams", str(n)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True,
                              timeout=1800)
        raw = json.loads(done.stdout.strip().splitlines()[-1])
        figures.append(Figure(
            key=f"memory_{n}",
            name=f"memory per stream at {n:,} streams (H={raw['hidden_size']})",
            value=raw["bytes_per_stream"], unit="B/stream",
            baseline_name="recurrent state alone", baseline=raw["state_bytes"],
            target=1024.0 if n >= 1_000_000 else None, higher_is_better=False, details=raw,
        ))
    return figures


async def _child(models_dir: Path, streams: int) -> dict[str, float]:
    from service.engine import Engine
    from service.registry import ModelRegistry
    from service.results import Reading
    from service.settings import Settings

    settings = Settings(model={"dir": models_dir},
                        data_dir=Path(tempfile.mkdtemp(prefix="swbench-")),
                        state={"max_streams": max(streams, 1_000_000)})
    gc.set_threshold(*settings.server.gc_thresholds)  # as `streamwatch serve` does
    registry = ModelRegistry.load(settings.model)
    engine = Engine(registry, settings, lambda events: None)
    card = registry.get(registry.default).card
    await engine.start()
    await engine.submit([Reading("warm-up", 0.0, (0.0,) * card.n_channels)])
    gc.collect()
    before = rss_bytes()
    for start in range(0, streams, CHUNK):
        await engine.submit([Reading(f"stream-{i:07d}", 1.0, (0.5,) * card.n_channels)
                             for i in range(start, min(start + CHUNK, streams))])
    gc.collect()
    after = rss_bytes()
    await engine.stop()
    arena = engine.steppers()[registry.default].arena
    return {
        "streams": streams,
        "hidden_size": card.hidden_size,
        "bytes_per_stream": (after - before) / streams,
        "state_bytes": card.num_layers * card.hidden_size * 4 * len(card.state_names),
        "arena_bytes_per_slot": sum(a[:1].nbytes for a in arena.arrays.values()),
        "arena_capacity": arena.capacity,
        "rss_after_mb": after / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--streams", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child(args.models_dir, args.streams[0]))))
        return
    print_figures(run(args.models_dir, tuple(args.streams)))


if __name__ == "__main__":
    main()
