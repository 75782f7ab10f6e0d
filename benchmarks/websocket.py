"""Figure 4: WebSocket ingest, one reading per frame and 500 readings per frame (as a list of
readings, and as columns): readings/s, vs the trivial app's WebSocket echo driven by the same
client with the same frames.

The client is this process (pinned to the load core; the server is pinned to the other): a
`websockets` asyncio client on several connections, each keeping a window of frames in flight
(the server pipelines them and answers in order), each with its own streams, each past its
warm-up first (`warm_streams`).

    python -m benchmarks.websocket [--models-dir DIR] [--duration 8]
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

from benchmarks._common import (
    LOAD_CPU,
    Figure,
    free_port,
    pin,
    running,
    script_main,
    stream_readings,
    streamwatch_command,
    streamwatch_env,
    trivial_command,
    warm_streams,
)

CONNECTIONS = 4
# Frames in flight per connection (the server reads ahead up to 256), and at most this many
# readings: all connections together stay well under the server's queue (200,000 readings;
# past it, a frame is refused with 503), yet keep full rounds waiting. That is 8 frames of
# 500, and under one reading in flight per stream, as a fleet's gateway sends them; with
# 1,000 streams a connection, 4 readings a stream waited, and the engine's queueing of a
# stream's later readings took about 14% of the server's CPU (py-spy), not 8%.
WINDOW_FRAMES, WINDOW_READINGS = 256, 4096
# A stream's next reading is this many of its connection's readings later: more than are ever
# in flight (WINDOW_READINGS), so that a stream never has two.
STREAMS_PER_CONNECTION = 4096
T0 = 1767225600


def _value(k: int) -> float:
    """The value of a connection's reading k."""
    return (k % 17) * 0.1


def _frames(connection: int, per_frame: int, prefix: str, columns: bool, skip: int = 0
            ) -> Callable[[int], str]:
    """Frame n of one connection: its readings `skip + n * per_frame` onwards, `per_frame` of
    them, its streams taken in turn (never one twice in a frame); with `columns`, the same
    readings as columns."""
    ids = [f"{prefix}{connection}-{i}" for i in range(STREAMS_PER_CONNECTION)]

    def frame(n: int) -> str:
        first = skip + n * per_frame
        readings = [{"stream_id": ids[k % STREAMS_PER_CONNECTION],
                     "timestamp": T0 + k // STREAMS_PER_CONNECTION, "value": _value(k)}
                    for k in range(first, first + per_frame)]
        body: dict[str, object]
        if columns:
            body = {"seq": n, "columns": {key: [r[key] for r in readings] for key in readings[0]}}
        else:
            body = readings[0] if per_frame == 1 else {"seq": n, "readings": readings}
        return orjson.dumps(body).decode()  # a text frame, as JSON clients send

    return frame


async def _drive(url: str, per_frame: int, duration_s: float, prefix: str,
                 columns: bool = False, skip: int = 0) -> dict[str, float]:
    """Send frames for `duration_s` on every connection, from each one's reading `skip`;
    count the replies that came back, those that refused their frame apart (an error reply,
    e.g. 503 when the queue is full)."""
    replies, refused = [0] * CONNECTIONS, [0] * CONNECTIONS
    window = min(WINDOW_FRAMES, max(1, WINDOW_READINGS // per_frame))
    deadline = time.perf_counter() + duration_s

    async def one(connection: int) -> None:
        frame = _frames(connection, per_frame, prefix, columns, skip)
        batch = [frame(n) for n in range(max(1, 20_000 // per_frame))]  # built before timing
        async with connect(url, max_size=None, compression=None) as ws:
            # The sender fills the window, then waits until a reply frees room in it (a busy
            # loop of sleep(0) took most of this client's core).
            room, in_flight, n = asyncio.Event(), 0, 0

            async def reader() -> None:
                nonlocal in_flight
                async for reply in ws:
                    if '"error"' in reply[:48]:  # {"seq":n,"error":{...}}: nothing applied
                        refused[connection] += 1
                    else:
                        replies[connection] += 1
                    in_flight -= 1
                    room.set()
                    if in_flight == 0 and time.perf_counter() >= deadline:
                        return

            task = asyncio.create_task(reader())
            while time.perf_counter() < deadline:
                while in_flight < window:
                    if n == len(batch):  # past the frames built before: one more, as it goes
                        batch.append(frame(n))  # (building them in bursts stalled the server)
                    await ws.send(batch[n])
                    in_flight += 1
                    n += 1
                room.clear()
                await room.wait()
            if in_flight == 0:  # the reader drained the window before the deadline: it waits
                task.cancel()  # for a reply that will not come, so it would never return
            with contextlib.suppress(asyncio.CancelledError):
                await task

    started = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(CONNECTIONS)))
    elapsed = time.perf_counter() - started
    frames = sum(replies)
    return {"frames_per_s": frames / elapsed, "readings_per_s": frames * per_frame / elapsed,
            "refused_frames": sum(refused), "window": window}


def measure(command: list[str], port: int, env: dict[str, str] | None, per_frame: int,
            duration_s: float, columns: bool = False) -> tuple[dict[str, float], int]:
    with running(command, port, env) as server:
        url = server.url.replace("http://", "ws://") + "/v1/ingest"
        asyncio.run(_drive(url, per_frame, min(2.0, duration_s), "warm", columns))
        for connection in range(CONNECTIONS):  # each connection numbers its own readings
            ids = [f"ws{connection}-{i}" for i in range(STREAMS_PER_CONNECTION)]
            skip = warm_streams(server.url, ids, T0, _value)
        cpu, wall = server.cpu_s(), time.perf_counter()
        result = asyncio.run(_drive(url, per_frame, duration_s, "ws", columns, skip))
        result["server_cpu"] = (server.cpu_s() - cpu) / (time.perf_counter() - wall)
        return result, stream_readings(server.url, "ws0-0")


def run(models_dir: Path, duration_s: float = 8.0) -> list[Figure]:
    pin(LOAD_CPU)
    figures = []
    for per_frame, columns, target in ((1, False, 25_000.0), (500, False, 250_000.0),
                                       (500, True, 250_000.0)):
        port = free_port()
        echo, _ = measure(trivial_command(port), port, None, per_frame, duration_s, columns)
        port = free_port()
        env = streamwatch_env(models_dir, Path(tempfile.mkdtemp(prefix="swbench-")))
        ours, applied = measure(streamwatch_command(port), port, env, per_frame, duration_s,
                                columns)
        figures.append(Figure(
            key=f"websocket_{per_frame}" + ("_columns" if columns else ""),
            name=f"WebSocket, {per_frame} reading{'s' if per_frame > 1 else ''}/frame"
                 + (" as columns" if columns else ""),
            value=ours["readings_per_s"], unit="readings/s",
            baseline_name="trivial WebSocket echo, same frames",
            baseline=echo["readings_per_s"], target=target,
            per_cpu_s=ours["readings_per_s"] / ours["server_cpu"],
            baseline_per_cpu_s=echo["readings_per_s"] / echo["server_cpu"],
            details={"connections": CONNECTIONS, "window_frames": WINDOW_FRAMES,
                     "window_readings": WINDOW_READINGS, "streamwatch": ours, "echo": echo,
                     "stream_ws0_0_applied": applied},
        ))
    return figures


def main() -> None:
    script_main(run, __doc__, duration_s=8.0)


if __name__ == "__main__":
    main()
