"""The secret scan (issue 10): a value planted through each channel a manifest has —
interpolation into env, an env_file, a command, a label, a health command — reaches the
container, and appears in no API response, event, log line, CLI output or ledger column,
through a deploy, a change of secret and a rollback under `diplo serve`."""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import urllib.error
import urllib.request
from typing import Any

from .conftest import HTTPD, Sandbox, site
from .test_serve import Server, wait_for

ADMIN, VIEWER = secrets.token_urlsafe(32), secrets.token_urlsafe(32)


def planted() -> dict[str, str]:
    return {name: f"{name.lower()}-{secrets.token_hex(8)}" for name in _CHANNELS}


_CHANNELS = ("CMD_SECRET", "LABEL_SECRET", "HEALTH_SECRET", "ENV_SECRET", "FILE_SECRET")


def write_secrets(box: Sandbox, values: dict[str, str]) -> None:
    """Interpolated ones in the folder's .env, the env_file's own in secrets.env."""
    dotenv = "".join(f"{k}={v}\n" for k, v in values.items() if k != "FILE_SECRET")
    (box.dir / ".env").write_text(dotenv)
    (box.dir / "secrets.env").write_text(f"FILE_SECRET={values['FILE_SECRET']}\n")


def app_spec(box: Sandbox) -> dict[str, Any]:
    www = site(box.root, "www-secrets", "ok")
    return {
        "image": "busybox:latest",
        "command": ["sh", "-c", f"exec {' '.join(HTTPD)} # ${{CMD_SECRET}}"],
        "init": True,
        "ports": ["8080"],
        "volumes": [f"{www}:/www:ro"],
        "labels": {"token": "tok-${LABEL_SECRET}"},
        "env": {"API_KEY": "${ENV_SECRET}"},
        "env_file": ["secrets.env"],
        "health": {
            "cmd": ["sh", "-c", "test -n '${HEALTH_SECRET}' && wget -q -O- http://127.0.0.1:8080/"],
            "interval": "200ms",
        },
    }


def read(srv: Server, path: str, token: str = VIEWER) -> str:
    req = urllib.request.Request(srv.url + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()


class EventTap:
    """GET /events as a viewer, read in a thread for the whole test."""

    def __init__(self, srv: Server) -> None:
        self.lines: list[str] = []
        req = urllib.request.Request(
            srv.url + "/events", headers={"Authorization": f"Bearer {VIEWER}"}
        )
        self.resp = urllib.request.urlopen(req, timeout=120)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for raw in self.resp:
                self.lines.append(raw.decode(errors="replace"))
        except (OSError, ValueError):
            pass  # closed at the end of the test

    def close(self) -> str:
        self.resp.close()
        return "".join(self.lines)


def deployed(srv: Server, app: str, field: str, value: int) -> bool:
    """Whether the app is healthy on a succeeded last deployment whose `field` is `value`
    (its `revision`, or `rollback_of`: a restore of that deployment)."""
    row = json.loads(read(srv, f"/apps/{app}") or "{}")
    dep = row.get("last_deployment") or {}
    return (
        row.get("health") == "healthy"
        and dep.get(field) == value
        and dep.get("result") == "succeeded"
    )


def settled_after(srv: Server, app: str, deployment: int) -> bool:
    """Whether the app is healthy on a succeeded deployment newer than `deployment`, with
    no deploy in flight (a rollback then takes its lock at once)."""
    row = json.loads(read(srv, f"/apps/{app}") or "{}")
    dep = row.get("last_deployment") or {}
    return (
        row.get("health") == "healthy"
        and int(dep.get("id") or 0) > deployment
        and dep.get("result") == "succeeded"
        and not row.get("reconciling")
    )


def runs(box: Sandbox, app: str, values: dict[str, str]) -> bool:
    """Whether the app's one running container was made with these values."""
    running = box.containers(app, all=False)
    if len(running) != 1:
        return False
    config = box.api.inspect_container(running[0]["Id"])["Config"]
    return config["Cmd"][-1].endswith(f"# {values['CMD_SECRET']}") and (
        f"FILE_SECRET={values['FILE_SECRET']}" in config["Env"]
    )


def test_a_planted_secret_appears_in_no_response_event_log_or_ledger_column(sandbox: Sandbox):
    box = sandbox
    web = box.name("sec")
    first, second = planted(), planted()
    write_secrets(box, first)
    box.manifest({web: app_spec(box)})
    srv = Server(box, env={"DIPLO_TOKEN": ADMIN, "DIPLO_VIEWER_TOKEN": VIEWER}).start()
    tap = EventTap(srv)
    try:
        wait_for(lambda: deployed(srv, web, "revision", 1), 120, "the first deploy")
        (c,) = box.containers(web, all=False)
        inspect = box.api.inspect_container(c["Id"])
        assert inspect["Config"]["Labels"]["token"] == f"tok-{first['LABEL_SECRET']}"
        assert f"API_KEY={first['ENV_SECRET']}" in inspect["Config"]["Env"]
        assert f"FILE_SECRET={first['FILE_SECRET']}" in inspect["Config"]["Env"]

        good = json.loads(read(srv, f"/apps/{web}"))["last_deployment"]["id"]

        # Every secret changes: a new release. The two files are two writes, and a loaded
        # machine may reload between them (a release with half the new values, then one
        # with all): the test waits for the container that holds them all.
        write_secrets(box, second)
        wait_for(
            lambda: runs(box, web, second) and settled_after(srv, web, good),
            120,
            "the deploy of the new secrets",
        )
        status, body = srv.post(
            f"/apps/{web}/rollback",
            ADMIN,
            json.dumps({"to": good}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 202, body
        wait_for(lambda: deployed(srv, web, "rollback_of", good), 120, "the rollback")
        (c,) = box.containers(web, all=False)
        inspect = box.api.inspect_container(c["Id"])  # the old release's values, unsealed
        assert inspect["Config"]["Cmd"][-1].endswith(f"# {first['CMD_SECRET']}")
        assert f"FILE_SECRET={first['FILE_SECRET']}" in inspect["Config"]["Env"]

        responses = [
            read(srv, path, token)
            for token in (VIEWER, ADMIN)
            for path in (
                "/apps",
                f"/apps/{web}",
                f"/apps/{web}/deployments",
                f"/apps/{web}/health",
                "/system/stats",
            )
        ]
        cli = [
            box.diplo(*args, check=True, env={"DIPLO_TOKEN": ADMIN}).stdout
            for args in (("status", "--json"), ("history", web, "--json"), ("history", web))
        ]
        diff = box.diplo("diff", "-f", str(box.dir / "diplo.yaml"), env={"DIPLO_TOKEN": ADMIN})
        cli += [diff.stdout, diff.stderr]
    finally:
        srv.stop()
        events = tap.close()
    with sqlite3.connect(box.home / "ledger.db") as db:
        ledger = "\n".join(db.iterdump())

    places = {
        "API responses": "\n".join(responses),
        "events": events,
        "serve's log": srv.output,
        "CLI output": "\n".join(cli),
        "ledger": ledger,
    }
    # The scan sees real material: the deploys, the rollback and the masked templates.
    assert "rollback" in events and "deploy" in srv.output.lower()
    assert "${LABEL_SECRET}" in places["API responses"] and "${CMD_SECRET}" in ledger
    for where, text in places.items():
        for name, value in [*first.items(), *second.items()]:
            assert value not in text, f"{name} appears in {where}"
