"""What every dashboard route works with: the controller, the API's access rules, the
sessions, the templates; and who a request comes from."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment
from markupsafe import Markup
from starlette.requests import HTTPConnection

from diplo.api.access import Access
from diplo.api.limits import RateLimiter, StreamSlots
from diplo.controller.controller import Controller
from diplo.metrics.collector import Collector
from diplo.web.render import environment
from diplo.web.sessions import ANONYMOUS, COOKIE, Session, Sessions

# The firing alerts, each a dict with rule, subject, since and message (the alerts
# helper's GET /alerts); None: no alerting on this server.
AlertsProvider = Callable[[], list[dict[str, Any]]]

ACTION_RATE = (20, 10.0)  # POSTs per client, as the API's
LOGIN_RATE = (10, 60.0)  # sign-in attempts per client: token guesses are slow
LOG_FOLLOWS = (4, 32)  # open log streams: per client, in all
SOCKETS = (8, 64)  # open /ws: per client, in all


class SignIn(Exception):
    """The request needs a session it does not have: to the sign-in page."""


@dataclass
class Dashboard:
    controller: Controller
    access: Access
    metrics: Collector | None = None
    alerts: AlertsProvider | None = None
    sessions: Sessions = field(init=False)
    templates: Environment = field(default_factory=environment)
    actions: RateLimiter = field(default_factory=lambda: RateLimiter(*ACTION_RATE))
    logins: RateLimiter = field(default_factory=lambda: RateLimiter(*LOGIN_RATE))
    follows: StreamSlots = field(default_factory=lambda: StreamSlots("log streams", *LOG_FOLLOWS))
    sockets: StreamSlots = field(default_factory=lambda: StreamSlots("live sockets", *SOCKETS))

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.access.session_key)
        # compiled now, not by the first request (~0.2 s on this machine's kind)
        for name in self.templates.list_templates(filter_func=lambda n: n.endswith(".html")):
            self.templates.get_template(name)
        self._listing: tuple[bytes, dict[str, Any]] | None = None
        # first rows shown (None: all) -> (listing, apps deploying, their rows rendered)
        self._rows: dict[int | None, tuple[bytes, frozenset[str], Markup]] = {}

    def who(self, conn: HTTPConnection) -> Session | None:
        """The request's session; the anonymous viewer when reads are open; else None."""
        cookie = conn.cookies.get(COOKIE)
        if cookie and (session := self.sessions.read(cookie)) is not None:
            return session
        return ANONYMOUS if self.access.open_reads else None

    def reader(self, request: Request) -> Session:
        """The session of a GET, or SignIn."""
        session = self.who(request)
        if session is None:
            raise SignIn()
        return session

    def page(
        self, request: Request, template: str, session: Session, status: int = 200, **data: Any
    ) -> HTMLResponse:
        html = self.templates.get_template(template).render(
            session=session, path=request.url.path, **data
        )
        return HTMLResponse(html, status_code=status)

    def firing(self) -> list[dict[str, Any]] | None:
        """The firing alerts, or None when no provider was given (or it failed)."""
        if self.alerts is None:
            return None
        try:
            return list(self.alerts())
        except Exception:  # the panel says so; the page still renders
            return None

    def listing(self) -> dict[str, Any]:
        """GET /apps's body (serialised once per change by the controller's view), read
        once per change too. Not to be changed by the caller: it is shared."""
        raw = self.controller.view.listing()
        cached = self._listing
        if cached is None or cached[0] is not raw:
            cached = self._listing = (raw, json.loads(raw))
        return cached[1]

    def rows(self, first: int | None = None) -> Markup:
        """The overview's table rows (the `first` ones only, when given), rendered once per
        change of the listing or of the apps being deployed: the bulk of the overview."""
        raw = self.controller.view.listing()
        busy = frozenset(self.controller.queue.processing)
        cached = self._rows.get(first)
        if cached is None or cached[0] is not raw or cached[1] != busy:
            apps = [{**row, "reconciling": row["app"] in busy} for row in self.listing()["apps"]]
            html = Markup(self.templates.get_template("rows.html").render(apps=apps[:first]))
            cached = self._rows[first] = (raw, busy, html)
        return cached[2]


def sign_in_answer(request: Request) -> Response:
    """A page goes to the sign-in form (and back after); a fragment or a stream gets a
    401 that htmx turns into that same redirect."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    login = f"/ui/login?next={quote(target, safe='')}"
    if request.headers.get("hx-request") or request.method != "GET":
        return Response("sign in first", status_code=401, headers={"HX-Redirect": login})
    return RedirectResponse(login, status_code=303)


def same_origin(conn: HTTPConnection) -> bool:
    """Whether the Origin header, when sent, names the host the request was sent to."""
    origin = conn.headers.get("origin")
    if not origin:
        return True
    return urlsplit(origin).netloc.lower() == conn.headers.get("host", "").lower()


def safe_next(target: str | None) -> str:
    """Where a sign-in returns to: a path of this server, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
