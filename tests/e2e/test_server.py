"""A real uvicorn process, real HTTP, WebSocket and SSE clients, and the replay command."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from tests.conftest import MODELS_DIR, sine
from tests.e2e.conftest import ROOT, Server, sse_events

pytestmark = pytest.mark.slow


def _spiky(n: int = 300, at: int = 250, seed: int = 5) -> np.ndarray:
    values = sine(n, level=20.0, amplitude=3.0, seed=seed)
    values[at] += 40.0
    return values


def _post(server: Server, stream_id: str, values: np.ndarray) -> list[dict]:
    body = {"readings": [{"stream_id": stream_id, "timestamp": 1_700_000_000 + 60 * i,
                          "value": float(v)} for i, v in enumerate(values)]}
    response = httpx.post(f"{server.url}/v1/readings", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_rest_and_websocket_ingest_against_a_real_server(server: Server) -> None:
    results = _post(server, "pump-1", sine(50))
    assert [r["status"] for r in results] == ["ok"] * 50
    with connect(f"{server.ws_url}/v1/ingest") as ws:
        for i in range(20):
            ws.send(json.dumps({"seq": i, "stream_id": "pump-2", "timestamp": i, "value": 1.0}))
        replies = [json.loads(ws.recv(timeout=10)) for _ in range(20)]
        ws.send("x" * 10)
        error = json.loads(ws.recv(timeout=10))
    assert [r["seq"] for r in replies] == list(range(20))
    assert all(r["results"][0]["status"] == "ok" for r in replies)
    assert error["error"]["status"] == 422
    assert httpx.get(f"{server.url}/v1/streams/pump-2").json()["readings"] == 20


def test_alerts_arrive_live_over_websocket_and_sse_and_sse_resumes(server: Server) -> None:
    received: list[dict] = []

    def listen() -> None:
        received.extend(sse_events(server, count=2))

    listener = threading.Thread(target=listen)
    listener.start()
    with connect(f"{server.ws_url}/v1/alerts?stream=pump-*") as ws:
        time.sleep(0.3)  # both subscriptions are in place before the spike
        _post(server, "pump-9", _spiky())
        ws_events = [json.loads(ws.recv(timeout=10)) for _ in range(2)]
    listener.join(timeout=20)
    assert [e["event"] for e in ws_events] == ["opened", "closed"]
    assert [e["event"] for e in received] == ["opened", "closed"]
    assert [int(e["id"]) for e in received] == [e["seq"] for e in ws_events]

    resumed = sse_events(server, count=1, headers={"Last-Event-ID": received[0]["id"]})
    assert resumed[0]["event"] == "closed" and resumed[0]["id"] == received[1]["id"]


def test_replay_writes_what_the_server_answers_for_the_same_file(
    server: Server, tmp_path: Path
) -> None:
    values = _spiky(seed=11)
    data = tmp_path / "turbine.csv"
    data.write_text("timestamp,value\n" + "".join(
        f"{1_700_000_000 + 60 * i},{float(v)!r}\n" for i, v in enumerate(values)))
    out = tmp_path / "results.csv"
    subprocess.run(
        [sys.executable, "-m", "service", "replay", str(data), "--stream", "turbine",
         "--out", str(out), "--models-dir", str(MODELS_DIR)],
        cwd=ROOT, check=True, capture_output=True, timeout=60,
    )
    with out.open() as f:
        replayed = list(csv.DictReader(f))
    served = _post(server, "turbine", values)
    assert len(replayed) == len(served) == len(values)
    for row, result in zip(replayed, served, strict=True):
        assert float(row["score"]) == result["score"]
        assert bool(int(row["anomaly"])) == result["anomaly"]
        loc = result["forecast"]["loc"] if result["forecast"] else None
        assert (None if not row["forecast_loc"] else [float(row["forecast_loc"])]) == loc
        assert row["alert_event"] == (result["alert"]["event"] if result["alert"] else "")
    assert sum(int(r["anomaly"]) for r in replayed) >= 1
