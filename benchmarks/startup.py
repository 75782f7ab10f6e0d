"""Figure 7: seconds from process start to the first 200 from `/readyz`, with the bundled
model, vs the trivial FastAPI app under the same uvicorn (interpreter, imports, bind); and
again with a snapshot of 1,000,000 streams to restore.

The server is pinned to the server core; the poller (every 5 ms) runs here. The median of a
few starts is reported. The snapshot is made the way production makes one: a server is fed
one reading for each of the streams over the batch route and stopped (it writes its snapshot
on the way out); a new server on the same data directory then restores it before it is ready.

    python -m benchmarks.startup [--models-dir DIR] [--repeat 3] [--snapshot-streams 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import urllib.request
from pathlib import Path

import orjson

from benchmarks._common import (
    Figure,
    default_models_dir,
    free_port,
    print_figures,
    running,
    stream_readings,
    streamwatch_command,
    streamwatch_env,
    trivial_command,
)


def _start_s(command: list[str], port: int, env: dict[str, str] | None) -> float:
    with running(command, port, env) as server:
        return server.ready_s


def _feed(url: str, streams: int, chunk: int = 10_000) -> None:
    for start in range(0, streams, chunk):
        body = orjson.dumps({"readings": [
            {"stream_id": f"snap-{i:07d}", "timestamp": 1767225600, "value": (i % 7) * 0.5}
            for i in range(start, min(start + chunk, streams))]})
        request = urllib.request.Request(f"{url}/v1/readings", data=body,
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()


def with_snapshot(models_dir: Path, streams: int, repeat: int) -> Figure:
    env = streamwatch_env(models_dir, Path(tempfile.mkdtemp(prefix="swbench-")))
    port = free_port()
    with running(streamwatch_command(port), port, env) as server:
        empty_s = server.ready_s
        _feed(server.url, streams)
    starts, restored = [], 0
    for _ in range(repeat):
        port = free_port()
        with running(streamwatch_command(port), port, env, timeout_s=600) as server:
            starts.append(server.ready_s)
            restored = stream_readings(server.url, f"snap-{streams - 1:07d}")
    return Figure(
        key="startup_snapshot",
        name=f"start-up to /readyz, restoring {streams:,} streams",
        value=statistics.median(starts), unit="s",
        baseline_name="same server, nothing to restore", baseline=empty_s,
        details={"streamwatch_s": starts, "last_stream_restored_readings": restored},
    )


def run(models_dir: Path, repeat: int = 3, snapshot_streams: int = 1_000_000) -> list[Figure]:
    ours, trivial = [], []
    for _ in range(repeat):
        port = free_port()
        trivial.append(_start_s(trivial_command(port), port, None))
        port = free_port()
        env = streamwatch_env(models_dir, Path(tempfile.mkdtemp(prefix="swbench-")))
        ours.append(_start_s(streamwatch_command(port), port, env))
    return [Figure(
        key="startup",
        name="start-up to /readyz, bundled model, no state to restore",
        value=statistics.median(ours), unit="s",
        baseline_name="trivial FastAPI app", baseline=statistics.median(trivial),
        target=2.0, higher_is_better=False,
        details={"streamwatch_s": ours, "trivial_s": trivial},
    ), *([with_snapshot(models_dir, snapshot_streams, repeat)] if snapshot_streams else [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--snapshot-streams", type=int, default=1_000_000, help="0: skip")
    args = parser.parse_args()
    print_figures(run(args.models_dir, args.repeat, args.snapshot_streams))


if __name__ == "__main__":
    main()
