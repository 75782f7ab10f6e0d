"""What security and observability cost: the engine's metrics hooks, and per request the API
key check, the rate limit, the access line and the request id.

Two figures, each against a same-run baseline without the feature, in one process pinned to
the server core; rates are per CPU-second (`time.process_time`), rounds interleaved so drift
hits both sides alike:

* the engine stepping 10,000 streams in rounds of 1,024 with `Metrics` as its observer, vs
  with none (the hook counts a round's outcomes in one pass and observes two histograms);
* `GET /v1/models` through the whole ASGI app (httpx's in-process transport) with an API key,
  a rate limit and JSON access lines (to /dev/null), vs open with no access line.

    python -m benchmarks.observability_cost [--models-dir DIR] [--duration 6]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks._common import PYTHON, ROOT, SERVER_CPU, Figure, default_models_dir, print_figures

STREAMS = 10_000
BATCH = 1024
KEY = "bench-key-0123456789abcdef"


def run(models_dir: Path, duration_s: float = 6.0) -> list[Figure]:
    command = ["taskset", "-c", str(SERVER_CPU), PYTHON, "-m", "benchmarks.observability_cost",
               "--child", "--models-dir", str(models_dir), "--duration", str(duration_s)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=20 * duration_s + 300)
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    engine, http = raw["engine"], raw["http"]
    return [
        Figure(
            key="engine_with_metrics",
            name=f"engine with metrics hooks, {STREAMS:,} streams, rounds of {BATCH} "
                 f"({engine['hook_us_per_round']:.0f} us of hooks a round)",
            value=engine["with"], unit="readings/s",
            baseline_name="same engine, no observer", baseline=engine["without"],
            target=0.97, target_on="ratio", details=engine,
        ),
        Figure(
            key="request_with_security",
            name=f"GET /v1/models in-process, key + rate limit + JSON access line "
                 f"(+{http['extra_us']:.0f} us a request)",
            value=http["with"], unit="req/s",
            baseline_name="open, no access line", baseline=http["without"],
            details=http,
        ),
    ]


# -- the child process, pinned --------------------------------------------------------------


def _child(models_dir: Path, duration_s: float) -> dict[str, object]:
    return {
        "engine": asyncio.run(_engine_rates(models_dir, duration_s)),
        "http": asyncio.run(_request_rates(models_dir, duration_s)),
    }


async def _engine_rates(models_dir: Path, duration_s: float) -> dict[str, float]:
    from service.engine import Engine
    from service.metrics import Metrics
    from service.registry import ModelRegistry
    from service.results import Reading
    from service.settings import Settings

    settings = Settings(model={"dir": models_dir}, engine={"max_batch": BATCH},  # type: ignore[arg-type]
                        state={"initial_capacity": STREAMS})
    registry = ModelRegistry.load(settings.model)
    engines = {"without": Engine(registry, settings, lambda _: None),
               "with": Engine(registry, settings, lambda _: None, observer=Metrics())}
    hook = Metrics()
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for engine in engines.values():
        await engine.start()
    t = 0.0
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        for name, engine in engines.items():
            started, n = time.process_time(), 0
            for first in range(0, STREAMS, BATCH):
                t += 1.0
                batch = [Reading(f"s{i}", t, (float(i % 7),))
                         for i in range(first, min(first + BATCH, STREAMS))]
                outcomes = await engine.submit(batch)
                n += len(outcomes)
            rates[name].append(n / (time.process_time() - started))
    for engine in engines.values():
        await engine.stop()
    # The hook alone, on a round's worth of outcomes, for the per-round figure.
    started = time.process_time()
    for _ in range(200):
        hook.stepped("default", outcomes, 0.001)
        hook.round_done(len(outcomes), [])
    hook_us = (time.process_time() - started) / 200 * 1e6
    return {"with": statistics.median(rates["with"]),
            "without": statistics.median(rates["without"]),
            "hook_us_per_round": hook_us, "repeats": len(rates["with"])}


async def _request_rates(models_dir: Path, duration_s: float) -> dict[str, float]:
    import httpx2 as httpx

    from service.app import create_app
    from service.logs import RequestFilter, formatter
    from service.settings import Settings

    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(formatter(json_lines=True))
    handler.addFilter(RequestFilter())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    data = Path(tempfile.mkdtemp(prefix="swbench-"))
    keys = [{"name": "bench", "roles": ["read"], "key": KEY}]
    apps = {
        "without": create_app(Settings(model={"dir": models_dir}, data_dir=data / "a",  # type: ignore[arg-type]
                                       store={"backend": "memory"}, log={"access": False})),
        "with": create_app(Settings(model={"dir": models_dir}, data_dir=data / "b",  # type: ignore[arg-type]
                                    store={"backend": "memory"},
                                    security={"api_keys": keys, "rate_per_s": 1e9})),
    }
    headers = {"with": {"Authorization": f"Bearer {KEY}"}, "without": {}}
    rates: dict[str, list[float]] = {name: [] for name in apps}
    contexts = [app.router.lifespan_context(app) for app in apps.values()]
    for context in contexts:
        await context.__aenter__()
    clients = {name: httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                       base_url="http://bench") for name, app in apps.items()}
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        for name, client in clients.items():
            started = time.process_time()
            for _ in range(300):
                response = await client.get("/v1/models", headers=headers[name])
                assert response.status_code == 200
            rates[name].append(300 / (time.process_time() - started))
    for client in clients.values():
        await client.aclose()
    for context in contexts:
        await context.__aexit__(None, None, None)
    logging.getLogger().removeHandler(handler)
    with_rate, without_rate = statistics.median(rates["with"]), statistics.median(rates["without"])
    return {"with": with_rate, "without": without_rate,
            "extra_us": (1 / with_rate - 1 / without_rate) * 1e6,
            "repeats": len(rates["with"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.models_dir, args.duration)))
        return
    print_figures(run(args.models_dir, args.duration))


if __name__ == "__main__":
    main()
