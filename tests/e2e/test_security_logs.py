"""A real server: where it listens when open, and what its JSON logs say (and never say)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx2 as httpx
import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from tests.e2e.conftest import start_server

pytestmark = pytest.mark.slow

KEY = "e2e-feeder-key-0123456789"


def _outward_address() -> str | None:
    """An address of this machine other than loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent; this picks an interface
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def _log_lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_an_open_server_asked_for_every_interface_listens_on_loopback_only(
    tmp_path: Path,
) -> None:
    server = start_server(tmp_path / "data", env={"STREAMWATCH_SERVER__HOST": "0.0.0.0"})
    try:
        assert httpx.get(f"{server.url}/v1/models").status_code == 200  # open, on loopback
        outward = _outward_address()
        if outward is not None:
            port = server.url.rsplit(":", 1)[1]
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://{outward}:{port}/healthz", timeout=2.0)
    finally:
        server.stop()
    messages = [line["message"] for line in _log_lines(server.log)]
    assert any("listens on 127.0.0.1 only, not on 0.0.0.0" in m for m in messages)


def test_a_keyed_server_logs_json_lines_with_request_ids_and_no_keys_or_values(
    tmp_path: Path,
) -> None:
    keys = json.dumps([{"name": "feeder", "roles": ["ingest", "read"], "key": KEY}])
    server = start_server(tmp_path / "data", env={"STREAMWATCH_SECURITY__API_KEYS": keys})
    auth = {"Authorization": f"Bearer {KEY}", "X-Request-ID": "e2e-1"}
    try:
        sent = httpx.post(f"{server.url}/v1/streams/s/readings", headers=auth,
                          json={"timestamp": 1, "value": 97531.8642})
        assert sent.status_code == 200 and sent.headers["x-request-id"] == "e2e-1"
        assert httpx.get(f"{server.url}/v1/models").status_code == 401
        with connect(f"{server.ws_url}/v1/ingest?token={KEY}") as ws:
            ws.send('{"stream_id": "s", "timestamp": 2, "value": 86420.9753}')
            assert json.loads(ws.recv(timeout=10))["results"][0]["status"] == "ok"
        with connect(f"{server.ws_url}/v1/ingest?token=not-a-key") as ws:
            with pytest.raises(ConnectionClosedError) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    finally:
        server.stop()
    lines = _log_lines(server.log)  # each line parses as JSON, or this fails
    text = server.log.read_text()
    for secret in (KEY, "97531", "86420"):
        assert secret not in text
    assert any("1 API key(s)" in line["message"] for line in lines)
    (access,) = [line for line in lines if line.get("request_id") == "e2e-1"]
    assert access["caller"] == "feeder" and access["status"] == 200
    assert any("token=[redacted]" in line["message"] for line in lines)  # uvicorn's own line


def test_a_malformed_last_event_id_is_ignored_and_keeps_no_subscriber_place(
    tmp_path: Path,
) -> None:
    """Found by reading the route while fuzzing: `int()` of such an id was a 500 that kept
    the subscription it had just taken, so a few requests could lock every subscriber out."""
    server = start_server(tmp_path / "data", env={"STREAMWATCH_ALERTS__MAX_SUBSCRIBERS": "1"})
    url = f"{server.url}/v1/alerts/stream"
    try:
        for bad in (b"\xb2", b"9" * 5000, b"-1"):  # a latin-1 digit, past int()'s limit
            with httpx.stream("GET", url, headers={"Last-Event-ID": bad}, timeout=5) as sse:
                assert sse.status_code == 200
        deadline = time.monotonic() + 5.0
        while True:  # the server sees each client leave a moment after it does
            with httpx.stream("GET", url, timeout=5) as sse:
                if sse.status_code == 200 or time.monotonic() > deadline:
                    break
            time.sleep(0.05)
        assert sse.status_code == 200
    finally:
        server.stop()
