"""Figure 1: the engine alone (no HTTP) stepping 100,000 streams, vs raw ONNX Runtime.

The engine's readings/s (queue, rounds, gather, normalize, one model call, score, scatter,
results) against the same model's ORT session stepping random batches of the same size with
nothing around it. The readings go in twice: one by one (`Reading`s, as a batch with a
malformed reading, or several of one stream, goes) and as columns (as a well-formed batch
across streams goes, sent as rows or as columns). All run in one process pinned to the
server core, one after the other.
Rates are per CPU-second of that process (`time.process_time`), so a neighbour taking the
core does not move them; the wall-clock rates are in the details. A neighbour can still slow
the core itself (its caches, its clock): raw ORT is measured in slices between the engine's
passes, each half as long as the pass before it, so that each figure and its baseline see
the same machine.

With `--without-scorer` the engine's anomaly likelihood is replaced by a score of 0 (so no
reading alerts either): not a product, a bound on what the engine could reach if scoring
cost nothing.

    python -m benchmarks.engine_vs_ort [--models-dir DIR] [--duration 8] [--without-scorer]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks._common import (
    PYTHON,
    ROOT,
    SERVER_CPU,
    Figure,
    default_models_dir,
    print_figures,
    steady_after,
)

STREAMS = 100_000
SUBMITTERS = 8  # callers with a chunk of max_batch readings each in flight, like connections


def run(models_dir: Path, duration_s: float = 8.0, streams: int = STREAMS,
        intra_op_threads: int = 1, spin: bool = False, scorer: bool = True) -> list[Figure]:
    command = ["taskset", "-c", str(SERVER_CPU), PYTHON, "-m", "benchmarks.engine_vs_ort",
               "--child", "--models-dir", str(models_dir), "--duration", str(duration_s),
               "--streams", str(streams), "--intra-op-threads", str(intra_op_threads)]
    command += ["--spin"] * spin + ["--without-scorer"] * (not scorer)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=10 * duration_s + 300)
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    suffix = "" if (intra_op_threads, spin) == (1, False) else \
        f", intra_op={intra_op_threads}, spin={spin}"
    key = "engine_vs_ort" + suffix.replace(", ", "_").replace("=", "")
    name = f"engine alone, {streams:,} streams, batch {raw['batch']}{suffix}"
    if not scorer:
        key, name = key + "_without_scorer", name + ", without the scorer (a bound)"
    return [Figure(
        key=key + ("_columns" if columns else ""),
        name=name + (", as columns" if columns else ""),
        value=raw["columns_rate" if columns else "engine_rate"], unit="readings/s",
        baseline_name="raw ORT, same batch, between its passes",
        baseline=raw["columns_ort_rate" if columns else "engine_ort_rate"],
        target=0.60 if not suffix and scorer else None, target_on="ratio", details=raw,
    ) for columns in (False, True)]


def _child(models_dir: Path, duration_s: float, streams: int, intra_op_threads: int,
           spin: bool, scorer: bool = True) -> dict[str, float]:
    from service import likelihood
    from service.settings import Settings

    if not scorer:  # the bound: every reading scores 0, at no cost
        likelihood.step_in_place = lambda s, *args, **kwargs: np.zeros(len(s))

    settings = Settings(
        model={"dir": models_dir, "intra_op_threads": intra_op_threads, "spin": spin},
        data_dir=Path(tempfile.mkdtemp(prefix="swbench-")),
        state={"initial_capacity": streams, "max_streams": max(streams, 1)},
        engine={"max_queued": 2 * streams},
    )
    batch = settings.engine.max_batch
    gc.set_threshold(*settings.server.gc_thresholds)  # as `streamwatch serve` does
    raw_ort = _RawOrt(settings, batch)
    return {**asyncio.run(_engine_rates(settings, streams, duration_s, raw_ort)),
            "batch": batch}


class _RawOrt:
    """The served model's ORT session stepping a random batch, its state fed back, with
    nothing around it: run in slices, its steps and CPU seconds summed."""

    def __init__(self, settings: object, batch: int):
        from service.registry import ModelRegistry
        from service.settings import Settings

        assert isinstance(settings, Settings)
        registry = ModelRegistry.load(settings.model)
        self.model = registry.get(registry.default)
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(batch, self.model.card.n_channels)).astype(np.float32)
        self.state = self.model.initial_state(batch)
        self.steps, self.cpu, self.wall = 0, 0.0, 0.0
        self.run_for(0.05)
        self.rates("warm-up")  # not counted

    def run_for(self, cpu_s: float) -> None:
        calls, cpu, wall = 0, time.process_time(), time.perf_counter()
        while (elapsed := time.process_time() - cpu) < cpu_s:
            for _ in range(5):
                _, _, self.state = self.model.step(self.x, self.state)
            calls += 5
        self.steps += calls * len(self.x)
        self.cpu += elapsed
        self.wall += time.perf_counter() - wall

    def rates(self, key: str) -> dict[str, float]:
        """The rates since the last call, as `{key}_ort_rate` and `{key}_ort_wall_rate`."""
        rates = {f"{key}_ort_rate": self.steps / self.cpu,
                 f"{key}_ort_wall_rate": self.steps / self.wall}
        self.steps, self.cpu, self.wall = 0, 0.0, 0.0
        return rates


async def _engine_rates(settings: object, streams: int, duration_s: float, raw_ort: _RawOrt
                        ) -> dict[str, float]:
    """The engine's rates as columns and one by one, on streams past their warm-up
    (`steady_after`), each with raw ORT's rate in slices between its passes."""
    from service.engine import Engine
    from service.registry import ModelRegistry
    from service.results import Reading, ReadingArrays
    from service.settings import Settings

    assert isinstance(settings, Settings)
    registry = ModelRegistry.load(settings.model)
    engine = Engine(registry, settings, lambda events: None)
    n_channels = registry.get(registry.default).card.n_channels
    ids = [f"bench-{i}" for i in range(streams)]
    rng = np.random.default_rng(0)
    chunk = settings.engine.max_batch
    passes = 0

    async def submitter(chunks: Iterator[list[Reading] | ReadingArrays]) -> None:
        for readings in chunks:  # shared: each chunk goes to one submitter, in order
            if isinstance(readings, ReadingArrays):
                await engine.enqueue_columns(readings)
            else:
                await engine.submit(readings)

    async def one_pass(columns: bool) -> tuple[float, float]:
        """Every stream's next reading, a minute after its last: the CPU and wall seconds."""
        nonlocal passes
        passes += 1
        at, values = 60.0 * passes, rng.normal(size=(streams, n_channels))
        batches: list[list[Reading] | ReadingArrays]
        if columns:
            ts = np.full(streams, at)
            batches = [ReadingArrays(ids[i : i + chunk], ts[i : i + chunk], values[i : i + chunk])
                       for i in range(0, streams, chunk)]
        else:
            readings = [Reading(sid, at, tuple(v))
                        for sid, v in zip(ids, values.tolist(), strict=True)]
            batches = [readings[i : i + chunk] for i in range(0, streams, chunk)]
            del readings
        chunks = iter(batches)
        del batches, values
        gc.collect()
        gc.freeze()  # the pass's readings are the benchmark's objects, not the engine's
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(submitter(chunks) for _ in range(SUBMITTERS)))
        spent = time.process_time() - cpu, time.perf_counter() - wall
        gc.unfreeze()
        return spent

    async def rate(columns: bool) -> dict[str, float]:
        cpu = wall = 0.0
        rounds0, passes0 = engine.rounds, passes
        while cpu < duration_s:
            spent = await one_pass(columns)
            cpu, wall = cpu + spent[0], wall + spent[1]
            raw_ort.run_for(spent[0] / 2)
        stepped = streams * (passes - passes0)
        key = "columns" if columns else "engine"
        return {f"{key}_rate": stepped / cpu, f"{key}_wall_rate": stepped / wall,
                f"{key}_mean_round": stepped / max(1, engine.rounds - rounds0),
                **raw_ort.rates(key)}

    def open_alerts() -> int:
        return sum(stepper.open_alerts for stepper in engine.steppers().values())

    await engine.start()
    try:
        await one_pass(columns=False)  # binds every stream: not what is measured
        while passes < steady_after(settings):  # as columns: the quicker way there
            await one_pass(columns=True)
        warm = {"warm_passes": passes, "open_alerts_after_warm_up": open_alerts()}
        return {**warm, **await rate(columns=True), **await rate(columns=False),
                "open_alerts_at_end": open_alerts()}
    finally:
        await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--streams", type=int, default=STREAMS)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--spin", action="store_true")
    parser.add_argument("--without-scorer", action="store_true",
                        help="a bound: the anomaly likelihood replaced by a score of 0")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = _child(args.models_dir, args.duration, args.streams, args.intra_op_threads,
                        args.spin, scorer=not args.without_scorer)
        print(json.dumps(result))
        return
    print_figures(run(args.models_dir, args.duration, args.streams, args.intra_op_threads,
                      args.spin, scorer=not args.without_scorer))


if __name__ == "__main__":
    main()
