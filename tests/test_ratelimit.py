"""Per-key request rate: a token bucket per key, 429 with Retry-After past it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.app import create_app
from service.errors import RateLimitedError
from service.ratelimit import RateLimiter
from service.security import key_digest
from tests.conftest import make_settings

FEEDER, OTHER = "feeder-key-0123456789", "other-key-0123456789a"
KEYS = [
    {"name": "feeder", "roles": ["ingest", "read"], "key": FEEDER},
    {"name": "other", "roles": ["read"], "sha256": key_digest(OTHER)},
]


class _Clock:
    """Time that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_may_burst_then_waits_for_its_bucket_to_refill() -> None:
    clock = _Clock()
    limiter = RateLimiter(rate_per_s=4.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.acquire("feeder")
    with pytest.raises(RateLimitedError) as refused:
        limiter.acquire("feeder")
    assert refused.value.retry_after_s == pytest.approx(0.25)
    assert refused.value.status == 429 and "retry in 0.25 s" in refused.value.detail
    clock.now += 0.25
    limiter.acquire("feeder")  # one token back
    with pytest.raises(RateLimitedError):
        limiter.acquire("feeder")


def test_a_refused_request_takes_no_token() -> None:
    clock = _Clock()
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=clock)
    limiter.acquire("feeder")
    for _ in range(5):
        with pytest.raises(RateLimitedError):
            limiter.acquire("feeder")
    clock.now += 1.0
    limiter.acquire("feeder")


def test_a_bucket_never_holds_more_than_the_burst() -> None:
    clock = _Clock()
    limiter = RateLimiter(rate_per_s=10.0, burst=2, clock=clock)
    limiter.acquire("feeder")
    clock.now += 3600.0
    limiter.acquire("feeder")
    limiter.acquire("feeder")
    with pytest.raises(RateLimitedError):
        limiter.acquire("feeder")


def test_each_key_has_its_own_bucket() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=_Clock())
    limiter.acquire("feeder")
    limiter.acquire("other")
    with pytest.raises(RateLimitedError):
        limiter.acquire("feeder")


def _limited(tmp_path, **security: object) -> TestClient:
    settings = make_settings(tmp_path, security={"api_keys": KEYS, "rate_per_s": 0.01,
                                                 "rate_burst": 2, **security})
    return TestClient(create_app(settings))


def test_over_its_rate_a_key_gets_429_problem_with_retry_after(tmp_path) -> None:
    auth = {"Authorization": f"Bearer {FEEDER}"}
    with _limited(tmp_path) as client:
        statuses = [client.get("/v1/models", headers=auth).status_code for _ in range(3)]
        refused = client.post("/v1/readings", json={"readings": []}, headers=auth)
        other = client.get("/v1/models", headers={"Authorization": f"Bearer {OTHER}"})
        health = [client.get("/healthz").status_code for _ in range(5)]
    assert statuses == [200, 200, 429]
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/rate-limited")
    assert int(refused.headers["retry-after"]) >= 1  # whole seconds, rounded up
    assert other.status_code == 200  # another key's bucket is its own
    assert health == [200] * 5  # liveness is never limited


def test_a_websocket_frame_over_the_rate_gets_a_429_reply_and_the_socket_stays(
    tmp_path,
) -> None:
    frame = '{"seq": %d, "readings": [{"stream_id": "w", "timestamp": %d, "value": 1.0}]}'
    with _limited(tmp_path) as client:
        with client.websocket_connect(f"/v1/ingest?token={FEEDER}") as ws:  # 1st request
            ws.send_text(frame % (1, 1))  # 2nd: admitted
            ws.send_text(frame % (2, 2))  # 3rd: over the burst
            ws.send_text(frame % (3, 3))
            replies = [ws.receive_json() for _ in range(3)]
        stream = client.get("/v1/streams/w", headers={"Authorization": f"Bearer {OTHER}"})
    assert stream.json()["readings"] == 1  # the refused frames were not applied
    assert replies[0]["seq"] == 1 and replies[0]["results"][0]["status"] == "ok"
    assert [r["seq"] for r in replies[1:]] == [2, 3]
    assert all(r["error"]["status"] == 429 for r in replies[1:])


def test_a_socket_opened_over_the_rate_closes_with_1013(tmp_path) -> None:
    auth = {"Authorization": f"Bearer {FEEDER}"}
    with _limited(tmp_path) as client:
        client.get("/v1/models", headers=auth)
        client.get("/v1/models", headers=auth)
        with client.websocket_connect(f"/v1/ingest?token={FEEDER}") as ws:
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
    assert closed.value.code == 1013 and "requests per second" in closed.value.reason


def test_no_limit_applies_when_it_is_off_or_the_server_is_open(tmp_path) -> None:
    auth = {"Authorization": f"Bearer {FEEDER}"}
    with _limited(tmp_path, rate_per_s=None) as client:
        assert {client.get("/v1/models", headers=auth).status_code for _ in range(5)} == {200}
    settings = make_settings(tmp_path, security={"rate_per_s": 0.01, "rate_burst": 1})
    with TestClient(create_app(settings)) as client:  # no keys: open, on loopback only
        assert {client.get("/v1/models").status_code for _ in range(5)} == {200}
