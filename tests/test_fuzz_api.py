"""Schemathesis against the app's own OpenAPI schema: no 5xx, and nothing outside the schema.

Every operation gets a bounded number of generated requests (valid and invalid), sent with an
admin key to a live in-process app; each response must be no server error, and its status,
content type, headers and body must be the ones the schema declares. The live SSE stream is
left out: it never ends. Who may call what is tested in test_security.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import schemathesis.checks
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from service.app import create_app
from tests.conftest import make_settings

ADMIN = "fuzz-admin-key-0123456789"


def _settings(data_dir: Path) -> Any:
    return make_settings(
        data_dir,
        security={"api_keys": [{"name": "fuzz", "roles": ["admin"], "key": ADMIN}],
                  "rate_per_s": None},
        store={"backend": "memory"},
        limits={"max_body_bytes": 64 * 1024},
    )


# The schema is read from an app that is never started; requests go to the fixture's.
schema = schemathesis.openapi.from_dict(
    create_app(_settings(Path("never-written"))).openapi()
).exclude(path="/v1/alerts/stream")

schemathesis.checks.load_all_checks()
CONTRACT = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(_settings(tmp_path_factory.mktemp("fuzz")))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_operation_answers_outside_its_schema(case: Any, live: TestClient) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    response = live.request(**_as_httpx(case.as_transport_kwargs(headers=headers)))
    case.validate_response(response, headers=headers, checks=CONTRACT)


def _as_httpx(request: dict[str, Any]) -> dict[str, Any]:
    """Schemathesis speaks `requests`; the test client speaks httpx (raw bodies: `content`)."""
    sent = {k: request[k] for k in ("method", "url", "headers", "params") if k in request}
    if "json" in request:
        sent["json"] = request["json"]
    elif isinstance(request.get("data"), bytes | str):
        sent["content"] = request["data"]
    elif request.get("data") is not None:
        sent["data"] = request["data"]
    return sent


# -- what fuzzing found, kept as plain tests ------------------------------------------------


@pytest.mark.parametrize("timestamp", [1e20, -1e12, "0001-01-01T00:00:00+01:00"])
def test_a_time_outside_the_years_1_to_9999_is_refused_before_it_applies(
    client: TestClient, timestamp: float | str
) -> None:
    """Results write times back in ISO 8601, which ends at 9999: such a reading used to be
    applied and then fail to render (500)."""
    response = client.post("/v1/streams/s/readings", json={"timestamp": timestamp, "value": 1.0})
    assert response.status_code == 422 and "years 1 to 9999" in response.json()["detail"]
    assert client.get("/v1/streams/s").status_code == 404
    batch = client.post("/v1/readings", json={"readings": [
        {"stream_id": "s", "timestamp": timestamp, "value": 1.0}]})
    assert batch.json()["results"][0]["status"]["status"] == 422
