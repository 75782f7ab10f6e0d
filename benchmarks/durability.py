"""Durability figures: what snapshots, the Redis store and the alert log cost.

1. Snapshot pause: how long taking a snapshot holds the event loop (the in-loop copy of every
   stream's records) at N streams, against the whole snapshot (copy + encode + write + fsync,
   the rest in a thread). Details: file size, read-back and restore times.
2. Redis store: engine readings/s with every round's streams read from and written to Redis
   (one MGET, one MSET per round), against the same engine keeping state in the process.
   Wall-clock rates (Redis is another process); the local Redis on 127.0.0.1:6379.
3. Alert log: one round's alert write (one SQLite transaction) with synchronous=FULL (the
   default: survives power loss) against NORMAL (WAL: survives a crashed process).

    python -m benchmarks.durability [--models-dir DIR] [--streams 100000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import SERVER_CPU, Figure, default_models_dir, pin, print_figures
from service.alerts import Alert
from service.directory import arena_layout
from service.engine import Engine, SharedState
from service.registry import ModelRegistry
from service.results import Reading
from service.settings import Settings
from service.store.snapshot import Snapshot, read_snapshot, restore_snapshot, write_snapshot
from service.store.sqlite import SqliteAlertLog

REDIS_URL = "redis://127.0.0.1:6379/0"
BATCH = 1024


def run(models_dir: Path, streams: int = 100_000, redis_streams: int = 20_000,
        duration_s: float = 4.0) -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        figures = [asyncio.run(_snapshot_figure(models_dir, Path(tmp), streams))]
        figures.append(asyncio.run(_redis_figure(models_dir, Path(tmp), redis_streams,
                                                 duration_s)))
        figures.append(_alert_log_figure(Path(tmp)))
    return figures


def _settings(models_dir: Path, data_dir: Path, streams: int) -> Settings:
    return Settings(model={"dir": models_dir}, data_dir=data_dir,  # type: ignore[arg-type]
                    store={"backend": "memory"},
                    state={"max_streams": streams, "initial_capacity": streams},
                    engine={"max_batch": BATCH, "max_wait_ms": 0.5})


async def _feed(engine: Engine, stream_ids: list[str], t: float) -> None:
    """One reading for every stream, a round's worth per call."""
    for start in range(0, len(stream_ids), BATCH):
        chunk = stream_ids[start:start + BATCH]
        await engine.submit([Reading(sid, t, (float(np.sin(t + i)),))
                             for i, sid in enumerate(chunk)])


async def _snapshot_figure(models_dir: Path, tmp: Path, streams: int) -> Figure:
    settings = _settings(models_dir, tmp, streams)
    registry = ModelRegistry.load(settings.model)
    shas = {name: m.card.sha256 for name, m in registry.models.items()}
    engine = Engine(registry, settings, lambda _: None)
    await engine.start()
    ids = [f"stream-{i}" for i in range(streams)]
    for t in range(3):
        await _feed(engine, ids, float(t))
    pauses = []
    for _ in range(5):
        started = time.perf_counter()
        copies = engine.snapshot()
        pauses.append(time.perf_counter() - started)
    await engine.stop()
    path = tmp / "state.snapshot"
    started = time.perf_counter()
    size = write_snapshot(path, Snapshot.pack(time.time(), copies, shas))
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    read_snapshot(path)
    read_s = time.perf_counter() - started
    fresh = Engine(registry, settings, lambda _: None)
    started = time.perf_counter()
    report = restore_snapshot(path, fresh, registry)
    restore_s = time.perf_counter() - started
    assert report.streams == streams
    pause = statistics.median(pauses)
    return Figure(
        key="snapshot_pause", name=f"snapshot pause of the event loop, {streams:,} streams",
        value=pause * 1000, unit="ms", baseline_name="whole snapshot (copy, pack, write, fsync)",
        baseline=(pause + write_s) * 1000, higher_is_better=False,
        details={"size_bytes": size, "bytes_per_stream": size / streams,
                 "pack_write_fsync_s": write_s, "read_s": read_s, "restore_s": restore_s,
                 "pauses_ms": [p * 1000 for p in pauses]},
    )


async def _rate(engine: Engine, ids: list[str], duration_s: float) -> float:
    await _feed(engine, ids, 0.0)  # bind every stream first
    t, readings, started = 1.0, 0, time.perf_counter()
    while time.perf_counter() - started < duration_s:
        await _feed(engine, ids, t)
        readings += len(ids)
        t += 1.0
    return readings / (time.perf_counter() - started)


async def _redis_figure(models_dir: Path, tmp: Path, streams: int, duration_s: float) -> Figure:
    import redis

    from service.store.redis import RecordFormat, RedisState

    settings = _settings(models_dir, tmp, streams)
    registry = ModelRegistry.load(settings.model)
    ids = [f"stream-{i}" for i in range(streams)]
    rates: dict[str, float] = {}
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"swbench:{uuid.uuid4().hex[:8]}:"
    formats = [RecordFormat(n, m.card.sha256, arena_layout(m.card, settings).record_dtype())
               for n, m in registry.models.items()]
    try:
        for backend in ("process", "redis"):
            shared: SharedState | None = None
            if backend == "redis":
                shared = RedisState(client, prefix, formats)
            engine = Engine(registry, settings, lambda _: None, shared=shared)
            await engine.start()
            rates[backend] = await _rate(engine, ids, duration_s)
            await engine.stop()
        stored = client.memory_usage(f"{prefix}s:{ids[0]}")  # type: ignore[no-untyped-call]
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=10_000))
        for start in range(0, len(keys), 10_000):
            client.delete(*keys[start:start + 10_000])
        client.close()
    return Figure(
        key="redis_store", name=f"engine on the Redis store, {streams:,} streams, batch {BATCH}",
        value=rates["redis"], unit="readings/s", baseline_name="state in the process",
        baseline=rates["process"], details={"redis_bytes_per_stream": stored, **rates},
    )


def _alert_log_figure(tmp: Path, rounds: int = 200) -> Figure:
    alert = Alert(id="a", stream_id="pump-1", model="default", opened_at=1.0, closed_at=None,
                  peak_score=0.9999, peak_at=1.0, readings=1, forecast_at_peak=[1.0],
                  actual_at_peak=[9.0])
    median_ms: dict[str, Any] = {}
    for synchronous in ("FULL", "NORMAL"):
        log = SqliteAlertLog(tmp / f"alerts-{synchronous}.sqlite3", 100_000, synchronous)
        times = []
        for i in range(rounds):
            started = time.perf_counter()
            log.extend([("opened", alert), ("closed", alert)])
            times.append(time.perf_counter() - started)
            if i == 0:
                times.clear()
        log.close()
        median_ms[synchronous] = statistics.median(times) * 1000
    return Figure(
        key="alert_log_write", name="one round's alert events into SQLite (synchronous=FULL)",
        value=median_ms["FULL"], unit="ms", baseline_name="synchronous=NORMAL",
        baseline=median_ms["NORMAL"], higher_is_better=False, details=median_ms,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 streams, short runs")
    args = parser.parse_args()
    pin(SERVER_CPU)
    if args.quick:
        figures = run(args.models_dir, 10_000, 5_000, 1.0)
    else:
        figures = run(args.models_dir, args.streams)
    print_figures(figures)
    for figure in figures:
        print(figure.key, figure.details)


if __name__ == "__main__":
    main()
