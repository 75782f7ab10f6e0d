"""Figure 3: REST batch route, 1,000 readings per request across 1,000 streams (as a list of
readings, and as columns): readings/s, vs the trivial FastAPI app taking the same bodies
(parse the JSON, answer).

wrk runs one connection per thread (each thread its own 1,000 streams, so requests in flight
never touch the same stream); every request is the next time step of all of its streams.

    python -m benchmarks.rest_batch [--models-dir DIR] [--duration 10]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks._common import (
    BENCH,
    Figure,
    WrkResult,
    free_port,
    script_main,
    streamwatch_command,
    streamwatch_env,
    trivial_command,
    wrk_on_server,
)

BATCH = 1000
CONNECTIONS = 2
SCRIPT = BENCH / "lua" / "batch.lua"


def measure(command: list[str], port: int, env: dict[str, str] | None, duration_s: float,
            columns: bool = False, warmup_s: float = 2.0) -> tuple[WrkResult, int, float]:
    """See `wrk_on_server`; the stream counted is b0-0."""
    load_env = {"SW_BATCH": str(BATCH), "SW_FORMAT": "columns" if columns else "rows"}
    return wrk_on_server(
        command, port, env, SCRIPT, duration_s=duration_s, warmup_s=warmup_s,
        connections=CONNECTIONS, threads=CONNECTIONS, load_env=load_env, stream_id="b0-0",
    )


def run(models_dir: Path, duration_s: float = 10.0) -> list[Figure]:
    figures = []
    for columns in (False, True):
        port = free_port()
        trivial, _, trivial_busy = measure(trivial_command(port), port, None, duration_s, columns)
        port = free_port()
        env = streamwatch_env(models_dir, Path(tempfile.mkdtemp(prefix="swbench-")))
        ours, applied, busy = measure(streamwatch_command(port), port, env, duration_s, columns)
        figures.append(Figure(
            key="rest_batch" + ("_columns" if columns else ""),
            name=f"REST batch, {BATCH:,} readings/request over {BATCH:,} streams"
                 + (", as columns" if columns else ""),
            value=ours.rate * BATCH, unit="readings/s",
            baseline_name="trivial FastAPI, same bodies", baseline=trivial.rate * BATCH,
            target=250_000,
            per_cpu_s=ours.rate * BATCH / busy,
            baseline_per_cpu_s=trivial.rate * BATCH / trivial_busy,
            details={
                "connections": CONNECTIONS,
                "stream_b0_0_applied": applied,  # about requests / connections if all applied
                "streamwatch": {"requests_per_s": ours.rate, "latency_ms": ours.latency_ms,
                                "server_cpu": busy,
                                "non_2xx": ours.non_2xx, "socket_errors": ours.socket_errors},
                "trivial": {"requests_per_s": trivial.rate, "latency_ms": trivial.latency_ms,
                            "server_cpu": trivial_busy},
            },
        ))
    return figures


def main() -> None:
    script_main(run, __doc__, duration_s=10.0)


if __name__ == "__main__":
    main()
