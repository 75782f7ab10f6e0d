"""Structured logs: a request id on every line and in X-Request-ID; no values or keys."""

from __future__ import annotations

import contextvars
import io
import logging
from collections.abc import Iterator

import orjson
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.logs import RequestContext, RequestFilter, bind_request, formatter, redact
from tests.conftest import make_settings

KEY = "feeder-key-0123456789"


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """Every record at INFO and above, formatted as the server formats them."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter(json_lines=True))
    handler.addFilter(RequestFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _records(out: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_a_good_request_id_is_echoed_and_a_missing_or_bad_one_replaced(
    client: TestClient,
) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "job-42.a:b"})
    assert given.headers["x-request-id"] == "job-42.a:b"
    fresh = client.get("/healthz").headers["x-request-id"]
    assert len(fresh) == 32 and int(fresh, 16) >= 0
    for bad in ("a b", "x" * 129, '{"forged": 1}'):
        replaced = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert replaced != bad and len(replaced) == 32


def test_problems_and_websockets_carry_the_request_id_too(client: TestClient) -> None:
    missing = client.get("/v1/streams/nope", headers={"X-Request-ID": "r-1"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "r-1"
    with client.websocket_connect("/v1/ingest", headers={"X-Request-ID": "ws-1"}) as ws:
        assert dict(ws.extra_headers or [])[b"x-request-id"] == b"ws-1"


def test_each_request_logs_one_json_access_line_with_its_id_and_caller(
    tmp_path, lines: io.StringIO
) -> None:
    keys = [{"name": "feeder", "roles": ["ingest"], "key": KEY}]
    settings = make_settings(tmp_path, security={"api_keys": keys})
    with TestClient(create_app(settings)) as client:
        client.post("/v1/streams/s/readings?x=1", json={"timestamp": 1, "value": 1.0},
                    headers={"Authorization": f"Bearer {KEY}", "X-Request-ID": "req-7"})
    (line,) = [r for r in _records(lines) if r.get("request_id") == "req-7"]
    assert line["logger"] == "streamwatch.access" and line["level"] == "INFO"
    assert line["method"] == "POST" and line["path"] == "/v1/streams/s/readings"
    assert line["route"] == "/v1/streams/{stream_id}/readings"
    assert line["status"] == 200 and line["duration_ms"] >= 0 and line["caller"] == "feeder"
    assert "time" in line and "x=1" not in line["message"]


def test_no_reading_value_and_no_key_reaches_the_logs_at_info(
    tmp_path, lines: io.StringIO
) -> None:
    keys = [{"name": "feeder", "roles": ["ingest", "read"], "key": KEY}]
    settings = make_settings(tmp_path, security={"api_keys": keys})
    auth = {"Authorization": f"Bearer {KEY}"}
    with TestClient(create_app(settings)) as client:
        client.post("/v1/readings", headers=auth, content=b'{"readings": ['
                    b'{"stream_id": "s", "timestamp": 1, "value": 98765.4321},'
                    b'{"stream_id": "s", "timestamp": 2, "value": NaN}]}')
        client.post("/v1/streams/s/readings", headers=auth, content=b'{"timestamp": 0, '
                    b'"value": 13579.2468}')  # refused: out of order
        with client.websocket_connect(f"/v1/ingest?token={KEY}") as ws:
            ws.send_text('{"stream_id": "s", "timestamp": 3, "value": 24680.1357}')
            ws.receive_json()
        client.get("/v1/models", headers={"Authorization": "Bearer wrong-key-0123456789"})
    text = lines.getvalue()
    assert text.count("streamwatch.access") == 4  # two posts, one socket, one refusal
    for secret in (KEY, "wrong-key-0123456789", "98765", "13579", "24680"):
        assert secret not in text


def test_the_log_filter_masks_tokens_and_bearer_credentials() -> None:
    assert redact('"WebSocket /v1/ingest?token=abc123&x=1" [accepted]') == (
        '"WebSocket /v1/ingest?token=[redacted]&x=1" [accepted]'
    )
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1,
                               '%s - "WebSocket %s" [accepted]', ("127.0.0.1", "/x?token=k"),
                               None)

    def during_a_request() -> None:
        bind_request(RequestContext("r-9", caller="feeder"))
        RequestFilter().filter(record)

    contextvars.copy_context().run(during_a_request)
    formatted = orjson.loads(formatter(json_lines=True).format(record))
    assert formatted["message"] == '127.0.0.1 - "WebSocket /x?token=[redacted]" [accepted]'
    assert formatted["request_id"] == "r-9" and formatted["caller"] == "feeder"


def test_plain_text_logs_when_json_is_off() -> None:
    record = logging.LogRecord("streamwatch", logging.WARNING, __file__, 1, "hello %s",
                               ("there",), None)
    RequestFilter().filter(record)
    text = formatter(json_lines=False).format(record)
    assert text.endswith(" WARNING streamwatch [None] hello there")
