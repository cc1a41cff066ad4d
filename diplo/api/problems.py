"""How the API documents its errors: every error is an RFC 9457 problem
(application/problem+json), listed per route in the OpenAPI document so that it says
what a client really gets."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

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
    403: problem_doc("Wrong token, or a read-only one"),
    **READ_ERRORS,
    429: problem_doc("Too many POSTs from this client"),
}

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: problem_doc("No bearer token (reads are open only on loopback without DIPLO_TOKEN)"),
    403: problem_doc("Wrong token, or a read-only token for an action"),
}
STREAM_ERRORS: dict[int | str, dict[str, Any]] = {
    429: problem_doc("Too many open streams, from this client or in all (see Retry-After)"),
}


class Problem(Exception):
    """An RFC 9457 problem answer."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.status, self.title, self.detail, self.extra = status, title, detail, extra
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return problem_response(self.status, self.title, self.detail, self.headers, **self.extra)


def problem_response(
    status: int,
    title: str,
    detail: str = "",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )
