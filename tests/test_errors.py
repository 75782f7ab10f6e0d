"""Every domain error renders as RFC 9457 problem+json with its own status."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service import errors
from service.api import problems

ALL = [cls for cls in vars(errors).values()
       if isinstance(cls, type) and issubclass(cls, errors.StreamwatchError)
       and cls is not errors.StreamwatchError]


def _raising(cls: type[errors.StreamwatchError]) -> FastAPI:
    app = FastAPI()
    problems.install(app)

    @app.get("/boom")
    async def boom() -> None:
        raise cls("what happened")

    return app


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_each_domain_error_is_a_problem_with_its_status(cls) -> None:
    with TestClient(_raising(cls)) as client:
        response = client.get("/boom")
    assert response.status_code == cls.status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body == {"type": body["type"], "title": cls.title, "status": cls.status,
                    "detail": "what happened", "instance": "/boom"}
    assert body["type"].startswith("https://")


def test_every_error_is_drawn_in_the_module_docstring() -> None:
    assert len(ALL) >= 9
    for cls in ALL:
        assert cls.__name__ in errors.__doc__
