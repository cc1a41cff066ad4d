"""Property-based run of the API of `diplo serve` against its own OpenAPI document
(schemathesis): for every operation, generated requests, valid and invalid, never get a
5xx, and every answer has a documented status code, content type and body schema. It
runs as the admin of a server whose operator chose its tokens (DIPLO_TOKEN and
DIPLO_VIEWER_TOKEN set: no read is open), so that every operation is exercised past
authentication; then as a viewer (reads answer, every action is a 403) and without a
token (only /healthz answers), where no generated request may change anything."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from diplo.api.app import create_app

from .apiworld import APPS, AUTH, HOST, VIEWER, World, build_world, tokens


@schemathesis.check
def passes_authentication(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """The admin token opens every operation: a 401/403 means a request was not tested."""
    assert response.status_code not in (401, 403, 421), response.text


CHECKS = [
    passes_authentication,
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,  # a valid request is not rejected as invalid (400, 422)
    unsupported_method,  # 405, with an Allow header, for methods a path does not have
    allow_header_conformance,
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("api-schema")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIPLO_HOME", str(root / "home"))
        w = build_world(root, tokens())
        yield w
        w.ledger.close()


@pytest.fixture(scope="module")
def api_schema(world: World) -> schemathesis.BaseSchema:
    loaded = schemathesis.openapi.from_asgi("/openapi.json", world.api, headers={"Host": HOST})

    @loaded.hook
    def flatmap_path_parameters(
        _: schemathesis.HookContext, params: dict[str, Any]
    ) -> st.SearchStrategy[dict[str, Any]]:
        # Generated names hardly ever hit an app that exists: two cases in three do here.
        if not isinstance(params, dict) or "app" not in params:
            return st.just(params)
        return st.sampled_from([params, *({**params, "app": a} for a in APPS)])

    return loaded


# GET /events is a server-sent event stream that stays open until the client leaves: a
# generated request waits for it to end (schemathesis gives up after 10 s, three times).
# test_api.py reads it. GET /apps/{app}/logs?follow=true stays in: the in-memory engine's
# logs end at once.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/events")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32 (from_fixture) reads and renames `node._nodeid`, which pytest 9.2
    replaced by `node._id`; it only uses it to name the operations in its reports."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    database=None,  # no example database: every run starts afresh
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_answer_is_documented_and_no_request_is_a_server_error(
    case: schemathesis.Case, world: World
) -> None:
    # A fresh app (and so a fresh rate limiter) for each POST: the limiter's 429 is
    # documented, yet answering 429 to every POST after the first 20 would hide the rest.
    app = create_app(world.controller, tokens()) if case.method.upper() == "POST" else world.api
    case.call_and_validate(app=app, headers={**AUTH, "Host": HOST}, checks=CHECKS)


ROLES = {"viewer": VIEWER, "anonymous": {}}
_calling_as = ["anonymous"]


@schemathesis.check
def role_is_enforced(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """A viewer reads but never acts (403); without a token only /healthz answers (401)."""
    role = _calling_as[0]
    status = response.status_code
    if case.path == "/healthz" or case.path == "/hooks/git":
        return  # open, and the webhook has its own signatures
    if status == 405:
        return  # a method the path lacks is refused before anyone is asked who they are
    # 429: the POST limiter counts before it asks who calls (it guards the token check);
    # 400/422: FastAPI refuses a body it cannot read before it runs the token check.
    early = (429, 400, 422) if case.method.upper() == "POST" else ()
    if role == "anonymous":
        assert status in (401, *early), (case.method, case.path, status)
    elif case.method.upper() == "POST":
        assert status in (403, *early), (case.method, case.path, status)
    else:
        assert status not in (401, 403), (case.method, case.path, status)


ROLE_SETTINGS = settings(
    max_examples=10,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def call_as(role: str, case: schemathesis.Case, world: World) -> None:
    before = [(d.app, d.id) for a in APPS for d in world.ledger.deployments(a)]
    _calling_as[0] = role
    case.call_and_validate(
        app=world.api,
        headers={**ROLES[role], "Host": HOST},
        checks=[
            role_is_enforced,
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
    assert [(d.app, d.id) for a in APPS for d in world.ledger.deployments(a)] == before


@schema.parametrize()
@ROLE_SETTINGS
def test_as_a_viewer_every_answer_is_documented_and_no_action_runs(
    case: schemathesis.Case, world: World
) -> None:
    call_as("viewer", case, world)


@schema.parametrize()
@ROLE_SETTINGS
def test_without_a_token_only_healthz_answers_and_every_answer_is_documented(
    case: schemathesis.Case, world: World
) -> None:
    call_as("anonymous", case, world)
