"""The HTTP and WebSocket surface through the ASGI app: shapes, statuses, problem+json."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.app import create_app
from tests.conftest import make_settings, sine

PROBLEM = "application/problem+json"


def _post_series(client: TestClient, stream_id: str, values, start: int = 0) -> list[dict]:
    body = {"readings": [{"timestamp": start + i, "value": float(v)}
                         for i, v in enumerate(values)]}
    response = client.post(f"/v1/streams/{stream_id}/readings", json=body)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_one_reading_gets_one_result_with_every_field(client: TestClient) -> None:
    response = client.post("/v1/streams/pump-1/readings",
                           json={"timestamp": "2026-01-01T00:00:00Z", "value": 3.5})
    assert response.status_code == 200
    (result,) = response.json()["results"]
    assert result == {
        "stream_id": "pump-1", "timestamp": "2026-01-01T00:00:00Z", "status": "ok",
        "model": "default", "forecast": None, "score": 0.0, "threshold": result["threshold"],
        "anomaly": False, "warming_up": True, "gap": False, "duplicate": False, "alert": None,
    }
    assert 0.0 < result["threshold"] < 1.0


def test_a_stream_with_history_gets_a_forecast_per_channel(client: TestClient) -> None:
    results = _post_series(client, "pump-1", sine(120))
    last = results[-1]
    assert len(last["forecast"]["loc"]) == 1 and last["forecast"]["scale"][0] > 0
    assert last["warming_up"] is False and 0.0 <= last["score"] <= 1.0


def test_epoch_and_iso_timestamps_mean_the_same_instant(client: TestClient) -> None:
    client.post("/v1/streams/s/readings", json={"timestamp": 1767225600, "value": 1.0})
    response = client.post("/v1/streams/s/readings",
                           json={"timestamp": "2026-01-01T00:00:00+00:00", "value": 1.0})
    assert response.json()["results"][0]["duplicate"] is True


def test_an_older_single_reading_is_409_problem_json(client: TestClient) -> None:
    client.post("/v1/streams/s/readings", json={"timestamp": 100, "value": 1.0})
    response = client.post("/v1/streams/s/readings", json={"timestamp": 99, "value": 1.0})
    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == 409 and body["type"].endswith("/out-of-order")
    assert body["instance"] == "/v1/streams/s/readings"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"timestamp": 1, "value": NaN}', 422, "NaN"),
        (b'{"timestamp": 1, "values": [1.0, Infinity]}', 422, "channel 1"),
        (b'{"timestamp": 1, "values": [1.0, 2.0]}', 422, "takes 1 channel"),
        (b'{"timestamp": 1}', 422, "exactly one of"),
        (b'{"timestamp": "yesterday", "value": 1}', 422, "ISO 8601"),
        (b'{"timestamp": 1, "value": 1, "model": "nope"}', 404, "no model"),
        (b"not json", 422, "not JSON"),
    ],
)
def test_bad_single_readings_are_refused_with_a_clear_problem(
    client: TestClient, body: bytes, status: int, fragment: str
) -> None:
    response = client.post("/v1/streams/s/readings", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    assert fragment in response.json()["detail"]
    assert client.get("/v1/streams/s").status_code == 404  # nothing was applied


def test_a_batch_gives_each_reading_its_own_status_in_order(client: TestClient) -> None:
    body = (b'{"readings": ['
            b'{"stream_id": "a", "timestamp": 1, "value": 1.0},'
            b'{"stream_id": "a", "timestamp": 2, "value": NaN},'
            b'{"stream_id": "b c", "timestamp": 1, "value": 1.0},'
            b'{"timestamp": 1, "value": 1.0},'
            b'{"stream_id": "b", "timestamp": 5, "values": [null]},'
            b'{"stream_id": "a", "timestamp": 0, "value": 1.0},'
            b'{"stream_id": "a", "timestamp": 3, "value": 2.0}]}')
    response = client.post("/v1/readings", content=body)
    assert response.status_code == 200
    results = response.json()["results"]
    statuses = [r["status"] if r["status"] == "ok" else r["status"]["status"] for r in results]
    assert statuses == ["ok", 422, 422, 422, "ok", 409, "ok"]
    assert [r["stream_id"] for r in results] == ["a", "a", "b c", None, "b", "a", "a"]
    assert client.get("/v1/streams/a").json()["readings"] == 2


@pytest.mark.parametrize("refused", [None, 17])
def test_a_batch_sent_as_columns_is_answered_as_the_same_readings_sent_as_rows(
    client: TestClient, refused: int | None
) -> None:
    values = sine(300, level=20.0, amplitude=3.0, seed=5)
    values[250] += 40.0  # an alert opens and closes: its events are in both answers
    rows = [{"stream_id": sid, "timestamp": t, "value": float(v)}
            for t, v in enumerate(values) for sid in ("a", "b")]
    if refused is not None:  # one reading refused: its own status, the others go on
        rows[refused]["value"] = None
    as_rows = client.post("/v1/readings", json={"readings": rows})
    columns = {key: [row[key] for row in rows] for key in ("stream_id", "timestamp", "value")}
    columns["stream_id"] = [f"col-{sid}" for sid in columns["stream_id"]]  # the same streams
    as_columns = client.post("/v1/readings", json={"columns": columns})
    assert as_rows.status_code == as_columns.status_code == 200
    results = as_rows.json()["results"]
    got = as_columns.json()["columns"]
    assert got["stream_id"] == [f"col-{r['stream_id']}" for r in results]
    for key in ("timestamp", "status", "model", "forecast", "score", "threshold", "anomaly",
                "warming_up", "gap", "duplicate"):
        assert got[key] == [r.get(key) for r in results], key
    events = [a and a["event"] for a in got["alert"]]
    assert events == [r.get("alert") and r["alert"]["event"] for r in results]
    assert events.count("opened") == events.count("closed") == 2  # one alert per stream
    if refused is not None:
        assert got["status"][refused]["status"] == 422 and got["score"][refused] is None


def test_time_steps_sent_as_columns_are_answered_as_the_same_sent_as_rows(
    client: TestClient,
) -> None:
    """A gateway's usual traffic: each request one time step of its streams. Once its streams
    are bound, a batch of columns goes through the engine as columns and is answered from
    them; the answers are those of the same readings sent as rows."""
    n = 300
    series = {f"s{k}": sine(n, level=20.0 + k, amplitude=3.0, seed=5 + k) for k in range(10)}
    series["s0"][250] += 40.0  # an alert opens and closes
    got: dict[str, list] = {key: [] for key in ("rows", "columns")}
    for t in range(n):
        rows = [{"stream_id": f"row-{sid}", "timestamp": t, "value": float(v[t])}
                for sid, v in series.items()]
        got["rows"] += client.post("/v1/readings", json={"readings": rows}).json()["results"]
        columns = {"stream_id": [f"col-{sid}" for sid in series], "timestamp": [t] * 10,
                   "value": [float(v[t]) for v in series.values()]}
        answer = client.post("/v1/readings", json={"columns": columns}).json()["columns"]
        rows_of_answer = zip(*answer.values(), strict=True)
        got["columns"] += [dict(zip(answer, row, strict=True)) for row in rows_of_answer]
    events = [r["alert"]["event"] for r in got["columns"] if r["alert"]]
    assert events == ["opened", "closed"]
    for row, col in zip(got["rows"], got["columns"], strict=True):
        assert col.pop("stream_id") == "col-" + row.pop("stream_id").removeprefix("row-")
        alert, col_alert = row.pop("alert", None), col.pop("alert")
        assert (alert and alert["event"]) == (col_alert and col_alert["event"])
        assert col == row


def test_one_streams_readings_can_be_sent_as_columns(client: TestClient) -> None:
    columns = {"timestamp": list(range(1, 31)), "values": [[float(t % 4)] for t in range(30)]}
    response = client.post("/v1/streams/pump-3/readings", json={"columns": columns})
    assert response.status_code == 200
    got = response.json()["columns"]
    assert got["stream_id"] == ["pump-3"] * 30 and set(got["status"]) == {"ok"}
    assert got["warming_up"][0] is True and got["forecast"][-1]["loc"] is not None
    assert client.get("/v1/streams/pump-3").json()["readings"] == 30
    uneven = client.post("/v1/streams/pump-3/readings",
                         json={"columns": {"timestamp": [31, 32], "value": [1.0]}})
    assert uneven.status_code == 422 and uneven.headers["content-type"] == PROBLEM
    assert client.get("/v1/streams/pump-3").json()["readings"] == 30


def test_limits_answer_413(tmp_path) -> None:
    settings = make_settings(tmp_path, limits={"max_body_bytes": 2048,
                                               "max_readings_per_request": 3})
    with TestClient(create_app(settings)) as client:
        big = client.post("/v1/readings", content=b" " * 4096)
        many = client.post("/v1/readings", json={"readings": [
            {"stream_id": "a", "timestamp": i, "value": 1.0} for i in range(4)]})
    assert big.status_code == 413 and big.headers["content-type"] == PROBLEM
    assert many.status_code == 413 and "at most 3" in many.json()["detail"]


def test_streams_can_be_listed_by_page_inspected_and_forgotten(client: TestClient) -> None:
    for sid in ("c", "a", "b"):
        client.post(f"/v1/streams/{sid}/readings", json={"timestamp": 1, "value": 1.0})
    first = client.get("/v1/streams", params={"limit": 2}).json()
    assert [s["stream_id"] for s in first["streams"]] == ["a", "b"]
    second = client.get("/v1/streams", params={"limit": 2, "cursor": first["next_cursor"]})
    assert [s["stream_id"] for s in second.json()["streams"]] == ["c"]
    assert second.json()["next_cursor"] is None
    info = client.get("/v1/streams/a").json()
    assert info["readings"] == 1 and info["model"] == "default" and info["open_alert"] is None
    assert client.delete("/v1/streams/a").status_code == 204
    assert client.get("/v1/streams/a").status_code == 404
    assert client.delete("/v1/streams/a").headers["content-type"] == PROBLEM


def test_models_health_and_readiness(client: TestClient) -> None:
    models = client.get("/v1/models").json()
    assert models["default"] == "default"
    assert [m["name"] for m in models["models"]] == ["default"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_unknown_routes_answer_problem_json(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404 and response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize("path", ["/v1/streams/s/readings", "/v1/readings"])
def test_a_reading_route_answers_other_methods_405_problem_json(
    client: TestClient, path: str
) -> None:
    response = client.put(path, json={"timestamp": 1, "value": 1.0})
    assert response.status_code == 405 and response.headers["content-type"] == PROBLEM
    assert "POST" in response.headers["allow"]


def test_a_fault_in_a_reading_route_is_a_500_problem_and_loses_nothing(
    settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service import dataplane

    async def broken(*args: object) -> object:
        raise RuntimeError("injected fault")

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.post("/v1/streams/s/readings",
                           json={"timestamp": 1, "value": 1.0}).status_code == 200
        monkeypatch.setattr(dataplane, "resolve", broken)
        response = client.post("/v1/streams/s/readings", json={"timestamp": 2, "value": 1.0})
        assert response.status_code == 500 and response.headers["content-type"] == PROBLEM
        assert response.json()["title"] == "Internal error"
        monkeypatch.undo()
        assert client.get("/v1/streams/s").json()["readings"] == 1  # the accepted one is kept


def test_websocket_frames_get_ordered_replies_and_bad_frames_an_error(
    client: TestClient,
) -> None:
    with client.websocket_connect("/v1/ingest") as ws:
        ws.send_text('{"seq": 1, "readings": [{"stream_id": "w", "timestamp": 1, "value": 1},'
                     '{"stream_id": "w", "timestamp": 2, "value": 1.5}]}')
        ws.send_text("{broken")
        ws.send_text('{"stream_id": "w", "timestamp": 3, "value": 2.0, "seq": 3}')
        ws.send_text('[{"stream_id": "w", "timestamp": 3, "value": 2.0}]')
        first, broken, third, fourth = (ws.receive_json() for _ in range(4))
    assert first["seq"] == 1 and [r["timestamp"][-3:] for r in first["results"]] == ["01Z", "02Z"]
    assert broken["error"]["status"] == 422
    assert third["seq"] == 3 and third["results"][0]["status"] == "ok"
    assert fourth["seq"] is None and fourth["results"][0]["duplicate"] is True


def test_a_websocket_frame_of_columns_gets_a_reply_of_columns(client: TestClient) -> None:
    columns = {"stream_id": ["w1", "w2", "w1"], "timestamp": [1, 1, 1], "value": [1.0, 2.0, 3.0]}
    with client.websocket_connect("/v1/ingest") as ws:
        ws.send_text(json.dumps({"seq": 7, "columns": columns}))
        ws.send_text(json.dumps({"seq": 8, "columns": {"stream_id": ["w1"], "time": [2]}}))
        reply, refused = ws.receive_json(), ws.receive_json()
    assert reply["seq"] == 7 and reply["columns"]["stream_id"] == ["w1", "w2", "w1"]
    assert reply["columns"]["status"][:2] == ["ok", "ok"]
    assert reply["columns"]["duplicate"] == [False, False, True]
    assert refused["seq"] == 8 and "unknown column(s) time" in refused["error"]["detail"]


def test_an_oversized_websocket_frame_closes_with_1009(tmp_path) -> None:
    settings = make_settings(tmp_path, limits={"max_frame_bytes": 1024})
    with TestClient(create_app(settings)) as client:
        with client.websocket_connect("/v1/ingest") as ws:
            ws.send_text("[" + " " * 2000 + "]")
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
    assert closed.value.code == 1009


def test_alerts_are_announced_in_results_and_kept_in_the_history(client: TestClient) -> None:
    # Live delivery over WebSocket and SSE is tested against a real server (tests/e2e).
    values = sine(300, level=20.0, amplitude=3.0, seed=5)
    values[250] += 40.0
    _post_series(client, "other", values)
    results = _post_series(client, "pump-7", values)
    events = [r["alert"] for r in results if r["alert"] is not None]
    assert [e["event"] for e in events] == ["opened", "closed"]
    assert events[0]["id"] == events[1]["id"]
    history = client.get("/v1/alerts", params={"stream": "pump-*"}).json()
    assert [a["id"] for a in history["alerts"]] == [events[0]["id"]]
    assert history["alerts"][0]["open"] is False
    assert history["alerts"][0]["stream_id"] == "pump-7"
    both = client.get("/v1/alerts", params={"limit": 1}).json()
    assert len(both["alerts"]) == 1 and both["next_cursor"] is not None
    rest = client.get("/v1/alerts", params={"limit": 1, "cursor": both["next_cursor"]}).json()
    assert len(rest["alerts"]) == 1 and rest["alerts"][0]["id"] != both["alerts"][0]["id"]
    assert client.get("/v1/alerts", params={"open": "true"}).json()["alerts"] == []


def test_openapi_documents_the_reading_bodies(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/readings"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"anyOf": [
        {"$ref": "#/components/schemas/BatchIn"}, {"$ref": "#/components/schemas/BatchColumnsIn"}
    ]}
    assert {"StreamReadingIn", "StreamReadingColumns"} <= schema["components"]["schemas"].keys()


def test_a_direct_route_that_declares_a_dependency_is_refused_at_start() -> None:
    from fastapi import APIRouter, Depends, Request

    from service.api.direct import DirectRoutes

    router = APIRouter()

    @router.post("/x")
    async def needs_a_dependency(request: Request, n: int = Depends(lambda: 1)) -> None:
        return None

    with pytest.raises(ValueError, match="only its request and path parameters"):
        DirectRoutes(lambda *a: None, routes=router.routes, exception_handlers={})  # type: ignore[arg-type]
