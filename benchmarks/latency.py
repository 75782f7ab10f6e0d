"""Figure 5: latency at a fixed offered load (half of figure 2's saturation), REST single:
p50 / p99 / max, vs the trivial endpoint at the same load.

An open-loop load generator (wrk2 is not in Debian): requests are due at fixed intervals and
each latency is counted from when its request was *due*, not when it went out, so a stalled
server cannot hide its stall (no coordinated omission). Raw HTTP/1.1 keep-alive over asyncio
streams on 64 connections, pinned to the load core, over 1,000 streams each past its
warm-up first.

    python -m benchmarks.latency --rate 1500 [--models-dir DIR] [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks._common import (
    LOAD_CPU,
    Figure,
    default_models_dir,
    free_port,
    percentile,
    pin,
    print_figures,
    running,
    streamwatch_command,
    streamwatch_env,
    trivial_command,
    warm_streams,
)

CONNECTIONS = 64
STREAMS = 1000
T0 = 1767225600


def _request(n: int, host: str, prefix: str) -> bytes:
    body = b'{"timestamp":%d,"value":%.4f}' % (T0 + n // STREAMS, (n % 13) * 0.1)
    return (b"POST /v1/streams/%s-%d/readings HTTP/1.1\r\nHost: %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (prefix.encode(), n % STREAMS, host.encode(), len(body), body))


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def open_loop(host: str, port: int, rate: float, duration_s: float, prefix: str,
                    first: int = 0) -> dict[str, float]:
    """Offer `rate` requests/s for `duration_s`, readings `first` onwards; latencies (ms)
    from each request's due time."""
    connections = [await asyncio.open_connection(host, port) for _ in range(CONNECTIONS)]
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for c in connections:
        idle.put_nowait(c)
    latencies: list[float] = []
    failures = 0

    async def one(n: int, due: float) -> None:
        nonlocal failures
        reader, writer = await idle.get()
        writer.write(_request(first + n, host, prefix))
        status = await _read_response(reader)
        latencies.append((time.perf_counter() - due) * 1000)
        failures += status != 200
        idle.put_nowait((reader, writer))

    tasks = set()
    start = time.perf_counter()
    total = int(rate * duration_s)
    for n in range(total):
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(n, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    offered = total / (time.perf_counter() - start)
    for _, writer in connections:
        writer.close()
    latencies.sort()
    return {"rate": offered, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "max_ms": latencies[-1],
            "requests": len(latencies), "failures": failures}


def measure(command: list[str], port: int, env: dict[str, str] | None, rate: float,
            duration_s: float) -> dict[str, float]:
    with running(command, port, env) as server:
        host, port = server.host_port
        asyncio.run(open_loop(host, port, rate, min(2.0, duration_s), prefix="warm"))
        first = warm_streams(server.url, [f"lat-{i}" for i in range(STREAMS)], T0,
                             lambda n: (n % 13) * 0.1)
        cpu, wall = server.cpu_s(), time.perf_counter()
        result = asyncio.run(open_loop(host, port, rate, duration_s, prefix="lat", first=first))
        result["server_cpu"] = (server.cpu_s() - cpu) / (time.perf_counter() - wall)
        return result


def run(models_dir: Path, rate: float, duration_s: float = 10.0) -> list[Figure]:
    pin(LOAD_CPU)
    port = free_port()
    trivial = measure(trivial_command(port), port, None, rate, duration_s)
    port = free_port()
    env = streamwatch_env(models_dir, Path(tempfile.mkdtemp(prefix="swbench-")))
    ours = measure(streamwatch_command(port), port, env, rate, duration_s)
    return [Figure(
        key="latency_half_load",
        name=(f"REST single p99 at {rate:,.0f} req/s offered (p50 {ours['p50_ms']:.1f} / "
              f"max {ours['max_ms']:.1f} ms; trivial p50 {trivial['p50_ms']:.1f} / "
              f"max {trivial['max_ms']:.1f} ms)"),
        value=ours["p99_ms"], unit="ms",
        baseline_name="trivial endpoint p99, same load", baseline=trivial["p99_ms"],
        target=10.0, higher_is_better=False,
        details={"offered_rate": rate, "streamwatch": ours, "trivial": trivial},
    )]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--rate", type=float, required=True, help="requests/s to offer")
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    print_figures(run(args.models_dir, args.rate, args.duration))


if __name__ == "__main__":
    main()
