"""The operations through the `diplo serve` of this host (found by $DIPLO_HOME/serve.json):
while a controller runs, status, rollback and sync go to it, so that the CLI and the
controller never deploy an app past each other."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from diplo.errors import InputError
from diplo.ops.commands import Outcome, Statuses, duration
from diplo.ops.metrics import AppUsage, Top
from diplo.ops.status import AppView
from diplo.paths import default_home
from diplo.tokens import WeakToken, api_token


class RemoteOps:
    """`Operations` over the REST API of a running `diplo serve`, as its admin (reads need
    the token too when the operator chose one)."""

    def __init__(self, url: str, tls_cert: str | None = None) -> None:
        self.url = url
        # A self-signed certificate of `diplo serve --tls-cert` is trusted for its URL.
        self.tls = ssl.create_default_context(cafile=tls_cert) if tls_cert else None

    def get(self, path: str) -> Any:
        return self._send(urllib.request.Request(self.url + path, headers=self._auth()), 5)

    def post(self, path: str, body: dict[str, Any] | None) -> Any:
        """A POST with this host's API token; a problem answer becomes an InputError."""
        data = json.dumps(body).encode() if body is not None else b""
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method="POST",
            headers={**self._auth(), "Content-Type": "application/json"},
        )
        return self._send(req, 30)

    def _auth(self) -> dict[str, str]:
        try:
            token, _ = api_token(default_home())
        except WeakToken as exc:
            raise InputError(exc.message, hint=exc.hint) from exc
        return {"Authorization": f"Bearer {token}"}

    def _send(self, req: urllib.request.Request, timeout: float) -> Any:
        """The JSON answer; an error answer (a problem, or a proxy's page) is a DiploError
        that says what the server said."""
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.tls) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                problem = json.loads(exc.read())
                message = f"{problem.get('title')}: {problem.get('detail')}"
            except ValueError:
                message = str(exc.reason)
            raise InputError(f"diplo serve at {self.url} answered {exc.code}: {message}") from exc

    def status(self, app: str | None) -> Statuses:
        listing = self.get("/apps")
        rows = [AppView.from_dict(r) for r in listing["apps"] if app is None or r["app"] == app]
        if app is not None and not rows:
            raise InputError(
                f"no app named {app!r} on this host", hint="`diplo status` lists the apps"
            )
        domains = []
        if any(r.domains for r in rows):  # only then: a handshake per domain
            every = self.get("/proxy/domains")["domains"]
            domains = [d for d in every if app is None or d["app"] == app]
        return Statuses(rows, listing["manifest"].get("error"), served_by=self.url, domains=domains)

    def rollback(self, app: str, to: int | None) -> Outcome:
        answer = self.post(f"/apps/{app}/rollback", {"to": to} if to is not None else {})
        return Outcome(bool(answer.get("accepted")), answer["detail"])

    def sync(self, app: str, *, resume: bool) -> Outcome:
        answer = self.post(f"/apps/{app}/sync" + ("?resume=true" if resume else ""), None)
        return Outcome(bool(answer.get("accepted", True)), answer["detail"])

    def top(self) -> Top:
        answer = self.get("/system/top")
        apps = [AppUsage.from_dict(a) for a in answer["apps"]]
        return Top(apps, answer.get("host"), answer.get("interval_s"), served_by=self.url)

    def alerts(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.get("/alerts")
        return {**answer, "served_by": self.url}

    def metrics(self, app: str, since: str, step: str | None) -> dict[str, Any]:
        # Checked here for the same messages as without a server (the API says 422).
        query = {"since": _api_duration(since, "--since")}
        if step:
            query["step"] = _api_duration(step, "--step")
        self.status(app)  # an unknown app: the same message as `diplo status APP`
        answer: dict[str, Any] = self.get(f"/apps/{app}/metrics?{urllib.parse.urlencode(query)}")
        return answer


def _api_duration(text: str, option: str) -> str:
    """The API takes whole seconds, minutes, hours or days (`90s`, `1h`, `7d`)."""
    return f"{int(duration(text, option))}s"


def running_server() -> RemoteOps | None:
    """The controller serving this DIPLO_HOME, if one runs and answers."""
    info = default_home() / "serve.json"
    try:
        data = json.loads(info.read_text())
        os.kill(int(data["pid"]), 0)
        server = RemoteOps(str(data["url"]), data.get("tls_cert"))
        with urllib.request.urlopen(server.url + "/healthz", timeout=5, context=server.tls):
            pass
        return server
    except (OSError, ValueError, KeyError, urllib.error.URLError):
        return None
