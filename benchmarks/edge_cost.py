"""What the HTTP edge costs per request, without sockets: the whole ASGI app called in-process,
CPU time per request (`time.process_time`), vs the trivial FastAPI app called the same way.

Sockets, httptools and the kernel cost the same for both servers and dominate the wrk figures;
here only the framework, our middleware and dependencies, parse, engine and render are left.
The batch figure also times each step of ours alone on the same readings: parse, the engine
on its own (rounds of one request's readings, so not exactly the rounds inside the app), and
render with JSON encoding; the columns figure sends the batch's readings as columns.

    python -m benchmarks.edge_cost [--models-dir DIR] [--duration 4]
"""

from __future__ import annotations

import asyncio
import gc
import logging.config
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from benchmarks._common import SERVER_CPU, Figure, pin, script_main
from benchmarks.trivial_app import create_app as trivial_app
from service import dataplane
from service.app import create_app
from service.engine import Engine
from service.logs import log_config
from service.parsing import parse_items
from service.registry import ModelRegistry
from service.settings import Settings

CONCURRENT = 64  # requests in flight, as wrk's connections in rest_single
BATCH = 1000  # readings per batch request, as in rest_batch
T0 = 1767225600
App = Callable[..., Awaitable[None]]


def _single(n: int, prefix: str) -> tuple[str, bytes]:
    body = b'{"timestamp":%d,"value":%.4f}' % (T0 + n // 1000, (n % 13) * 0.1)
    return f"/v1/streams/{prefix}-{n % 1000}/readings", body


def _readings(n: int, prefix: str) -> list[dict[str, Any]]:
    return [{"stream_id": f"{prefix}-{i}", "timestamp": T0 + n, "value": (i % 17) * 0.1}
            for i in range(BATCH)]


def _batch(n: int, prefix: str) -> tuple[str, bytes]:
    return "/v1/readings", orjson.dumps({"readings": _readings(n, prefix)})


def _columns(n: int, prefix: str) -> tuple[str, bytes]:
    """`_batch`'s readings, sent as columns."""
    readings = _readings(n, prefix)
    columns = {key: [r[key] for r in readings] for key in readings[0]}
    return "/v1/readings", orjson.dumps({"columns": columns})


async def _call(app: App, path: str, body: bytes) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 2),
             "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    status, sent = 0, False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # a client that never disconnects
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _cpu_per_request(app: App, requests: list[tuple[str, bytes]], in_flight: int,
                           duration_s: float) -> float:
    """CPU seconds per request, sending `in_flight` at a time until `duration_s` has passed."""
    done, n, cpu, deadline = 0, 0, time.process_time(), time.perf_counter() + duration_s
    while time.perf_counter() < deadline and n < len(requests):
        wave = requests[n:n + in_flight]
        statuses = await asyncio.gather(*(_call(app, *r) for r in wave))
        if any(s != 200 for s in statuses):
            raise RuntimeError(f"statuses {set(statuses)}: the load must be applied readings")
        n, done = n + len(wave), done + len(wave)
    return (time.process_time() - cpu) / done


async def _app_costs(settings: Settings, duration_s: float) -> dict[str, float]:
    """CPU-us per request of both apps, single and batch."""
    costs: dict[str, float] = {}
    for name, app in (("trivial", trivial_app()), ("streamwatch", create_app(settings))):
        async with app.router.lifespan_context(app):
            for kind, make, in_flight, count in (("single", _single, CONCURRENT, 40_000),
                                                 ("batch", _batch, 2, 600),
                                                 ("columns", _columns, 2, 600)):
                warm = [make(n, f"warm-{kind}") for n in range(2 * in_flight)]
                await _cpu_per_request(app, warm, in_flight, 60.0)
                requests = [make(n, kind) for n in range(count)]  # built before timing
                costs[f"{name}_{kind}"] = 1e6 * await _cpu_per_request(
                    app, requests, in_flight, duration_s)
    return costs


async def _step_costs(settings: Settings) -> dict[str, float]:
    """CPU-us per reading of parse, the engine alone and render + JSON, on batch bodies."""
    engine = Engine(ModelRegistry.load(settings.model), settings, lambda _: None)
    await engine.start()
    try:
        parse = engine_s = render = 0.0
        rounds = 40
        for n in range(rounds):
            items = _readings(n, "step")
            t = time.process_time()
            parsed = parse_items(items, settings.limits)
            parse += time.process_time() - t
            t = time.process_time()
            outcomes = await dataplane.submit(engine, parsed)
            engine_s += time.process_time() - t
            t = time.process_time()
            dataplane.answer(parsed, outcomes, columns=False)  # the JSON body
            render += time.process_time() - t
    finally:
        await engine.stop()
    per = 1e6 / (rounds * BATCH)
    return {"parse": parse * per, "engine": engine_s * per, "render": render * per}


def run(models_dir: Path, duration_s: float = 4.0) -> list[Figure]:
    pin(SERVER_CPU)
    data_dir = Path(tempfile.mkdtemp(prefix="swbench-"))
    settings = Settings(model={"dir": models_dir}, data_dir=data_dir, store={"backend": "memory"})
    logging.config.dictConfig(log_config(settings.log))  # access lines as the server writes
    gc.set_threshold(*settings.server.gc_thresholds)  # as `streamwatch serve` does
    stderr, sys.stderr = sys.stderr, open("/dev/null", "w")
    try:
        import uvloop

        costs = uvloop.run(_app_costs(settings, duration_s))
        steps = uvloop.run(_step_costs(settings))
    finally:
        sys.stderr.close()
        sys.stderr = stderr
    batch_us = costs["streamwatch_batch"] / BATCH
    return [
        Figure(
            key="edge_single",
            name=f"in-process POST one reading, {CONCURRENT} in flight "
                 f"({costs['streamwatch_single']:.0f} vs {costs['trivial_single']:.0f} CPU-us)",
            value=1e6 / costs["streamwatch_single"], unit="req/CPU-s",
            baseline_name="trivial app, same calls", baseline=1e6 / costs["trivial_single"],
            details=costs,
        ),
        Figure(
            key="edge_batch",
            name=f"in-process POST {BATCH:,} readings ({batch_us:.2f} CPU-us/reading; alone: "
                 + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()) + ")",
            value=1e6 / batch_us, unit="readings/CPU-s",
            baseline_name="trivial app, same bodies",
            baseline=1e6 * BATCH / costs["trivial_batch"],
            details={**costs, "us_per_reading": steps},
        ),
        Figure(
            key="edge_columns",
            name=f"in-process POST {BATCH:,} readings as columns "
                 f"({costs['streamwatch_columns'] / BATCH:.2f} CPU-us/reading)",
            value=1e6 * BATCH / costs["streamwatch_columns"], unit="readings/CPU-s",
            baseline_name="the same readings as a list", baseline=1e6 / batch_us,
            details=costs,
        ),
    ]


def main() -> None:
    script_main(run, __doc__, duration_s=4.0)


if __name__ == "__main__":
    main()
