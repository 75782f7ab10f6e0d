"""The store in the app: what the lifespan restores, keeps and reports, on the embedded store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import StoreUnavailableError
from service.registry import ModelRegistry
from service.settings import Settings
from service.store import open_store
from tests.conftest import make_settings
from tests.store_support import spiky_series


def _body(series: dict[str, Any], start: int = 0, stop: int | None = None) -> dict[str, Any]:
    return {"readings": [
        {"stream_id": sid, "timestamp": 1_700_000_000 + 60 * i, "value": float(values[i])}
        for sid, values in series.items() for i in range(start, stop or len(values))
    ]}


def _all_events(client: TestClient) -> list[Any]:
    return list(client.app.state.alert_log.events_after(0))  # type: ignore[attr-defined]


def test_alert_history_stream_state_and_event_numbers_survive_a_restart(tmp_path: Path) -> None:
    settings, series = make_settings(tmp_path), spiky_series()
    series["pump-1"][215] += 100.0  # an alert after the restart, too
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/readings", json=_body(series, 0, 200)).status_code == 200
        history = client.get("/v1/alerts").json()
        streams = client.get("/v1/streams").json()
        events = _all_events(client)
    assert history["alerts"] and (tmp_path / "state.snapshot").exists()
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/alerts").json() == history
        assert client.get("/v1/streams").json() == streams
        assert client.get("/readyz").json()["store"]["restore"]["status"] == "restored"
        assert _all_events(client) == events
        client.post("/v1/readings", json=_body(series, 200))
        later = _all_events(client)[len(events):]
    assert later, "the test data gives no alert after the restart any more"
    assert later[0].seq == events[-1].seq + 1


def test_readiness_reports_the_checks_and_how_the_state_was_restored(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        ready = client.get("/readyz")
    body = ready.json()
    assert ready.status_code == 200 and body["ready"]
    assert body["checks"] == {"models_loaded": True, "state_restored": True,
                              "store_reachable": True, "engine_running": True}
    assert body["store"]["backend"] == "sqlite"
    assert body["store"]["restore"] == {"status": "none", "streams": 0, "set_aside_as": None,
                                        "detail": body["store"]["restore"]["detail"]}
    assert body["store"]["snapshots"]["file"] == "state.snapshot"


def test_a_corrupt_snapshot_is_reported_by_readiness_and_the_server_starts_clean(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        client.post("/v1/readings", json=_body(spiky_series(2), 0, 20))
    path = tmp_path / "state.snapshot"
    path.write_bytes(path.read_bytes()[:-1])
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert client.get("/v1/streams").json()["streams"] == []
    restore = ready.json()["store"]["restore"]
    assert ready.status_code == 200 and restore["status"] == "set_aside"
    assert "checksum" in restore["detail"] and (tmp_path / restore["set_aside_as"]).exists()


def test_the_memory_store_keeps_nothing_across_a_restart(tmp_path: Path) -> None:
    settings: Settings = make_settings(tmp_path, store={"backend": "memory"})
    for _ in range(2):
        with TestClient(create_app(settings)) as client:
            assert client.get("/v1/streams").json()["streams"] == []
            client.post("/v1/readings", json=_body(spiky_series(2)))
            assert client.get("/readyz").json()["store"]["restore"]["status"] == "none"
    assert list(tmp_path.iterdir()) == []


def test_when_alerts_cannot_be_written_readings_are_refused_and_readiness_drops(
    tmp_path: Path,
) -> None:
    series = spiky_series()
    with TestClient(create_app(make_settings(tmp_path))) as client:
        client.app.state.alert_log.close()  # type: ignore[attr-defined]  # the disk is gone
        results = client.post("/v1/readings", json=_body(series)).json()["results"]
        statuses = {r["status"] if r["status"] == "ok" else r["status"]["status"]
                    for r in results}
        ready = client.get("/readyz")
        assert client.get("/healthz").status_code == 200
    assert statuses == {"ok", 503}  # only the rounds with an alert event were refused
    assert ready.status_code == 503 and ready.json()["checks"]["store_reachable"] is False


def test_a_second_server_on_the_same_data_dir_is_refused_until_the_first_stops(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    registry = ModelRegistry.load(settings.model)
    with TestClient(create_app(settings)):
        with pytest.raises(StoreUnavailableError, match="in use by another server process"):
            open_store(settings, registry)
    open_store(settings, registry).close()
