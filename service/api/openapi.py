"""The OpenAPI document says every status a route may answer, each as problem+json.

FastAPI documents a 422 of its own shape; ours is a problem, so it is replaced. A route behind
an API key may also answer 401, 403 and 429 (with Retry-After). Routes declare their own
domain statuses (`responses=`); this fills in their problem+json schema.
"""

from __future__ import annotations

from typing import Any

from service.schemas import Problem

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_MEDIA_TYPE = "application/problem+json"
_AUTH = {
    "401": ("No API key, or one the server does not know", {}),
    "403": ("The key lacks the role this route needs", {}),
    "429": (
        "The key is over its request rate",
        {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
    ),
}
_INVALID = "The request is malformed: a parameter or the body is invalid"


def problem_response(description: str) -> dict[str, Any]:
    """An OpenAPI response whose body is a problem."""
    return {"description": description, "content": {_MEDIA_TYPE: {"schema": PROBLEM_REF}}}


def declare_problems(schema: dict[str, Any]) -> None:
    """Give every operation its problem+json responses, in place."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses: dict[str, Any] = operation["responses"]
            if "422" in responses:
                responses["422"] = problem_response(_INVALID)
            if operation.get("security"):
                for status, (description, headers) in _AUTH.items():
                    responses.setdefault(status, problem_response(description))
                    if headers:
                        responses[status]["headers"] = headers
            for status, response in responses.items():
                if status.startswith(("4", "5")) and _MEDIA_TYPE in response.get("content", {}):
                    response["content"][_MEDIA_TYPE].setdefault("schema", PROBLEM_REF)
    schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
        "Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    )
