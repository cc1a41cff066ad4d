"""The dashboard's POSTs: signing in and out, and the admin's actions on an app (sync,
resume, restart, cancel, rollback) through the controller, as the API's. Every POST
carries the CSRF token of its session (the sign-in form: of its form), or is refused."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from diplo.api.app import client_of
from diplo.api.params import AppName
from diplo.controller.controller import Controller
from diplo.errors import DiploError
from diplo.web.context import Dashboard, safe_next, same_origin
from diplo.web.sessions import COOKIE, LIFETIME, LOGIN_COOKIE, Session

MAX_FORM = 4096  # bytes: a dashboard form holds a token and a number
ACTIONS = ("sync", "resume", "restart", "cancel", "rollback")


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


async def form_of(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (the first value of each)."""
    body = await request.body()
    if len(body) > MAX_FORM:
        raise Refused(413, "form too large")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


def run_action(controller: Controller, app: str, action: str, form: dict[str, str]) -> str:
    """Do `action` on `app` as the API would; what it came to, or DiploError."""
    if action == "sync":
        controller.sync(app)
        return "sync queued"
    if action == "resume":
        resumed = controller.sync(app, resume=True)
        return (
            "following the source again; sync queued" if resumed else "was not pinned; sync queued"
        )
    if action == "restart":
        return "restarted" if controller.restart(app, "restarted from the dashboard") else (
            "no container to restart"
        )  # fmt: skip
    if action == "cancel":
        return "cancel requested" if controller.cancel(app) else "no deploy in flight"
    raw = form.get("to", "")
    to = int(raw) if raw.isdigit() else None
    if to is None:
        raise Refused(422, "choose the deployment to roll back to")
    dep = controller.rollback(app, to)
    return f"rolling back to deployment {dep}; pinned until resumed"


def add_actions(api: FastAPI, dash: Dashboard) -> None:
    controller = dash.controller
    hidden: dict[str, Any] = {"include_in_schema": False}

    def note(text: str, status: int, tone: str) -> HTMLResponse:
        body = dash.templates.get_template("note.html").render(text=text, tone=tone)
        return HTMLResponse(body, status_code=status)

    def admitted(request: Request, form: dict[str, str]) -> Session:
        """The session of an admin's POST with its CSRF token, or Refused."""
        if not dash.actions.allow(client_of(request)):
            raise Refused(429, "too many actions; wait a few seconds")
        if not same_origin(request):
            raise Refused(403, "refused: the request came from another site")
        session = dash.who(request)
        if session is None or session.anonymous:
            raise Refused(401, "sign in to act")
        given = request.headers.get("x-csrf-token") or form.get("csrf", "")
        if not dash.sessions.csrf_ok(session, given):
            raise Refused(403, "refused: missing or wrong CSRF token; reload the page")
        if not session.admin:
            raise Refused(403, "the viewer role can look, not act")
        return session

    @api.post("/ui/apps/{app}/{action}", **hidden)
    async def act(request: Request, app: AppName, action: str) -> Response:
        try:
            form = await form_of(request)
            admitted(request, form)
            if action not in ACTIONS:
                raise Refused(404, f"no action {action!r}")
            if controller.view.app(app) is None:
                raise Refused(404, f"no app named {app!r} on this host")
            done = await anyio.to_thread.run_sync(lambda: run_action(controller, app, action, form))
        except Refused as exc:
            return note(exc.message, exc.status, "bad")
        except DiploError as exc:
            return note(f"{action} refused: {exc.message}", 409, "bad")
        return note(f"{app}: {done}", 202 if action == "rollback" else 200, "good")

    @api.get("/ui/login", **hidden)
    def login_form(request: Request, next: str = "/") -> Response:
        session = dash.who(request)
        if session is not None and not session.anonymous:
            return RedirectResponse(safe_next(next), status_code=303)
        return login_page(request, next, "", 200)

    def login_page(request: Request, target: str, error: str, status: int) -> Response:
        nonce, csrf = dash.sessions.login_pair()
        answer = dash.page(
            request, "login.html", dash.who(request) or _nobody(), status=status,
            csrf=csrf, next=safe_next(target), error=error,
        )  # fmt: skip
        answer.set_cookie(
            LOGIN_COOKIE, nonce, max_age=600, httponly=True, samesite="strict",
            secure=request.url.scheme == "https", path="/ui/login",
        )  # fmt: skip
        return answer

    @api.post("/ui/login", **hidden)
    async def login(request: Request) -> Response:
        try:
            form = await form_of(request)
        except Refused as exc:
            return Response(exc.message, status_code=exc.status)
        target = form.get("next", "/")
        if not dash.logins.allow(client_of(request)):
            return login_page(request, target, "Too many attempts: wait a minute.", 429)
        if not same_origin(request) or not dash.sessions.login_ok(
            request.cookies.get(LOGIN_COOKIE, ""), form.get("csrf", "")
        ):
            return login_page(request, target, "The form expired: try again.", 403)
        role = dash.access.role_of(form.get("token", "").strip())
        if role is None:
            return login_page(request, target, "That token is not one of this server's.", 401)
        cookie, _ = dash.sessions.issue(role)
        answer = RedirectResponse(safe_next(target), status_code=303)
        answer.set_cookie(
            COOKIE, cookie, max_age=LIFETIME, httponly=True, samesite="strict",
            secure=request.url.scheme == "https", path="/",
        )  # fmt: skip
        answer.delete_cookie(LOGIN_COOKIE, path="/ui/login")
        return answer

    @api.post("/ui/logout", **hidden)
    async def logout(request: Request) -> Response:
        form = await form_of(request)
        session = dash.who(request)
        if session is None or session.anonymous:
            return RedirectResponse("/ui/login", status_code=303)
        given = request.headers.get("x-csrf-token") or form.get("csrf", "")
        if not dash.sessions.csrf_ok(session, given):
            return Response("missing or wrong CSRF token", status_code=403)
        dash.sessions.revoke(session)
        answer = RedirectResponse("/ui/login", status_code=303)
        answer.delete_cookie(COOKIE, path="/")
        return answer


def _nobody() -> Session:
    return Session("viewer", "", 0, "")
