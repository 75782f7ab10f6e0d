"""API keys and roles: who may call which route, over REST and WebSocket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from service.alerts import AlertFilter
from service.app import create_app
from service.errors import ForbiddenError, UnauthenticatedError
from service.security import ANONYMOUS, KeyRing, bind_host, key_digest
from service.settings import ApiKey, Settings
from tests.conftest import make_settings

PROBLEM = "application/problem+json"
FEEDER, VIEWER, ROOT = "feeder-key-0123456789", "viewer-key-0123456789", "root-key-0123456789ab"
KEYS = [
    {"name": "feeder", "roles": ["ingest"], "key": FEEDER},
    {"name": "viewer", "roles": ["read"], "sha256": key_digest(VIEWER)},  # hashed at rest
    {"name": "root", "roles": ["admin"], "key": ROOT},
]
TOKEN = {"ingest": FEEDER, "read": VIEWER, "admin": ROOT}
WRONG = {"ingest": VIEWER, "read": FEEDER, "admin": VIEWER}  # a valid key without the role

# (method, path, role, request keyword arguments)
ROUTES = [
    ("POST", "/v1/streams/s/readings", "ingest", {"json": {"timestamp": 1, "value": 1.0}}),
    ("POST", "/v1/readings", "ingest", {"json": {"readings": []}}),
    ("GET", "/v1/streams", "read", {}),
    ("GET", "/v1/streams/s", "read", {}),
    ("GET", "/v1/alerts", "read", {}),
    ("GET", "/v1/models", "read", {}),
    ("GET", "/metrics", "read", {}),
    ("DELETE", "/v1/streams/s", "admin", {}),
]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def keyed(tmp_path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, security={"api_keys": KEYS, "rate_per_s": None})
    with TestClient(create_app(settings)) as client:
        yield client


# -- the key ring ---------------------------------------------------------------------------


def test_a_token_finds_its_key_whether_configured_plain_or_hashed() -> None:
    ring = KeyRing([ApiKey(**k) for k in KEYS])  # type: ignore[arg-type]
    assert ring.identify(FEEDER).name == "feeder"
    assert ring.identify(VIEWER).name == "viewer"
    assert ring.identify(VIEWER).roles == frozenset({"read"})
    assert len(ring) == 3 and not ring.open


@pytest.mark.parametrize("token", [None, "", "nope", FEEDER + "x", FEEDER[:-1], "é" * 20])
def test_a_missing_or_unknown_token_is_unauthenticated(token: str | None) -> None:
    ring = KeyRing([ApiKey(**k) for k in KEYS])  # type: ignore[arg-type]
    with pytest.raises(UnauthenticatedError):
        ring.identify(token)


def test_a_key_without_the_role_is_forbidden_and_admin_may_do_everything() -> None:
    ring = KeyRing([ApiKey(**k) for k in KEYS])  # type: ignore[arg-type]
    with pytest.raises(ForbiddenError, match="'feeder' lacks the 'read' role"):
        ring.authorize(FEEDER, "read")
    assert ring.authorize(FEEDER, "ingest").name == "feeder"
    assert {ring.authorize(ROOT, role).name for role in ("ingest", "read", "admin")} == {"root"}


def test_with_no_keys_every_caller_is_anonymous_with_every_role() -> None:
    ring = KeyRing([])
    assert ring.open
    assert ring.authorize(None, "admin") is ANONYMOUS
    assert ring.authorize("anything", "ingest") is ANONYMOUS


@pytest.mark.parametrize(
    "key",
    [
        {"name": "a", "roles": ["read"]},  # neither form
        {"name": "a", "roles": ["read"], "key": FEEDER, "sha256": key_digest(FEEDER)},  # both
        {"name": "a", "roles": ["read"], "key": "short"},  # under 16 characters
        {"name": "a", "roles": ["read"], "sha256": "abc"},  # not a sha256 hex
        {"name": "a", "roles": [], "key": FEEDER},  # no role
        {"name": "a", "roles": ["root"], "key": FEEDER},  # no such role
        {"name": "a b", "roles": ["read"], "key": FEEDER},  # a name unsafe in logs
    ],
)
def test_malformed_api_keys_are_refused_at_start(key: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(security={"api_keys": [key]})  # type: ignore[arg-type]


def test_two_keys_of_one_name_are_refused() -> None:
    twice = [KEYS[0], {**KEYS[2], "name": "feeder"}]
    with pytest.raises(ValidationError, match="unique"):
        Settings(security={"api_keys": twice})  # type: ignore[arg-type]


def test_an_open_server_listens_on_loopback_only() -> None:
    assert bind_host("0.0.0.0", keyed=False) == "127.0.0.1"
    assert bind_host("::", keyed=False) == "127.0.0.1"
    assert bind_host("myhost.example", keyed=False) == "127.0.0.1"
    assert bind_host("::1", keyed=False) == "::1"
    assert bind_host("localhost", keyed=False) == "localhost"
    assert bind_host("127.0.0.5", keyed=False) == "127.0.0.5"
    assert bind_host("0.0.0.0", keyed=True) == "0.0.0.0"


# -- REST -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "role", "kwargs"), ROUTES)
def test_each_route_refuses_a_caller_without_a_key_with_401(
    keyed: TestClient, method: str, path: str, role: str, kwargs: dict
) -> None:
    response = keyed.request(method, path, **kwargs)
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["type"].endswith("/unauthenticated")


@pytest.mark.parametrize(("method", "path", "role", "kwargs"), ROUTES)
def test_each_route_refuses_a_key_without_its_role_with_403(
    keyed: TestClient, method: str, path: str, role: str, kwargs: dict
) -> None:
    response = keyed.request(method, path, headers=_bearer(WRONG[role]), **kwargs)
    assert response.status_code == 403
    assert response.headers["content-type"] == PROBLEM
    assert f"lacks the '{role}' role" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path", "role", "kwargs"), ROUTES)
def test_each_route_admits_its_role_and_admin(
    keyed: TestClient, method: str, path: str, role: str, kwargs: dict
) -> None:
    for token in (TOKEN[role], ROOT):
        response = keyed.request(method, path, headers=_bearer(token), **kwargs)
        assert response.status_code not in (401, 403), response.text


def test_the_live_alert_stream_needs_the_read_role(keyed: TestClient) -> None:
    assert keyed.get("/v1/alerts/stream").status_code == 401
    assert keyed.get("/v1/alerts/stream", headers=_bearer(FEEDER)).status_code == 403


@pytest.mark.parametrize(
    "authorization", ["Basic " + FEEDER, "Bearer", "Bearer nope-nope-nope-nope", FEEDER]
)
def test_a_malformed_or_unknown_authorization_is_401(
    keyed: TestClient, authorization: str
) -> None:
    response = keyed.get("/v1/models", headers={"Authorization": authorization})
    assert response.status_code == 401 and response.headers["content-type"] == PROBLEM


def test_a_token_in_the_query_is_not_accepted_over_rest(keyed: TestClient) -> None:
    assert keyed.get("/v1/models", params={"token": VIEWER}).status_code == 401


def test_liveness_readiness_and_the_schema_stay_open(keyed: TestClient) -> None:
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/readyz").status_code == 200
    assert keyed.get("/openapi.json").status_code == 200


def test_an_ingest_key_sends_readings_and_an_admin_key_forgets_the_stream(
    keyed: TestClient,
) -> None:
    sent = keyed.post("/v1/streams/s/readings", json={"timestamp": 1, "value": 1.0},
                      headers=_bearer(FEEDER))
    assert sent.status_code == 200
    assert keyed.get("/v1/streams/s", headers=_bearer(VIEWER)).json()["readings"] == 1
    assert keyed.delete("/v1/streams/s", headers=_bearer(VIEWER)).status_code == 403
    assert keyed.delete("/v1/streams/s", headers=_bearer(ROOT)).status_code == 204


def test_the_schema_declares_bearer_auth_on_guarded_routes(keyed: TestClient) -> None:
    schema = keyed.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/readings"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


# -- WebSocket ------------------------------------------------------------------------------


def _close_of(client: TestClient, url: str, **kwargs: object) -> WebSocketDisconnect:
    with client.websocket_connect(url, **kwargs) as ws:  # type: ignore[arg-type]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    return closed.value


def test_an_ingest_socket_without_a_key_closes_with_1008_and_a_reason(keyed: TestClient) -> None:
    closed = _close_of(keyed, "/v1/ingest")
    assert closed.code == 1008 and "API key is required" in closed.reason


def test_an_ingest_socket_with_an_unknown_or_unfit_key_closes_with_1008(
    keyed: TestClient,
) -> None:
    assert _close_of(keyed, "/v1/ingest?token=nope").code == 1008
    closed = _close_of(keyed, f"/v1/ingest?token={VIEWER}")
    assert closed.code == 1008 and "lacks the 'ingest' role" in closed.reason


@pytest.mark.parametrize("how", ["query", "header"])
def test_an_ingest_socket_takes_its_key_from_the_query_or_the_header(
    keyed: TestClient, how: str
) -> None:
    url, headers = ("/v1/ingest?token=" + FEEDER, {}) if how == "query" else (
        "/v1/ingest", _bearer(FEEDER))
    with keyed.websocket_connect(url, headers=headers) as ws:
        ws.send_text('{"stream_id": "w", "timestamp": 1, "value": 1.0}')
        reply = ws.receive_json()
    assert reply["results"][0]["status"] == "ok"


def test_the_alert_socket_needs_the_read_role(tmp_path) -> None:
    settings = make_settings(tmp_path, security={"api_keys": KEYS},
                             alerts={"max_subscribers": 1})
    with TestClient(create_app(settings)) as client:
        bus = client.app.state.alert_bus  # type: ignore[attr-defined]
        taken = bus.subscribe(AlertFilter())  # the only place: a caller let in is told so
        refused = _close_of(client, f"/v1/alerts?token={FEEDER}")
        admitted = _close_of(client, f"/v1/alerts?token={VIEWER}")
        bus.unsubscribe(taken)
    assert refused.code == 1008 and "lacks the 'read' role" in refused.reason
    assert admitted.code == 1013 and "subscribers" in admitted.reason


def test_the_sse_stream_takes_its_key_from_the_query_and_other_routes_do_not(tmp_path) -> None:
    settings = make_settings(tmp_path, security={"api_keys": KEYS, "rate_per_s": None},
                             alerts={"max_subscribers": 1})
    with TestClient(create_app(settings)) as client:
        bus = client.app.state.alert_bus  # type: ignore[attr-defined]
        taken = bus.subscribe(AlertFilter())  # the only place: a caller let in is told so
        refused = client.get(f"/v1/alerts/stream?token={FEEDER}")
        admitted = client.get(f"/v1/alerts/stream?token={VIEWER}")
        bus.unsubscribe(taken)
        history = client.get(f"/v1/alerts?token={VIEWER}")  # a header is the way here
    assert refused.status_code == 403
    assert admitted.status_code == 503 and "subscribers" in admitted.json()["detail"]
    assert history.status_code == 401
