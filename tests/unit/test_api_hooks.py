"""The GitOps routes of the API: `POST /hooks/git` (push webhooks, verified with the
secret of their provider, that make the controller fetch now) and a rollback with nothing
to restore."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog.testing
from fastapi.testclient import TestClient

from diplo.api.app import asgi_app
from diplo.controller.controller import Controller
from diplo.controller.sources import FolderSource, GitSource, Source
from diplo.controller.workqueue import RELOAD
from diplo.ledger import Ledger
from diplo.ops.context import Context
from diplo.runtime.memory import MemoryRuntime
from diplo.webhooks import WebhookSecrets, secrets_from_env

from .apiworld import AUTH, HOST, build_world, loopback

SECRET = "hook-s3cret-of-the-tests-9d2b"
PROBLEM = "application/problem+json"


def push(ref: str = "refs/heads/main") -> bytes:
    return json.dumps({"ref": ref, "before": "b" * 40, "after": "a" * 40}).encode()


def github(body: bytes, event: str = "push", secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-GitHub-Event": event,
        "X-Hub-Signature-256": f"sha256={digest}",
        "Content-Type": "application/json",
    }


class Hooks:
    def __init__(self, root: Path, sources: list[Source], secrets: WebhookSecrets | None) -> None:
        self.ledger = Ledger(root / "home" / "ledger.db")
        ctx = Context(_runtime=MemoryRuntime(), _ledger=self.ledger)
        self.controller = Controller(sources, ctx)
        api = asgi_app(self.controller, loopback(), webhook_secrets=secrets)
        self.client = TestClient(api, base_url=f"http://{HOST}")

    def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.client.post("/hooks/git", content=body, headers=headers)

    def queued(self) -> list[str]:
        keys = []
        while (key := self.controller.queue.get(timeout=0)) is not None:
            keys.append(key)
            self.controller.queue.done(key)
        return keys


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    made: list[Hooks] = []

    def hooks(
        *,
        git: bool = True,
        folder: bool = False,
        secret: str | None = SECRET,
        env: dict[str, str] | None = None,
    ) -> Hooks:
        """With `env`, the secrets `diplo serve` reads from that environment; else one
        shared `secret` (or none)."""
        sources: list[Source] = []
        if git:  # never fetched here: the hook only queues a poll
            url = "https://git.example.test/shop/deploy.git"
            sources.append(GitSource(url, "main", "deploy", tmp_path / "home"))
        if folder:
            (tmp_path / "m").mkdir(exist_ok=True)
            sources.append(FolderSource(tmp_path / "m"))
        secrets = None if secret is None else WebhookSecrets.shared(secret)
        h = Hooks(tmp_path, sources, secrets_from_env(env) if env is not None else secrets)
        made.append(h)
        return h

    yield hooks
    for h in made:
        h.ledger.close()


def problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    return resp.json()


@pytest.mark.parametrize(
    "setup", [{"secret": None}, {"git": False, "folder": True}], ids=["no-secret", "no-repo"]
)
def test_webhooks_not_configured(make: Any, setup: dict[str, Any]):
    hooks = make(**setup)
    body = push()
    resp = hooks.post(body, github(body))
    assert "DIPLO_WEBHOOK_SECRET" in problem(resp, 404)["detail"]
    assert hooks.queued() == []


@pytest.mark.parametrize(
    "headers",
    [
        github(push(), secret="wrong"),
        github(push() + b" "),  # signed another body
        {"X-GitHub-Event": "push"},  # no signature at all
        {"X-Gitlab-Token": "wrong", "X-Gitlab-Event": "Push Hook"},
    ],
    ids=["wrong-secret", "tampered", "unsigned", "gitlab-wrong-token"],
)
def test_a_bad_signature_is_rejected_and_nothing_is_fetched(make: Any, headers: dict[str, str]):
    hooks = make()
    resp = hooks.post(push(), headers)
    body = problem(resp, 401)
    assert body["title"] == "webhook rejected"
    assert hooks.queued() == []


def test_a_push_to_the_watched_branch_fetches_now(make: Any):
    hooks = make()
    body = push()
    resp = hooks.post(body, github(body))
    assert resp.status_code == 202
    assert resp.json() == {
        "accepted": True,
        "detail": "fetching",
        "provider": "github",
        "branch": "main",
    }
    assert hooks.queued() == [RELOAD]


def test_a_gitlab_push_with_its_token(make: Any):
    hooks = make(folder=True)  # a folder beside the repository
    resp = hooks.post(push(), {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Push Hook"})
    assert resp.status_code == 202
    assert resp.json()["accepted"] is True and resp.json()["provider"] == "gitlab"
    assert hooks.queued() == [RELOAD]


def test_a_push_to_another_branch_is_ignored(make: Any):
    hooks = make()
    body = push("refs/heads/feature/x")
    resp = hooks.post(body, github(body))
    assert resp.status_code == 202
    assert resp.json() == {
        "accepted": False,
        "detail": "ignored: a push to feature/x, not a watched branch",
        "provider": "github",
        "branch": "feature/x",
    }
    assert hooks.queued() == []


@pytest.mark.parametrize(
    ("event", "body", "detail"),
    [
        ("ping", b'{"zen": "Keep it logically awesome."}', "ignored: ping"),
        ("push", push("refs/tags/v1.0"), "ignored: push"),  # a tag, not a branch
    ],
    ids=["ping", "tag"],
)
def test_other_events_are_ignored(make: Any, event: str, body: bytes, detail: str):
    hooks = make()
    resp = hooks.post(body, github(body, event=event))
    assert resp.status_code == 202
    assert resp.json()["accepted"] is False and resp.json()["detail"] == detail
    assert hooks.queued() == []


def test_a_signed_body_that_is_not_json_is_a_400(make: Any):
    hooks = make()
    body = b"not json"
    assert problem(hooks.post(body, github(body)), 400)["title"] == "unreadable webhook"
    assert hooks.queued() == []


def test_a_rollback_with_nothing_to_restore_is_a_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    world = build_world(tmp_path)
    try:
        resp = world.client().post("/apps/web/rollback", headers=AUTH)
        body = problem(resp, 409)
        assert body["title"] == "cannot roll back"
        assert "no earlier successful deployment" in body["detail"]
        assert world.ledger.pins() == {}
    finally:
        world.ledger.close()


# --- a secret per provider ------------------------------------------------------------------

OWN = {
    "DIPLO_WEBHOOK_SECRET_GITHUB": "github-secret-0f3a9c-11d8e2",
    "DIPLO_WEBHOOK_SECRET_GITEA": "gitea-secret-7b21de-3a90cf",
    "DIPLO_WEBHOOK_SECRET_GITLAB": "gitlab-token-5c8e14-b61f07",
}
GITHUB, GITEA, GITLAB = OWN.values()


def gitea(body: bytes, secret: str) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Gitea-Event": "push", "X-Gitea-Signature": digest}


def gitlab(token: str) -> dict[str, str]:
    return {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": token}


def test_each_provider_is_accepted_with_its_own_secret_and_refused_with_another(make: Any):
    hooks = make(env=OWN)
    body = push()
    for headers, provider in [
        (github(body, secret=GITHUB), "github"),
        (gitea(body, GITEA), "gitea"),
        (gitlab(GITLAB), "gitlab"),
    ]:
        resp = hooks.post(body, headers)
        assert resp.status_code == 202 and resp.json()["provider"] == provider
    assert hooks.queued() == [RELOAD]
    # GitLab's token, which crosses the network in clear, signs nothing else; nor the others'
    for headers in [
        github(body, secret=GITLAB),
        github(body, secret=GITEA),
        gitea(body, GITLAB),
        gitea(body, GITHUB),
        gitlab(GITHUB),
        gitlab(GITEA),
    ]:
        assert problem(hooks.post(body, headers), 401)["title"] == "webhook rejected"
    assert hooks.queued() == []


def test_the_shared_secret_serves_the_providers_without_their_own(make: Any):
    hooks = make(env={"DIPLO_WEBHOOK_SECRET": SECRET, "DIPLO_WEBHOOK_SECRET_GITLAB": GITLAB})
    body = push()
    assert hooks.post(body, github(body)).status_code == 202
    assert hooks.post(body, gitea(body, SECRET)).status_code == 202
    assert hooks.post(body, gitlab(GITLAB)).status_code == 202
    problem(hooks.post(body, gitlab(SECRET)), 401)  # GitLab has its own
    assert hooks.queued() == [RELOAD]


def test_a_provider_without_a_secret_is_a_401_naming_its_variable(make: Any):
    hooks = make(env={"DIPLO_WEBHOOK_SECRET_GITHUB": GITHUB})
    body = push()
    detail = problem(hooks.post(body, gitlab(GITHUB)), 401)["detail"]
    assert "no webhook secret is configured for GitLab" in detail
    assert "set DIPLO_WEBHOOK_SECRET_GITLAB" in detail
    detail = problem(hooks.post(body, gitea(body, GITHUB)), 401)["detail"]
    assert "set DIPLO_WEBHOOK_SECRET_GITEA" in detail
    assert hooks.queued() == []
    assert hooks.post(body, github(body, secret=GITHUB)).status_code == 202


def test_no_secret_for_any_provider_is_not_configured(make: Any):
    hooks = make(env={"DIPLO_WEBHOOK_SECRET": "", "DIPLO_WEBHOOK_SECRET_GITLAB": ""})
    detail = problem(hooks.post(push(), gitlab("")), 404)["detail"]
    assert "DIPLO_WEBHOOK_SECRET_GITLAB" in detail


def test_webhook_secrets_never_appear_in_answers_logs_or_events(
    make: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Every answer the hook route gives, its logs, and the events of the reload it asks
    for (git's error included: git runs with Diplo's environment minus its secrets)."""
    for name, value in OWN.items():
        monkeypatch.setenv(name, value)
    hooks = make(env=OWN)
    missing = GitSource(f"file://{tmp_path}/no-such-repo", "main", "", tmp_path / "home")
    hooks.controller.sources[:] = [missing]  # fails at once, with no network
    events = hooks.controller.bus.subscribe()
    body, seen = push(), []
    with structlog.testing.capture_logs() as logs:
        for headers in [
            github(body, secret=GITHUB),  # accepted
            gitlab(GITLAB),
            github(body, secret="wrong"),  # rejected: the expected signature is not told
            gitea(body, "wrong"),
            gitlab("wrong"),
            gitlab(GITLAB[:-1]),
            {"X-GitHub-Event": "push"},
        ]:
            seen.append(hooks.post(body, headers).text)
        seen.append(hooks.post(b"[]", github(b"[]", secret=GITHUB)).text)  # a 400
        hooks.controller.reload()  # what the accepted pushes asked for
    seen.append(hooks.client.get("/openapi.json").text)
    seen += [json.dumps(e, default=str) for e in logs]
    published = []
    while not events.empty():
        published.append(events.get_nowait())
    assert any(e.kind == "source.unreachable" for e in published), published
    seen += [repr(e) for e in published]
    assert len(logs) >= 2  # the accepted pushes and a rejection were logged
    for text in seen:
        for value in OWN.values():
            assert value not in text and value[:-1] not in text
