"""How the API documents its errors: every error is an RFC 9457 problem
(application/problem+json), listed per route in the OpenAPI document so that it says
what a client really gets."""

from __future__ import annotations

from typing import Any

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg"],
                "properties": {"loc": {"type": "array"}, "msg": {"type": "string"}},
            },
        },
    },
}


def problem_doc(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
    }


READ_ERRORS: dict[int | str, dict[str, Any]] = {
    404: problem_doc("No such app"),
    422: problem_doc("Invalid app name or query parameter"),
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: problem_doc("No bearer token"),
    403: problem_doc("Wrong token"),
    **READ_ERRORS,
    429: problem_doc("Too many POSTs from this client"),
}
