"""Shared by the store tests: streams with alerts in them, and results comparable across runs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from service.alerts import Alert
from service.results import Reading, Result
from service.schemas import result_json
from service.settings import Settings
from tests.conftest import make_settings, running_engine, sine

T0, DT = 1_700_000_000.0, 60.0  # the first reading's timestamp, and the spacing of readings


def spiky_series(n_streams: int = 6, n: int = 240) -> dict[str, np.ndarray]:
    """Noisy sines, every other one with a spike after warm-up, so alerts open and close."""
    series = {f"pump-{i}": sine(n, period=20 + 3 * i, seed=i, level=10.0 * i)
              for i in range(n_streams)}
    for i, values in enumerate(series.values()):
        if i % 2 == 0:
            values[130 + 7 * i] += 100.0
    return series


def index_of(timestamp: float) -> int:
    """Which reading of a stream a timestamp is."""
    return round((timestamp - T0) / DT)


def cut_inside_an_alert(events: list[tuple[str, Alert]]) -> tuple[int, Alert]:
    """A reading index right after the first alert opened, while it is still open, and that
    alert: cutting a run there puts an open alert into the state that must survive."""
    opened = next(alert for kind, alert in events if kind == "opened")
    closed = next((a for k, a in events if k == "closed" and a.id == opened.id), None)
    cut = index_of(opened.opened_at) + 1
    assert closed is None or closed.closed_at is None or index_of(closed.closed_at) >= cut, (
        "the alert closes at once; the test data no longer gives an alert that stays open")
    return cut, opened


def readings_of(stream_id: str, values: np.ndarray, start: int = 0) -> list[Reading]:
    """Readings `start`, `start + 1`, ... of a stream, DT seconds apart."""
    return [Reading(stream_id, T0 + DT * (start + i), (float(v),)) for i, v in enumerate(values)]


def wire(result: Result) -> dict[str, Any]:
    """A result as the server sends it, alert id left out (ids are random)."""
    body: dict[str, Any] = orjson.loads(orjson.dumps(result_json(result)))
    return without_alert_id(body)


def without_alert_id(body: dict[str, Any]) -> dict[str, Any]:
    alert = body.get("alert")
    return {**body, "alert": None if alert is None else alert["event"]}


def alert_key(alert: Alert) -> tuple[Any, ...]:
    """What identifies an alert across two runs (its id is random)."""
    return (alert.stream_id, alert.opened_at, alert.closed_at, alert.peak_score, alert.peak_at)


async def reference_run(
    settings: Settings, series: dict[str, np.ndarray]
) -> tuple[dict[str, list[dict[str, Any]]], list[tuple[str, Alert]]]:
    """Every stream fed whole through one uninterrupted engine: results and alert events."""
    events: list[tuple[str, Alert]] = []
    async with running_engine(settings, events) as engine:
        results = {
            sid: [wire(r) for r in await engine.submit(readings_of(sid, values))]
            for sid, values in series.items()
        }
    return results, events


REDIS_URL = os.environ.get("STREAMWATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_START = ("redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' "
               "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix on the real Redis, its keys deleted afterwards. No Redis: a failure
    that says so (never a silent skip: the Redis backend would go untested)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.fail(f"the Redis tests need a Redis at {REDIS_URL} ({exc}); .ci/run starts one "
                    f"with: {REDIS_START}", pytrace=False)
    prefix = f"swtest:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def redis_settings(tmp_path: Path, prefix: str, **overrides: object) -> Settings:
    store = {"backend": "redis", "redis_url": REDIS_URL, "redis_prefix": prefix}
    return make_settings(tmp_path, store=store, **overrides)
