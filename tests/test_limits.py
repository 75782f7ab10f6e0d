"""Every limit, over REST and WebSocket: a clear problem status, never a crash.

Body bytes and readings per request answer 413; a frame over its size closes with 1009;
channels per reading and stream-id length answer 413, a stream id outside the alphabet 422;
a full arena or queue 503; alert subscribers past their cap 503 (SSE) or close 1013 (WS).
The per-key request rate (429) is in test_ratelimit.
"""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.alerts import AlertFilter
from service.app import create_app
from service.errors import CapacityError
from service.results import Reading
from tests.conftest import make_settings, running_engine

PROBLEM = "application/problem+json"
LIMITS = {"max_body_bytes": 4096, "max_readings_per_request": 3, "max_frame_bytes": 4096,
          "max_channels": 2, "max_stream_id_length": 8}


@pytest.fixture
def limited(tmp_path) -> TestClient:
    settings = make_settings(tmp_path, limits=LIMITS, state={"max_streams": 2,
                             "initial_capacity": 1}, alerts={"max_subscribers": 1})
    with TestClient(create_app(settings)) as client:
        yield client


def _single(client: TestClient, stream_id: str, **reading: object) -> tuple[int, dict]:
    response = client.post(f"/v1/streams/{stream_id}/readings",
                           json={"timestamp": 1, **reading})
    assert response.headers["content-type"] in (PROBLEM, "application/json")
    return response.status_code, response.json()


def _frame(client: TestClient, frame: dict) -> dict:
    with client.websocket_connect("/v1/ingest") as ws:
        ws.send_json(frame)
        return ws.receive_json()


@pytest.mark.parametrize(
    ("stream_id", "reading", "status", "fragment"),
    [
        ("s", {"values": [1.0, 2.0, 3.0]}, 413, "at most 2"),  # channels per reading
        ("s123456789", {"value": 1.0}, 413, "at most 8"),  # stream-id length
        ("s%20t", {"value": 1.0}, 422, "must match"),  # stream-id alphabet
    ],
)
def test_per_reading_limits_answer_the_same_over_rest_and_websocket(
    limited: TestClient, stream_id: str, reading: dict, status: int, fragment: str
) -> None:
    code, body = _single(limited, stream_id, **reading)
    assert code == status and fragment in body["detail"]
    batch = limited.post("/v1/readings", json={"readings": [
        {"stream_id": stream_id.replace("%20", " "), "timestamp": 1, **reading}]})
    assert batch.status_code == 200
    assert batch.json()["results"][0]["status"]["status"] == status
    reply = _frame(limited, {"seq": 1, "readings": [
        {"stream_id": stream_id.replace("%20", " "), "timestamp": 1, **reading}]})
    assert reply["results"][0]["status"]["status"] == status
    assert limited.get("/v1/streams").json()["streams"] == []  # nothing applied


def test_too_many_readings_in_one_request_or_frame_is_413_and_the_socket_stays(
    limited: TestClient,
) -> None:
    readings = [{"stream_id": "s", "timestamp": t, "value": 1.0} for t in range(4)]
    response = limited.post("/v1/readings", json={"readings": readings})
    assert response.status_code == 413 and "at most 3" in response.json()["detail"]
    with limited.websocket_connect("/v1/ingest") as ws:
        ws.send_json({"seq": 1, "readings": readings})
        ws.send_json({"seq": 2, "readings": readings[:1]})
        refused, accepted = ws.receive_json(), ws.receive_json()
    assert refused["seq"] == 1 and refused["error"]["status"] == 413
    assert accepted["seq"] == 2 and accepted["results"][0]["status"] == "ok"


def test_a_body_over_its_limit_is_413_even_without_a_length(limited: TestClient) -> None:
    def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(10):
            yield b" " * 1000

    response = limited.post("/v1/readings", content=chunks())
    assert response.status_code == 413 and response.headers["content-type"] == PROBLEM


def test_a_frame_over_its_limit_closes_the_socket_with_1009(limited: TestClient) -> None:
    with limited.websocket_connect("/v1/ingest") as ws:
        ws.send_text("[" + " " * 5000 + "]")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1009


def test_a_new_stream_past_the_arena_cap_is_503_and_live_streams_go_on(
    limited: TestClient,
) -> None:
    assert _single(limited, "a", value=1.0)[0] == 200
    assert _single(limited, "b", value=1.0)[0] == 200
    code, body = _single(limited, "c", value=1.0)
    assert code == 503 and body["type"].endswith("/capacity")
    reply = _frame(limited, {"stream_id": "d", "timestamp": 1, "value": 1.0})
    assert reply["results"][0]["status"]["status"] == 503
    assert limited.post("/v1/streams/a/readings",
                        json={"timestamp": 2, "value": 1.0}).status_code == 200


def test_alert_subscribers_past_their_cap_are_refused_over_websocket_and_sse(
    limited: TestClient,
) -> None:
    bus = limited.app.state.alert_bus  # type: ignore[attr-defined]
    first = bus.subscribe(AlertFilter())  # the one place there is
    with limited.websocket_connect("/v1/alerts") as second:
        with pytest.raises(WebSocketDisconnect) as closed:
            second.receive_json()
    sse = limited.get("/v1/alerts/stream")
    bus.unsubscribe(first)
    assert closed.value.code == 1013 and "subscribers" in closed.value.reason
    assert sse.status_code == 503 and sse.headers["content-type"] == PROBLEM


def test_a_full_queue_refuses_with_503_and_keeps_what_it_holds(tmp_path) -> None:
    settings = make_settings(tmp_path, engine={"max_queued": 4, "max_wait_ms": 50.0})

    async def scenario() -> tuple[list, BaseException]:
        async with running_engine(settings) as engine:
            held = asyncio.ensure_future(engine.submit(
                [Reading(f"s{i}", 1.0, (1.0,)) for i in range(4)]))
            await asyncio.sleep(0)
            with pytest.raises(CapacityError) as refused:
                await engine.submit([Reading("t", 1.0, (1.0,))])
            return await held, refused.value

    outcomes, refused = asyncio.run(scenario())
    assert refused.status == 503 and len(outcomes) == 4
    assert all(o.stream_id == f"s{i}" for i, o in enumerate(outcomes))
