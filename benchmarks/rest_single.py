"""Figure 2: REST, one reading per request, 64 connections: requests/s and p50/p99 latency,
vs a trivial FastAPI endpoint served the same way (`benchmarks/trivial_app.py`).

wrk (pinned to the load core) drives both servers (pinned to the server core) with the same
Lua script: 1,000 streams taken in turn, timestamps increasing per stream, each past its
warm-up first.

    python -m benchmarks.rest_single [--models-dir DIR] [--duration 10]
"""

from __future__ import annotations

import math
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
    warm_streams,
    wrk_on_server,
)

CONNECTIONS = 64
STREAMS = 1000
SCRIPT = BENCH / "lua" / "single.lua"
T0 = 1767225600  # the script's first timestamp


def measure(command: list[str], port: int, env: dict[str, str] | None, duration_s: float,
            warmup_s: float = 2.0) -> tuple[WrkResult, int, float]:
    """See `wrk_on_server`; the streams measured are past their warm-up (`warm_streams`), and
    the stream counted is bench-0."""
    def prepare(url: str) -> dict[str, str]:
        ids = [f"bench-{i}" for i in range(STREAMS)]
        return {"SW_FIRST": str(warm_streams(url, ids, T0, lambda n: math.sin(n * 0.1)))}

    return wrk_on_server(
        command, port, env, SCRIPT, duration_s=duration_s, warmup_s=warmup_s,
        connections=CONNECTIONS, load_env={"SW_STREAMS": str(STREAMS)}, stream_id="bench-0",
        prepare=prepare,
    )


def run(models_dir: Path, duration_s: float = 10.0) -> list[Figure]:
    data_dir = Path(tempfile.mkdtemp(prefix="swbench-"))
    port = free_port()
    trivial, _, trivial_busy = measure(trivial_command(port), port, None, duration_s)
    port = free_port()
    env = streamwatch_env(models_dir, data_dir)
    ours, applied, busy = measure(streamwatch_command(port), port, env, duration_s)
    details = {
        "connections": CONNECTIONS,
        "streams": STREAMS,
        "stream_0_applied": applied,  # about requests / streams when every reading applied
        "streamwatch": {"rate": ours.rate, "latency_ms": ours.latency_ms, "server_cpu": busy,
                        "non_2xx": ours.non_2xx, "socket_errors": ours.socket_errors},
        "trivial": {"rate": trivial.rate, "latency_ms": trivial.latency_ms,
                    "server_cpu": trivial_busy,
                    "non_2xx": trivial.non_2xx, "socket_errors": trivial.socket_errors},
    }
    lat, base = ours.latency_ms, trivial.latency_ms
    return [Figure(
        key="rest_single",
        name=(f"REST single, {CONNECTIONS} conns (p50 {lat['p50']:.1f} / p99 {lat['p99']:.1f} ms;"
              f" trivial {base['p50']:.1f} / {base['p99']:.1f} ms)"),
        value=ours.rate, unit="req/s",
        baseline_name="trivial FastAPI POST", baseline=trivial.rate,
        target=0.85, target_on="ratio", details=details,
        per_cpu_s=ours.rate / busy, baseline_per_cpu_s=trivial.rate / trivial_busy,
    )]


def main() -> None:
    script_main(run, __doc__, duration_s=10.0)


if __name__ == "__main__":
    main()
