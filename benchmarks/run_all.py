"""Every figure of the suite in one run: prints the table, writes the JSON.

    python -m benchmarks.run_all [--models-dir models] [--out benchmarks/results.json]
                                 [--duration 10] [--quick]

About eight minutes on the 2-core box (`--quick`: about five, shorter and smaller). Needs `wrk`
(apt-get install -y wrk) and two cores: servers run pinned to core 0, load generators to core
1. Figures are compared to baselines measured in the same run, since the absolute numbers on a
shared machine move from run to run.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import onnxruntime

from benchmarks import (
    cell_graph,
    engine_vs_ort,
    latency,
    memory,
    ort_options,
    rest_batch,
    rest_single,
    startup,
    websocket,
)
from benchmarks._common import BENCH, Figure, default_models_dir, table, write_json


def run_all(models_dir: Path, duration_s: float, quick: bool) -> list[Figure]:
    figures: list[Figure] = []

    def step(name: str, produce: object) -> None:
        started = time.perf_counter()
        made = produce() if callable(produce) else []
        figures.extend(made)
        print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)

    step("engine vs raw ORT", lambda: engine_vs_ort.run(models_dir, min(duration_s, 8.0)))
    step("the same without the scorer (a bound)", lambda: engine_vs_ort.run(
        models_dir, min(duration_s, 4.0), scorer=False))
    step("ORT session options", lambda: ort_options.run(models_dir, 1.0 if quick else 2.0))
    step("exported cell vs fused op", lambda: cell_graph.run(0.5 if quick else 1.0))
    step("REST single", lambda: rest_single.run(models_dir, duration_s))
    saturation = next(f for f in figures if f.key == "rest_single").value
    step("latency at half load", lambda: latency.run(models_dir, saturation / 2, duration_s))
    step("REST batch", lambda: rest_batch.run(models_dir, duration_s))
    step("WebSocket", lambda: websocket.run(models_dir, duration_s))
    counts = (100_000,) if quick else (100_000, 1_000_000)
    step("memory", lambda: memory.run(models_dir, counts))
    step("start-up", lambda: startup.run(models_dir, 1 if quick else 3,
                                         100_000 if quick else 1_000_000))
    return figures


def machine() -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform(),
            "load_average_at_start": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--quick", action="store_true", help="shorter, smaller (a smoke run)")
    args = parser.parse_args()
    duration = min(args.duration, 3.0) if args.quick else args.duration
    about = machine()
    print(f"streamwatch benchmarks on {about['cpu']} x{about['cores']}, "
          f"onnxruntime {about['onnxruntime']}, models {args.models_dir}", flush=True)
    figures = run_all(args.models_dir, duration, args.quick)
    print()
    print(table(figures))
    write_json(args.out, {"machine": about, "models_dir": str(args.models_dir),
                          "duration_s": duration, "quick": args.quick,
                          "figures": [f.to_json() for f in figures]})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
