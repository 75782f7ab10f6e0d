"""Where a reading's CPU goes in a round: each part of `Stepper.apply_columns` timed alone.

The stepper (no queue, no HTTP) steps rounds of 1,024 readings as columns over 100,000 bound
streams, every stream once a pass, past their warm-up (`steady_after`); each compiled pass,
the likelihood, the surprise and the model call are timed around their calls, and the rest of
the round (its arrays, numpy steps, alert tracking, the result block, and the clock reads of
the timing, about 10 ns a reading) is what is left of the rounds' CPU time. What
`engine_vs_ort` measures adds the queue, the futures and the slot lookups. Not a figure
with a target: the table says what to work on.

    python -m benchmarks.engine_parts [--models-dir DIR] [--passes 40]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import SERVER_CPU, default_models_dir, pin, steady_after
from service import likelihood, passes, scoring
from service.directory import StreamDirectory
from service.registry import ModelRegistry
from service.settings import Settings

STREAMS, ROUND = 100_000, 1024


def run(models_dir: Path, sweeps: int) -> dict[str, float]:
    """CPU ns a reading of each part, and of the whole round (`total`), over `sweeps` passes
    over every stream."""
    settings = Settings(model={"dir": models_dir}, data_dir=Path(tempfile.mkdtemp()),
                        state={"initial_capacity": STREAMS, "max_streams": STREAMS})
    gc.set_threshold(*settings.server.gc_thresholds)  # as `streamwatch serve` does
    registry = ModelRegistry.load(settings.model)
    stepper = StreamDirectory(registry, settings).steppers[registry.default]
    ids = [f"s{i}" for i in range(STREAMS)]
    for sid in ids:
        stepper.bind(sid)
    spent: defaultdict[str, float] = defaultdict(float)  # part -> CPU seconds

    def timed(owner: Any, name: str, label: str) -> None:
        call: Callable[..., Any] = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return call(*args, **kwargs)
            finally:
                spent[label] += time.process_time() - started

        setattr(owner, name, wrapper)

    for name in ("check", "gather", "forecasts", "put", "results"):
        timed(passes, name, f"pass {name}")
    timed(likelihood, "step_in_place", "likelihood")
    timed(scoring, "surprise", "surprise")
    timed(stepper.model, "step", "model call")
    rounds = [ids[i : i + ROUND] for i in range(0, STREAMS, ROUND)]
    slots = [stepper.arena.slots_of(round_ids) for round_ids in rounds]
    rng = np.random.default_rng(0)
    channels = stepper.model.card.n_channels

    def one_pass(t: int) -> float:
        """Step every stream once; the CPU seconds of the rounds alone, not of their inputs."""
        spent_in_rounds = 0.0
        for round_ids, round_slots in zip(rounds, slots, strict=True):
            n = len(round_ids)
            ts, x = np.full(n, 60.0 * t), rng.normal(size=(n, channels))
            started = time.process_time()
            stepper.apply_columns(round_ids, ts, x, round_slots)
            spent_in_rounds += time.process_time() - started
        return spent_in_rounds

    warm_passes = steady_after(settings)
    for t in range(warm_passes):
        one_pass(t)
    spent.clear()
    total = sum(one_pass(t) for t in range(warm_passes, warm_passes + sweeps))
    readings = sweeps * STREAMS
    parts = {label: seconds / readings * 1e9
             for label, seconds in sorted(spent.items(), key=lambda kv: -kv[1])}
    return {**parts, "rest of the round": total / readings * 1e9 - sum(parts.values()),
            "total": total / readings * 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--passes", type=int, default=40, help="passes over every stream")
    args = parser.parse_args()
    pin(SERVER_CPU)
    parts = run(args.models_dir, args.passes)
    total = parts["total"]
    print(f"| part of a round of {ROUND:,} over {STREAMS:,} streams | CPU ns a reading | share |")
    print("|---|---|---|")
    for label, ns in parts.items():
        print(f"| {label} | {ns:,.0f} | {ns / total:.0%} |")


if __name__ == "__main__":
    main()
