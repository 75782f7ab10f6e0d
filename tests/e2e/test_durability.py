"""Durability with real server processes: SIGTERM and restart, SIGKILL mid-ingest, a corrupt
snapshot, and the Redis store (killed, and shared by two replicas at once).

Every comparison is against one uninterrupted in-process engine fed the same readings: equal
JSON results (the shortest round-trip repr of each float) mean bit-for-bit equal state.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest

from service.alerts import Alert, iso
from service.store.snapshot import read_snapshot
from tests.conftest import make_settings
from tests.e2e.conftest import Server, sse_events, start_server
from tests.store_support import (
    DT,
    REDIS_URL,
    T0,
    cut_inside_an_alert,
    redis_prefix,  # noqa: F401 - a fixture
    reference_run,
    spiky_series,
    without_alert_id,
)

pytestmark = pytest.mark.slow

Results = dict[str, list[dict[str, Any]]]


def _post(server: Server, stream_id: str, values: np.ndarray, start: int) -> list[dict[str, Any]]:
    body = {"readings": [{"stream_id": stream_id, "timestamp": T0 + DT * (start + i),
                          "value": float(v)} for i, v in enumerate(values)]}
    response = httpx.post(f"{server.url}/v1/readings", json=body, timeout=30)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def _ingest(server: Server, series: dict[str, np.ndarray], start: int, stop: int) -> Results:
    return {sid: [without_alert_id(r) for r in _post(server, sid, values[start:stop], start)]
            for sid, values in series.items()}


def _reference(tmp_path: Path, series: dict[str, np.ndarray]) -> tuple[Results, list[Any]]:
    return asyncio.run(reference_run(make_settings(tmp_path / "reference"), series))


def _all_alerts(server: Server) -> list[dict[str, Any]]:
    alerts, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{server.url}/v1/alerts", params=params, timeout=10).json()
        alerts += page["alerts"]
        cursor = page["next_cursor"]
        if cursor is None:
            return alerts


def _latest(events: list[tuple[str, Alert]]) -> list[dict[str, Any]]:
    """Each alert's last version, as the API shows it, without the (random) id."""
    latest = {alert.id: alert for _, alert in events}
    return sorted((_no_id(a.to_json()) for a in latest.values()), key=str)


def _no_id(alert: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in alert.items() if k != "id"}


def _stop_gracefully(server: Server) -> None:
    """SIGTERM; uvicorn drains, runs the lifespan's shutdown, then re-raises the signal."""
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "Application shutdown complete." in server.log.read_text()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers a test starts; any still running at the end are stopped."""
    started: list[Server] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)


def test_sigterm_and_restart_continue_every_stream_bit_for_bit_and_lose_no_alert(
    tmp_path: Path, servers: list[Server]
) -> None:
    series = spiky_series()
    expected, expected_events = _reference(tmp_path, series)
    cut, open_alert = cut_inside_an_alert(expected_events)
    data = tmp_path / "data"

    servers.append(first := start_server(data))
    before = _ingest(first, series, 0, cut)
    open_before = httpx.get(f"{first.url}/v1/streams/{open_alert.stream_id}").json()["open_alert"]
    _stop_gracefully(first)

    servers.append(second := start_server(data))
    ready = httpx.get(f"{second.url}/readyz").json()
    assert ready["store"]["restore"]["status"] == "restored"
    assert ready["store"]["restore"]["streams"] == len(series)
    stream = httpx.get(f"{second.url}/v1/streams/{open_alert.stream_id}").json()
    assert stream["open_alert"] == open_before and open_before is not None
    after = _ingest(second, series, cut, len(series["pump-0"]))
    alerts = _all_alerts(second)
    replayed = sse_events(second, len(expected_events), headers={"Last-Event-ID": "0"})

    assert {sid: before[sid] + after[sid] for sid in series} == expected
    assert sorted((_no_id(a) for a in alerts), key=str) == _latest(expected_events)
    assert [int(e["id"]) for e in replayed] == list(range(1, len(expected_events) + 1))
    assert sorted(e["event"] for e in replayed) == sorted(k for k, _ in expected_events)


def test_sigkill_mid_ingest_keeps_every_acknowledged_alert_and_restores_the_last_snapshot(
    tmp_path: Path, servers: list[Server]
) -> None:
    series = spiky_series()
    n = len(series["pump-0"])
    expected, _ = _reference(tmp_path, series)
    data = tmp_path / "data"
    servers.append(server := start_server(data, env={"STREAMWATCH_STORE__SNAPSHOT_INTERVAL_S":
                                                    "0.1"}))
    acknowledged: list[dict[str, Any]] = []
    stop = threading.Event()

    def ingest() -> None:
        try:
            for start in range(0, n, 8):
                for sid, values in series.items():
                    acknowledged.extend(_post(server, sid, values[start:start + 8], start))
                    if stop.is_set():
                        return
        except httpx.TransportError:
            return  # the server was killed under us

    feeder = threading.Thread(target=ingest)
    feeder.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 0.7 * n * len(series) and time.monotonic() < deadline:
        time.sleep(0.01)
    snapshots = httpx.get(f"{server.url}/readyz").json()["store"]["snapshots"]["count"]
    server.stop(signal.SIGKILL)
    stop.set()
    feeder.join(timeout=30)
    assert snapshots >= 1 and len(acknowledged) < n * len(series)  # killed mid-ingest
    acked_alerts = {(r["alert"]["id"], r["alert"]["event"]) for r in acknowledged if r["alert"]}
    assert acked_alerts, "no alert was acknowledged before the kill; the test proves little"
    (snapshot,) = read_snapshot(data / "state.snapshot").batches  # whole: it reads back

    servers.append(server := start_server(data))
    restore = httpx.get(f"{server.url}/readyz").json()["store"]["restore"]
    assert (restore["status"], restore["streams"]) == ("restored", len(snapshot.stream_ids))
    alerts = {a["id"]: a for a in _all_alerts(server)}
    for alert_id, event in acked_alerts:
        assert alert_id in alerts and (event == "opened" or not alerts[alert_id]["open"])
    held = set()
    for j, sid in enumerate(snapshot.stream_ids):
        stream = httpx.get(f"{server.url}/v1/streams/{sid}").json()
        seen = int(snapshot.records["seen"][j])
        assert stream["readings"] == seen
        assert stream["last_timestamp"] == iso(float(snapshot.records["last_ts"][j]))
        if stream["open_alert"] is not None:
            held.add(stream["open_alert"]["id"])
        # Resend from two before the restored position: the older one is refused (409), the
        # last applied one is a duplicate with its first result, the rest apply bit for bit.
        again = _post(server, sid, series[sid][seen - 2:], seen - 2)
        assert again[0]["status"]["status"] == 409
        assert without_alert_id({**again[1], "duplicate": False}) == expected[sid][seen - 1]
        assert again[1]["duplicate"] is True
        assert [without_alert_id(r) for r in again[2:]] == expected[sid][seen:]
    assert {a["id"] for a in alerts.values() if a["open"]} <= held  # none left dangling


def test_a_corrupt_snapshot_is_set_aside_reported_and_the_server_starts_clean(
    tmp_path: Path, servers: list[Server]
) -> None:
    data = tmp_path / "data"
    servers.append(server := start_server(data))
    _ingest(server, spiky_series(n_streams=2), 0, 50)
    _stop_gracefully(server)
    path = data / "state.snapshot"
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))

    servers.append(server := start_server(data))
    ready = httpx.get(f"{server.url}/readyz")
    restore = ready.json()["store"]["restore"]
    assert ready.status_code == 200 and restore["status"] == "set_aside"
    assert "checksum mismatch" in restore["detail"]
    assert (data / restore["set_aside_as"]).read_bytes() == bytes(damaged)
    assert httpx.get(f"{server.url}/v1/streams").json()["streams"] == []
    assert f"set aside as {restore['set_aside_as']}" in server.log.read_text()
    assert _ingest(server, spiky_series(n_streams=1), 0, 5)["pump-0"][0]["status"] == "ok"


def test_on_redis_a_killed_server_loses_no_acknowledged_reading(
    tmp_path: Path, servers: list[Server], redis_prefix: str  # noqa: F811
) -> None:
    series = spiky_series(n_streams=3)
    n = len(series["pump-0"])
    expected, _ = _reference(tmp_path, series)
    env = {"STREAMWATCH_STORE__BACKEND": "redis", "STREAMWATCH_STORE__REDIS_URL": REDIS_URL,
           "STREAMWATCH_STORE__REDIS_PREFIX": redis_prefix}
    servers.append(server := start_server(tmp_path / "data", env=env))
    acknowledged = {sid: 0 for sid in series}
    half = n // 2
    for sid, values in series.items():
        acknowledged[sid] += len(_post(server, sid, values[:half], 0))
    server.stop(signal.SIGKILL)

    servers.append(server := start_server(tmp_path / "data", env=env))
    assert httpx.get(f"{server.url}/readyz").json()["store"]["restore"]["streams"] == len(series)
    for sid, values in series.items():
        assert httpx.get(f"{server.url}/v1/streams/{sid}").json()["readings"] == acknowledged[sid]
        rest = _post(server, sid, values[half:], half)
        assert [without_alert_id(r) for r in rest] == expected[sid][half:]


def test_two_servers_sharing_redis_serve_the_same_streams_in_turn_bit_for_bit(
    tmp_path: Path, servers: list[Server], redis_prefix: str  # noqa: F811
) -> None:
    series = spiky_series(n_streams=4)
    expected, expected_events = _reference(tmp_path, series)
    env = {"STREAMWATCH_STORE__BACKEND": "redis", "STREAMWATCH_STORE__REDIS_URL": REDIS_URL,
           "STREAMWATCH_STORE__REDIS_PREFIX": redis_prefix}
    servers.append(one := start_server(tmp_path / "one", env=env))
    servers.append(other := start_server(tmp_path / "other", env=env))
    got: Results = {sid: [] for sid in series}
    for turn, start in enumerate(range(0, len(series["pump-0"]), 40)):
        part = _ingest((one, other)[turn % 2], series, start, start + 40)
        for sid in series:
            got[sid] += part[sid]
    assert got == expected
    assert sorted((_no_id(a) for a in _all_alerts(one)), key=str) == _latest(expected_events)
    assert _all_alerts(one) == _all_alerts(other)
