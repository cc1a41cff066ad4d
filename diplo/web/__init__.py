"""The dashboard of `diplo serve`: server-rendered pages (jinja2) with htmx for the parts
that change and uPlot for the charts, a live WebSocket at /ws, served by the same app and
port as the API. It reads the controller's view and acts through the controller, as the
API does: no logic of its own."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from diplo.api.access import Access
from diplo.controller.controller import Controller
from diplo.metrics.collector import Collector
from diplo.web.actions import add_actions
from diplo.web.context import AlertsProvider, Dashboard, SignIn, sign_in_answer
from diplo.web.live import add_live
from diplo.web.pages import add_pages

STATIC = Path(__file__).parent / "static"
# Only this server's own files run: no inline script, no other origin.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

__all__ = ["AlertsProvider", "Dashboard", "add_dashboard"]


class PageHeaders:
    """The dashboard's answers carry a content security policy and are never framed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/" or path.startswith("/ui/")):
            await self.app(scope, receive, send)
            return

        async def headed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, headed)


def add_dashboard(
    api: FastAPI,
    controller: Controller,
    access: Access,
    metrics: Collector | None = None,
    alerts: AlertsProvider | None = None,
) -> Dashboard:
    """Adds the dashboard's routes to the API's app. `alerts` returns the firing alerts
    (rule, subject, since, message each); without it, the alerts panel says there are none
    configured."""
    dash = Dashboard(controller, access, metrics, alerts)

    @api.exception_handler(SignIn)
    async def sign_in(request: Request, _: SignIn) -> Response:
        return sign_in_answer(request)

    add_pages(api, dash)
    add_actions(api, dash)
    add_live(api, dash)
    api.mount("/ui/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    api.add_middleware(PageHeaders)
    return dash
