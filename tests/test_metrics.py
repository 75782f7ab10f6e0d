"""GET /metrics: what the engine, the alerts and the API did, in Prometheus text format."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.alerts import AlertFilter
from service.app import create_app
from service.metrics import Metrics
from tests.conftest import make_settings, sine

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    return _parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert "# TYPE streamwatch_readings_total counter" in response.text
    assert "# TYPE streamwatch_step_seconds histogram" in response.text


def test_readings_are_counted_by_model_and_outcome(client: TestClient) -> None:
    body = (b'{"readings": ['
            + b",".join(b'{"stream_id": "a", "timestamp": %d, "value": 1.0}' % t
                        for t in range(1, 6))
            + b',{"stream_id": "a", "timestamp": 5, "value": 1.0}'  # duplicate
            b',{"stream_id": "a", "timestamp": 3, "value": 1.0}'  # out of order
            b',{"stream_id": "b", "timestamp": 1, "value": NaN}'  # refused while parsing
            b',{"stream_id": "c", "timestamp": 1, "values": [1.0, 2.0]}'  # refused by the model
            b',{"stream_id": "d", "timestamp": 1, "value": 1.0, "model": "nope"}]}')
    assert client.post("/v1/readings", content=body).status_code == 200
    samples = scrape(client)
    readings = "streamwatch_readings_total"
    assert value(samples, readings, model="default", outcome="ok") == 5
    assert value(samples, readings, model="default", outcome="duplicate") == 1
    assert value(samples, readings, model="default", outcome="out-of-order") == 1
    assert value(samples, readings, model="", outcome="invalid-reading") == 2
    assert value(samples, readings, model="", outcome="unknown-model") == 1
    assert value(samples, "streamwatch_anomalies_total", model="default") == 0
    rounds = client.app.state.engine.rounds  # type: ignore[attr-defined]
    assert value(samples, "streamwatch_batch_readings_count") == rounds
    assert value(samples, "streamwatch_batch_readings_sum") == 9  # all but the NaN one
    assert value(samples, "streamwatch_step_seconds_count", model="default") == 7
    assert value(samples, "streamwatch_live_streams", model="default") == 1
    assert value(samples, "streamwatch_queue_depth") == 0


def test_alerts_opened_open_and_subscriber_drops_are_counted(tmp_path) -> None:
    settings = make_settings(tmp_path, alerts={"subscriber_queue": 1})
    values = sine(300, level=20.0, amplitude=3.0, seed=5)
    values[250] += 400.0  # far past any threshold
    streams = ("p1", "p2", "p3")  # the same series: their alerts open in the same round
    body = {"readings": [{"stream_id": s, "timestamp": i, "value": float(v)}
                         for i, v in enumerate(values) for s in streams]}
    with TestClient(create_app(settings)) as client:
        bus = client.app.state.alert_bus  # type: ignore[attr-defined]
        bus.subscribe(AlertFilter())  # a subscriber that never reads: it keeps one event
        client.post("/v1/readings", json=body)
        samples = scrape(client)
        open_now = sum(client.get(f"/v1/streams/{s}").json()["open_alert"] is not None
                       for s in streams)
        history = client.get("/v1/alerts").json()["alerts"]
    events = sum(1 if a["open"] else 2 for a in history)  # opened, and closed if so
    assert {a["stream_id"] for a in history} == set(streams)
    assert value(samples, "streamwatch_alerts_opened_total", model="default") == len(history)
    assert value(samples, "streamwatch_alerts_open", model="default") == open_now
    assert value(samples, "streamwatch_subscriber_dropped_events_total") == events - 1
    assert value(samples, "streamwatch_anomalies_total", model="default") >= len(streams)


def test_idle_streams_evicted_past_the_ttl_are_counted(tmp_path) -> None:
    settings = make_settings(tmp_path, state={"ttl_s": 0.05})
    with TestClient(create_app(settings)) as client:
        client.post("/v1/streams/old/readings", json={"timestamp": 1, "value": 1.0})
        time.sleep(0.15)
        client.post("/v1/streams/new/readings", json={"timestamp": 1, "value": 1.0})
        samples = scrape(client)
    assert value(samples, "streamwatch_evictions_total", model="default") == 1
    assert value(samples, "streamwatch_live_streams", model="default") == 1


def test_http_requests_are_counted_by_route_template_and_status(client: TestClient) -> None:
    client.get("/v1/streams/x")
    client.get("/v1/streams/y")
    client.get("/no/such/route")
    samples = scrape(client)
    requests = "streamwatch_http_requests_total"
    assert value(samples, requests, method="GET", route="/v1/streams/{stream_id}",
                 status="404") == 2
    assert value(samples, requests, method="GET", route="unmatched", status="404") == 1
    assert value(samples, "streamwatch_http_request_seconds_count",
                 route="/v1/streams/{stream_id}") == 2


def test_requests_add_up_per_label_set_and_share_their_route_s_durations() -> None:
    metrics = Metrics()
    for method, status in [("POST", 200), ("POST", 200), ("POST", 404), ("GET", 200)]:
        metrics.request_done(method, "/v1/readings", status, 0.002)
    samples = _parse(metrics.render()[0].decode())
    requests = "streamwatch_http_requests_total"
    assert value(samples, requests, method="POST", route="/v1/readings", status="200") == 2
    assert value(samples, requests, method="POST", route="/v1/readings", status="404") == 1
    assert value(samples, requests, method="GET", route="/v1/readings", status="200") == 1
    assert value(samples, "streamwatch_http_request_seconds_count", route="/v1/readings") == 4


def test_invented_methods_share_one_label_so_label_sets_stay_few(client: TestClient) -> None:
    for method in ("FOO", "BAR", "BAZ"):
        client.request(method, "/no/such/route")
    samples = scrape(client)
    methods = {dict(labels).get("method") for (name, labels) in samples
               if name == "streamwatch_http_requests_total"}
    assert "other" in methods and not methods & {"FOO", "BAR", "BAZ"}
    assert value(samples, "streamwatch_http_requests_total", method="other", route="unmatched",
                 status="404") == 3


def test_two_apps_in_one_process_keep_their_own_counts(tmp_path) -> None:
    first = TestClient(create_app(make_settings(tmp_path / "first")))
    second = TestClient(create_app(make_settings(tmp_path / "second")))
    with first, second:
        first.post("/v1/streams/s/readings", json={"timestamp": 1, "value": 1.0})
        readings = ("streamwatch_readings_total", "default", "ok")
        name, model, outcome = readings
        assert value(scrape(first), name, model=model, outcome=outcome) == 1
        assert value(scrape(second), name, model=model, outcome=outcome) == 0


def test_a_written_snapshot_is_timed_and_resets_the_snapshot_age() -> None:
    metrics = Metrics()
    metrics._last_snapshot -= 60.0  # as if the server had run a minute without one
    before = _parse(metrics.render()[0].decode())
    assert value(before, "streamwatch_snapshot_age_seconds") == pytest.approx(60.0, abs=1.0)
    metrics.snapshot_written(0.25)
    metrics.snapshot_failed()
    after = _parse(metrics.render()[0].decode())
    assert value(after, "streamwatch_snapshot_age_seconds") < 1.0
    assert value(after, "streamwatch_snapshot_seconds_count") == 1
    assert value(after, "streamwatch_snapshot_seconds_sum") == 0.25
    assert value(after, "streamwatch_snapshot_failures_total") == 1
