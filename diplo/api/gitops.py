"""GitOps routes of the API: push webhooks, rollbacks and resuming a pinned app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import structlog
from fastapi import Body, Depends, FastAPI, Request
from pydantic import BaseModel, Field

from diplo.api.params import AppName
from diplo.api.problems import WRITE_ERRORS, problem_doc
from diplo.controller.controller import Controller
from diplo.controller.sources import GitSource
from diplo.errors import InputError
from diplo.model import MAX_ID

log = structlog.get_logger("diplo.api")


class RollbackRequest(BaseModel):
    to: int | None = Field(
        None,
        ge=1,
        le=MAX_ID,
        description="Deployment ID to restore; default: the last good one before.",
    )


class RollbackAccepted(BaseModel):
    app: str
    accepted: bool
    deployment: int
    detail: str


class HookAnswer(BaseModel):
    accepted: bool
    detail: str
    provider: str | None = None
    branch: str | None = None


def add_gitops_routes(
    api: FastAPI,
    controller: Controller,
    authorized: Callable[[Request], None],
    known: Callable[[str], Any],
    problem: Callable[..., Exception],
    webhook_secret: str | None,
) -> None:
    """`known(app)` answers 404 for an app this host does not have."""

    @api.post(
        "/apps/{app}/rollback",
        dependencies=[Depends(authorized)],
        response_model=RollbackAccepted,
        status_code=202,
        summary="Redeploy an earlier deployment and pin the app there",
        responses={
            400: problem_doc("The body cannot be parsed"),
            **WRITE_ERRORS,
            409: problem_doc("Nothing to roll back to"),
        },
    )
    def rollback(
        app: AppName, body: Annotated[RollbackRequest | None, Body()] = None
    ) -> RollbackAccepted:
        known(app)
        try:
            dep_id = controller.rollback(app, body.to if body else None)
        except InputError as exc:
            raise problem(409, "cannot roll back", exc.message) from exc
        return RollbackAccepted(
            app=app,
            accepted=True,
            deployment=dep_id,
            detail=f"rolling back to deployment {dep_id}; pinned until a sync with resume",
        )

    @api.post(
        "/hooks/git",
        response_model=HookAnswer,
        status_code=202,
        summary="Push webhooks (GitHub, Gitea/Forgejo, GitLab), verified with a shared secret",
        responses={
            401: problem_doc("Signature or token missing or wrong"),
            404: problem_doc("Webhooks are not configured"),
        },
    )
    async def hook(request: Request) -> Any:
        from diplo.errors import WebhookError
        from diplo.webhooks import parse_push, verify

        gits = [s for s in controller.sources if isinstance(s, GitSource)]
        if webhook_secret is None or not gits:
            raise problem(
                404,
                "webhooks are not configured",
                "serve a --repo and set DIPLO_WEBHOOK_SECRET",
            )
        body = await request.body()
        headers = dict(request.headers)
        client = request.client.host if request.client else "?"
        try:
            provider = verify(headers, body, webhook_secret)
            push = parse_push(provider, headers, body)
        except WebhookError as exc:
            log.warning("webhook.rejected", client=client, reason=exc.message)
            raise problem(401, "webhook rejected", exc.message) from exc
        if push.event != "push" or push.branch is None:
            return HookAnswer(accepted=False, detail=f"ignored: {push.event}", provider=provider)
        if all(push.branch != g.branch for g in gits):
            return HookAnswer(
                accepted=False,
                detail=f"ignored: a push to {push.branch}, not a watched branch",
                provider=provider,
                branch=push.branch,
            )
        log.info("webhook.accepted", provider=provider, branch=push.branch, after=push.after)
        controller.poll_now()
        return HookAnswer(accepted=True, detail="fetching", provider=provider, branch=push.branch)
