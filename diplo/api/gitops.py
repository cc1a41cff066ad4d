"""GitOps routes of the API: push webhooks, rollbacks and resuming a pinned app."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import structlog
from fastapi import Body, Depends, FastAPI, Request
from pydantic import BaseModel, Field

from diplo.api.limits import RateLimiter, Sampled
from diplo.api.params import AppName
from diplo.api.problems import WRITE_ERRORS, Problem, problem_doc
from diplo.controller.controller import Controller
from diplo.controller.sources import GitSource
from diplo.errors import DiploError, LockTimeout
from diplo.model import MAX_ID

if TYPE_CHECKING:
    from diplo.webhooks import WebhookSecrets

log = structlog.get_logger("diplo.api")

MAX_HOOK_BODY = 1 << 20  # bytes: a push event is a few kB; GitHub caps them at 25 MB
HOOK_RATE = (30, 60.0)  # deliveries per client: at most 30 per minute
BUSY_RETRY_AFTER = 5  # s: what a client waits before asking again for a busy app


def busy(title: str, exc: DiploError) -> Problem:
    """The 409 of a command that cannot run now: its app's lock is held by a deploy (try
    again later), or the command was refused."""
    if isinstance(exc, LockTimeout):
        return Problem(
            409,
            "app is busy",
            f"{exc.message}; try again once the deploy is done",
            headers={"Retry-After": str(BUSY_RETRY_AFTER)},
        )
    return Problem(409, title, exc.message)


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
    webhook_secrets: WebhookSecrets | None,
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
            409: problem_doc("Nothing to roll back to, or a deploy holds the app"),
        },
    )
    def rollback(
        app: AppName, body: Annotated[RollbackRequest | None, Body()] = None
    ) -> RollbackAccepted:
        known(app)
        try:
            dep_id = controller.rollback(app, body.to if body else None)
        except DiploError as exc:
            raise busy("cannot roll back", exc) from exc
        return RollbackAccepted(
            app=app,
            accepted=True,
            deployment=dep_id,
            detail=f"rolling back to deployment {dep_id}; pinned until a sync with resume",
        )

    hook_limiter = RateLimiter(*HOOK_RATE)
    tell = Sampled(60.0)  # a rejection is logged at most once per client per minute

    def rejected(client: str, status: int, title: str, detail: str, **kw: Any) -> Problem:
        if tell(client):
            log.warning("webhook.rejected", client=client, status=status, reason=detail)
        return Problem(status, title, detail, **kw)

    async def read_body(request: Request, client: str) -> bytes:
        """The body, refused (413) past MAX_HOOK_BODY before it is read when its length is
        declared, and as soon as it gets there when it is chunked."""
        too_big = f"a webhook body is at most {MAX_HOOK_BODY} bytes"
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_HOOK_BODY:
            raise rejected(client, 413, "body too large", too_big)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_HOOK_BODY:
                raise rejected(client, 413, "body too large", too_big)
        return bytes(body)

    @api.post(
        "/hooks/git",
        response_model=HookAnswer,
        status_code=202,
        summary="Push webhooks (GitHub, Gitea/Forgejo, GitLab), verified with their provider's"
        " secret",
        responses={
            400: problem_doc("A verified body that is not a JSON object"),
            401: problem_doc("Signature or token missing or wrong, or no secret for its provider"),
            404: problem_doc("Webhooks are not configured"),
            413: problem_doc(f"The body is over {MAX_HOOK_BODY} bytes"),
            429: problem_doc("Too many deliveries from this client"),
        },
    )
    async def hook(request: Request) -> Any:
        from diplo.errors import WebhookError
        from diplo.webhooks import parse_push, verify

        gits = [s for s in controller.sources if isinstance(s, GitSource)]
        if not webhook_secrets or not gits:
            raise problem(
                404,
                "webhooks are not configured",
                "serve a --repo and set DIPLO_WEBHOOK_SECRET_GITHUB, DIPLO_WEBHOOK_SECRET_GITEA"
                " or DIPLO_WEBHOOK_SECRET_GITLAB (or DIPLO_WEBHOOK_SECRET for every provider)",
            )
        client = request.client.host if request.client else "?"
        if not hook_limiter.allow(client):
            raise rejected(
                client,
                429,
                "too many requests",
                f"at most {HOOK_RATE[0]} deliveries per {HOOK_RATE[1]:g}s",
                headers={"Retry-After": str(int(HOOK_RATE[1]))},
            )
        body = await read_body(request, client)
        headers = dict(request.headers)
        try:
            provider = verify(headers, body, webhook_secrets)
        except WebhookError as exc:
            detail = f"{exc.message}: {exc.hint}" if exc.hint else exc.message
            raise rejected(client, 401, "webhook rejected", detail) from exc
        try:
            push = parse_push(provider, headers, body)
        except WebhookError as exc:  # signed by someone with the secret: tell them why
            raise rejected(client, 400, "unreadable webhook", exc.message) from exc
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
