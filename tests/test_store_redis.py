"""The Redis store on the real Redis: one round trip each way per round, replicas that share
streams, state of another model never loaded, an unreachable Redis refused cleanly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.alerts import Alert
from service.app import create_app
from service.directory import arena_layout
from service.engine import Engine
from service.errors import StoreUnavailableError
from service.registry import ModelRegistry
from service.results import Reading, Result
from service.settings import Settings
from service.store import open_store
from service.store.redis import RecordFormat, RedisState
from tests.conftest import stream_state
from tests.store_support import (
    REDIS_URL,
    alert_key,
    cut_inside_an_alert,
    readings_of,
    redis_prefix,  # noqa: F401 - a fixture
    redis_settings,
    reference_run,
    spiky_series,
    wire,
)

pytestmark = pytest.mark.anyio


class _CountingConnection(redis.Connection):
    """A real connection that counts what it sends: one send is one round trip."""

    sends: list[int] = [0]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        _CountingConnection.sends[0] += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def counted_client() -> Iterator[redis.Redis]:
    pool = redis.ConnectionPool.from_url(REDIS_URL, connection_class=_CountingConnection)
    client = redis.Redis(connection_pool=pool)
    yield client
    client.close()


def _formats(registry: ModelRegistry, settings: Settings) -> list[RecordFormat]:
    return [RecordFormat(name, m.card.sha256, arena_layout(m.card, settings).record_dtype())
            for name, m in registry.models.items()]


@asynccontextmanager
async def _replica(
    settings: Settings, client: redis.Redis, prefix: str,
    events: list[tuple[str, Alert]] | None = None,
) -> AsyncIterator[Engine]:
    """An engine keeping its streams in Redis under `prefix`, as one replica would."""
    registry = ModelRegistry.load(settings.model)
    shared = RedisState(client, prefix, _formats(registry, settings))
    sink = events.extend if events is not None else (lambda _: None)
    engine = Engine(registry, settings, sink, shared=shared)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def test_a_round_reads_its_streams_in_one_round_trip_and_writes_them_in_one(
    tmp_path: Path, redis_prefix: str, counted_client: redis.Redis  # noqa: F811
) -> None:
    settings = redis_settings(tmp_path, redis_prefix)
    async with _replica(settings, counted_client, redis_prefix) as engine:
        counted_client.ping()  # connect first: the handshake is not a round's traffic
        _CountingConnection.sends[0] = 0
        rounds = engine.rounds
        batch = [Reading(f"pump-{i}", 0.0, (float(i),)) for i in range(200)]
        results = await engine.submit(batch)
        assert engine.rounds == rounds + 1
        assert _CountingConnection.sends[0] == 2  # MGET before the step, MSET after
        assert all(isinstance(r, Result) for r in results)
        _CountingConnection.sends[0] = 0
        await engine.submit([Reading(f"pump-{i}", 1.0, (1.0,)) for i in range(200)])
        assert _CountingConnection.sends[0] == 2
    stored = counted_client.mget([f"{redis_prefix}s:pump-{i}" for i in range(200)])
    assert all(value is not None for value in stored)


async def test_an_engine_on_redis_gives_bitwise_the_results_of_an_embedded_one(
    tmp_path: Path, redis_prefix: str, counted_client: redis.Redis  # noqa: F811
) -> None:
    series = spiky_series()
    settings = redis_settings(tmp_path, redis_prefix)
    expected, expected_events = await reference_run(settings, series)
    events: list[tuple[str, Alert]] = []
    async with _replica(settings, counted_client, redis_prefix, events) as engine:
        got = {sid: [wire(r) for r in await engine.submit(readings_of(sid, values))]
               for sid, values in series.items()}
    assert got == expected
    assert [(k, alert_key(a)) for k, a in events] == [(k, alert_key(a)) for k, a in expected_events]


async def test_two_replicas_taking_turns_on_the_same_streams_match_one_engine_bit_for_bit(
    tmp_path: Path, redis_prefix: str, counted_client: redis.Redis  # noqa: F811
) -> None:
    series = spiky_series(n_streams=4)
    settings = redis_settings(tmp_path, redis_prefix)
    expected, expected_events = await reference_run(settings, series)
    events: list[tuple[str, Alert]] = []
    got: dict[str, list[dict[str, Any]]] = {sid: [] for sid in series}
    async with _replica(settings, counted_client, redis_prefix, events) as one, \
            _replica(settings, counted_client, redis_prefix, events) as other:
        for turn, start in enumerate(range(0, 240, 30)):
            engine = (one, other)[turn % 2]
            for sid, values in series.items():
                part = readings_of(sid, values[start:start + 30], start)
                got[sid] += [wire(r) for r in await engine.submit(part)]
    assert got == expected
    assert sorted((k, alert_key(a)) for k, a in events) == sorted(
        (k, alert_key(a)) for k, a in expected_events)
    closes = [a for k, a in events if k == "closed"]
    opens = {a.stream_id: a.id for k, a in events if k == "opened"}
    assert closes and all(a.id == opens[a.stream_id] for a in closes)  # one alert, two replicas


async def test_a_restarted_server_loads_every_stream_from_redis_before_it_serves(
    tmp_path: Path, redis_prefix: str, counted_client: redis.Redis  # noqa: F811
) -> None:
    series = spiky_series()
    settings = redis_settings(tmp_path, redis_prefix)
    cut, _ = cut_inside_an_alert((await reference_run(settings, series))[1])
    async with _replica(settings, counted_client, redis_prefix) as engine:
        for sid, values in series.items():
            await engine.submit(readings_of(sid, values[:cut]))
        states = {sid: stream_state(engine, sid) for sid in series}
        held = engine.open_alert_ids()
    registry = ModelRegistry.load(settings.model)
    store = open_store(settings, registry)
    engine = Engine(registry, settings, lambda _: None, shared=store.shared)
    report = store.restore(engine)
    store.close()
    assert (report.status, report.streams) == ("shared", len(series))
    assert engine.stream_ids(None, 100)[0] == sorted(series)
    assert engine.open_alert_ids() == held and len(held) == 1
    for sid in series:
        got = stream_state(engine, sid)
        assert all(got[name].tobytes() == states[sid][name].tobytes() for name in got)


async def test_state_of_another_model_or_garbage_is_never_loaded_and_the_stream_starts_clean(
    tmp_path: Path, redis_prefix: str, counted_client: redis.Redis  # noqa: F811
) -> None:
    settings = redis_settings(tmp_path, redis_prefix)
    async with _replica(settings, counted_client, redis_prefix) as engine:
        await engine.submit(readings_of("pump-1", np.ones(30)))
        stored = counted_client.get(f"{redis_prefix}s:pump-1")
        assert isinstance(stored, bytes)
        counted_client.set(f"{redis_prefix}s:pump-1", b"\x00" * 8 + stored[8:])  # other model
        counted_client.set(f"{redis_prefix}s:pump-2", b"garbage")
        first, second = await engine.submit([Reading("pump-1", 0.0, (1.0,)),
                                             Reading("pump-2", 0.0, (1.0,))])
        assert isinstance(first, Result) and isinstance(second, Result)
        assert engine.stream_info("pump-1").readings == 1  # clean, not 31
        assert engine.stream_info("pump-2").readings == 1


async def test_forgetting_a_stream_on_one_replica_forgets_it_on_the_other(
    tmp_path: Path, redis_prefix: str, counted_client: redis.Redis  # noqa: F811
) -> None:
    settings = redis_settings(tmp_path, redis_prefix)
    async with _replica(settings, counted_client, redis_prefix) as one, \
            _replica(settings, counted_client, redis_prefix) as other:
        await one.submit(readings_of("pump-1", np.ones(5)))
        assert other.stream_info("pump-1").readings == 5  # read through from Redis
        other.forget("pump-1")
        (result,) = await one.submit(readings_of("pump-1", np.ones(1), start=5))
        assert isinstance(result, Result) and one.stream_info("pump-1").readings == 1


async def test_an_unreachable_redis_refuses_the_round_with_503_and_the_engine_keeps_going(
    tmp_path: Path, redis_prefix: str  # noqa: F811
) -> None:
    settings = redis_settings(tmp_path, redis_prefix)
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    async with _replica(settings, dead, redis_prefix) as engine:
        for _ in range(2):
            (outcome,) = await engine.submit([Reading("pump-1", 0.0, (1.0,))])
            assert isinstance(outcome, StoreUnavailableError) and outcome.status == 503
        assert engine.running and engine.stream_ids(None, 10) == ([], None)
    dead.close()


def test_the_server_on_redis_keeps_alerts_in_a_stream_and_says_so_when_ready(
    tmp_path: Path, redis_prefix: str  # noqa: F811
) -> None:
    settings = redis_settings(tmp_path, redis_prefix)
    series = spiky_series()
    body = {"readings": [{"stream_id": sid, "timestamp": 1_700_000_000 + 60 * i, "value": float(v)}
                         for sid, values in series.items() for i, v in enumerate(values)]}
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["checks"]["store_reachable"]
        assert ready["store"]["backend"] == "redis"
        assert client.post("/v1/readings", json=body).status_code == 200
        history = client.get("/v1/alerts").json()["alerts"]
    assert history, "the test data gives no alert any more"
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/alerts").json()["alerts"] == history
        assert client.get("/v1/streams/pump-0").json()["readings"] == len(series["pump-0"])
    entries = redis.Redis.from_url(REDIS_URL).xrange(f"{redis_prefix}alerts:events")
    kinds = [b"opened" if a["open"] else b"closed" for a in history]
    assert [entry_id for entry_id, _ in entries] == [
        f"{n}-0".encode() for n in range(1, len(entries) + 1)]
    assert sorted(f[b"kind"] for _, f in entries if f[b"kind"] == b"closed") == sorted(
        k for k in kinds if k == b"closed")
