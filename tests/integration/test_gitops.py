"""`diplo serve --repo`: a host run from a git repository, against the real engine and
real local repositories (commits made by the tests)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import TEST_LABEL, Sandbox, http_get, web_spec
from .test_serve import Server, wait_for

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ann Dev",
    "GIT_AUTHOR_EMAIL": "ann@example.test",
    "GIT_COMMITTER_NAME": "Ann Dev",
    "GIT_COMMITTER_EMAIL": "ann@example.test",
}
SECRET = "hook-secret-for-the-tests-4c1e"


class Repo:
    """A local git repository whose deploy/diplo.yaml the test commits to."""

    def __init__(self, box: Sandbox, root: Path) -> None:
        self.box = box
        self.root = root
        root.mkdir()
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        proc = subprocess.run(
            ["git", *args],
            cwd=self.root,
            env={**os.environ, **GIT_ENV},
            capture_output=True,
            text=True,
            check=True,
        )
        return proc.stdout.strip()

    def commit(self, apps: dict[str, Any] | str, message: str) -> str:
        """Commit deploy/diplo.yaml (a dict of apps, or raw text); returns the SHA."""
        path = self.root / "deploy" / "diplo.yaml"
        path.parent.mkdir(exist_ok=True)
        if isinstance(apps, str):
            path.write_text(apps)
        else:
            doc = {"project": self.box.project, "apps": {}}
            for name, spec in apps.items():
                doc["apps"][name] = {**spec, "labels": {TEST_LABEL: self.box.id}}
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def repo(sandbox: Sandbox) -> Repo:
    return Repo(sandbox, sandbox.root / "repo")


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for srv in started:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def serve_repo(box: Sandbox, repo: Repo, servers: list[Server], interval: str = "1s") -> Server:
    srv = Server(
        box,
        ["--repo", str(repo.root), "--branch", "main", "--path", "deploy", "--interval", interval],
        env={"DIPLO_WEBHOOK_SECRET": SECRET},
    )
    servers.append(srv)
    return srv.start()


def serving(box: Sandbox, app: str, text: str) -> bool:
    try:
        return http_get(box.host_port(app), timeout=1) == text + "\n"
    except (AssertionError, ValueError):  # not answering yet, or no container yet
        return False


def deployed_commit(srv: Server, app: str) -> str | None:
    row = srv.app(app) or {}
    return ((row.get("revision") or {}).get("commit")) if row.get("health") == "healthy" else None


def test_commits_converge_and_a_bad_commit_is_refused(
    sandbox: Sandbox, repo: Repo, servers: list[Server]
):
    web = sandbox.name("web")
    first = repo.commit({web: web_spec(sandbox, "v1")}, "Add web")
    srv = serve_repo(sandbox, repo, servers)
    wait_for(lambda: deployed_commit(srv, web) == first, 40, "the first commit to deploy")
    assert serving(sandbox, web, "v1")
    row = srv.app(web)
    assert row["sync"]["status"] == "Synced" and row["source_revision"] == first

    second = repo.commit({web: web_spec(sandbox, "v2")}, "Serve v2")
    wait_for(lambda: deployed_commit(srv, web) == second, 30, "the new commit to deploy")
    assert serving(sandbox, web, "v2")

    bad = repo.commit("apps:\n  broken: [unclosed\n", "Break the manifest")
    listing = wait_for(
        lambda: (r := srv.get("/apps")) and not r["manifest"]["ok"] and r, 15, "the refusal"
    )
    refused = listing["sources"][0]["refused"]
    assert refused["sha"] == bad and bad[:10] in refused["error"]
    assert f"{bad[:10]}:deploy/diplo.yaml:" in listing["manifest"]["error"]  # file:line
    time.sleep(2)  # a few polls later: the last good commit still runs
    assert serving(sandbox, web, "v2")
    assert srv.app(web)["revision"]["commit"] == second
    shown = sandbox.diplo("status", check=True).stdout
    assert bad[:10] in shown and second[:10] in shown

    third = repo.commit({web: web_spec(sandbox, "v3")}, "Fix it")
    wait_for(lambda: deployed_commit(srv, web) == third, 30, "the fixed commit to deploy")
    assert serving(sandbox, web, "v3")

    history = json.loads(sandbox.diplo("history", web, "--json", check=True).stdout)
    assert [(d["commit_sha"], d["result"]) for d in history] == [
        (third, "succeeded"),
        (second, "succeeded"),
        (first, "succeeded"),
    ]
    assert history[0]["commit_subject"] == "Fix it"
    assert history[0]["commit_author"] == "Ann Dev <ann@example.test>"
    assert history[0]["source"] == str(repo.root)
    api = srv.get(f"/apps/{web}/deployments")["deployments"]
    assert [d["commit_sha"] for d in api] == [third, second, first]


def test_a_signed_webhook_deploys_the_push_and_a_bad_signature_is_rejected(
    sandbox: Sandbox, repo: Repo, servers: list[Server], capsys
):
    web = sandbox.name("web")
    repo.commit({web: web_spec(sandbox, "v1")}, "Add web")
    srv = serve_repo(sandbox, repo, servers, interval="10m")  # only the webhook can tell
    wait_for(lambda: serving(sandbox, web, "v1"), 40, "the first commit")
    second = repo.commit({web: web_spec(sandbox, "v2")}, "Serve v2")

    def push(branch: str, secret: str) -> tuple[int, Any]:
        body = json.dumps({"ref": f"refs/heads/{branch}", "after": second}).encode()
        sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers = {
            "X-GitHub-Event": "push",
            "X-Hub-Signature-256": sig,
            "Content-Type": "application/json",
        }
        return srv.post("/hooks/git", None, body, headers)

    status, answer = push("main", "wrong-secret")
    assert status == 401 and answer["title"] == "webhook rejected"
    status, answer = push("other", SECRET)
    assert status == 202 and answer["accepted"] is False
    time.sleep(1.5)
    assert serving(sandbox, web, "v1")

    sent = time.monotonic()
    status, answer = push("main", SECRET)
    assert status == 202 and answer["accepted"] is True
    wait_for(lambda: serving(sandbox, web, "v2"), 20, "the pushed commit to serve")
    took = time.monotonic() - sent
    with capsys.disabled():
        print(f"\n[webhook] pushed commit serving {took:.2f}s after the webhook")
    wait_for(lambda: deployed_commit(srv, web) == second, 10, "the revision to show")


def test_rollback_pins_the_app_until_resumed(sandbox: Sandbox, repo: Repo, servers: list[Server]):
    web = sandbox.name("web")
    first = repo.commit({web: web_spec(sandbox, "v1")}, "v1")
    srv = serve_repo(sandbox, repo, servers)
    wait_for(lambda: deployed_commit(srv, web) == first, 40, "v1")
    second = repo.commit({web: web_spec(sandbox, "v2")}, "v2")
    wait_for(lambda: deployed_commit(srv, web) == second, 30, "v2")

    out = sandbox.diplo("rollback", web, check=True).stdout  # through the running serve
    assert "rolling back to deployment 1" in out
    wait_for(lambda: serving(sandbox, web, "v1"), 30, "the rollback to serve v1")
    time.sleep(3)  # several polls of the branch, whose head is still v2
    assert serving(sandbox, web, "v1")
    row = srv.app(web)
    assert row["pinned"] == {"deployment": 1}
    assert row["sync"]["status"] == "OutOfSync" and row["revision"]["commit"] == first
    shown = sandbox.diplo("status", check=True).stdout
    assert "pinned to #1" in shown
    history = json.loads(sandbox.diplo("history", web, "--json", check=True).stdout)
    assert history[0]["rollback_of"] == 1 and history[0]["result"] == "succeeded"

    out = sandbox.diplo("sync", web, "--resume", check=True).stdout
    assert "following the source again" in out
    wait_for(lambda: serving(sandbox, web, "v2"), 30, "the branch head again")
    wait_for(lambda: (srv.app(web) or {}).get("pinned") is None, 10, "the pin to go")


def test_an_app_removed_from_the_repo_is_pruned(
    sandbox: Sandbox, repo: Repo, servers: list[Server]
):
    web, api = sandbox.name("web"), sandbox.name("api")
    repo.commit({web: web_spec(sandbox, "w"), api: web_spec(sandbox, "a")}, "two apps")
    srv = serve_repo(sandbox, repo, servers)
    wait_for(lambda: serving(sandbox, web, "w") and serving(sandbox, api, "a"), 40, "both")
    repo.commit({web: web_spec(sandbox, "w")}, "drop api")
    wait_for(lambda: not sandbox.containers(api), 30, "the removed app to be pruned")
    assert serving(sandbox, web, "w")
    wait_for(lambda: srv.app(api) is None, 10, "the API to forget it")


def test_apply_in_a_work_tree_records_the_commit_and_dirtiness(sandbox: Sandbox):
    web = sandbox.name("web")
    repo = Repo(sandbox, sandbox.dir / "tree")
    sha = repo.commit({web: web_spec(sandbox, "x")}, "Add web")
    manifest = str(repo.root / "deploy" / "diplo.yaml")
    sandbox.diplo("apply", "-f", manifest, check=True)
    (dep,) = json.loads(sandbox.diplo("history", web, "--json", check=True).stdout)
    assert dep["commit_sha"] == sha and dep["dirty"] is False
    assert dep["commit_subject"] == "Add web"
    path = repo.root / "deploy" / "diplo.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["apps"][web]["env"] = {"EDITED": "1"}  # uncommitted
    path.write_text(yaml.safe_dump(doc))
    sandbox.diplo("apply", "-f", manifest, check=True)
    newest = json.loads(sandbox.diplo("history", web, "--json", check=True).stdout)[0]
    assert newest["commit_sha"] == sha and newest["dirty"] is True


def test_rollback_without_serve_pins_until_resume(sandbox: Sandbox):
    web = sandbox.name("web")
    sandbox.manifest({web: web_spec(sandbox, "v1")})
    sandbox.diplo("apply", check=True)
    sandbox.manifest({web: web_spec(sandbox, "v2")})
    sandbox.diplo("apply", check=True)
    assert serving(sandbox, web, "v2")

    proc = sandbox.diplo("rollback", web, check=True)
    assert "rolling back to deployment 1" in proc.stdout
    assert serving(sandbox, web, "v1")
    again = sandbox.diplo("apply", check=True)  # the pin holds against the manifest
    assert "pinned to deployment 1" in again.stderr
    assert serving(sandbox, web, "v1") and len(sandbox.containers(web)) == 1

    bad = sandbox.diplo("rollback", web, "--to", "99")
    assert bad.returncode == 2 and "no deployment 99" in bad.stderr

    sandbox.diplo("sync", web, "--resume", check=True)
    assert serving(sandbox, web, "v2")
    deps = json.loads(sandbox.diplo("history", web, "--json", check=True).stdout)
    assert [d["rollback_of"] for d in deps] == [None, 1, None, None]


def test_a_hostile_repository_is_refused_and_the_last_good_commit_keeps_serving(
    sandbox: Sandbox, repo: Repo, servers: list[Server]
):
    web = sandbox.name("web")
    good = repo.commit({web: web_spec(sandbox, "v1")}, "Add web")
    srv = serve_repo(sandbox, repo, servers)
    wait_for(lambda: deployed_commit(srv, web) == good, 40, "the good commit to deploy")
    good_app = textwrap.indent(
        yaml.safe_dump({web: {**web_spec(sandbox, "v1"), "labels": {TEST_LABEL: sandbox.id}}}),
        "  ",
    )
    head = f"project: {sandbox.project}\napps:\n  pwn:\n    image: busybox:latest\n"
    bomb = "x-a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"x-{n}: &{n} [" + ", ".join([f"*{p}"] * 10) + "]\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    many = "".join(f"  a{i}: {{image: busybox}}\n" for i in range(10_000))
    escapes = [  # (name, manifest text, line of the refusal or None: any line)
        ("bind /", head + '    volumes: ["/:/host"]\n' + good_app, 5),
        ("docker socket", head + '    volumes: ["/var/run/docker.sock:/s"]\n' + good_app, 5),
        ("context ../..", head + "    build: {context: ../..}\n" + good_app, 5),
        ("env_file", head + "    env_file: /etc/shadow\n" + good_app, 5),
        ("DIPLO_TOKEN", head + '    labels: {leak: "${DIPLO_TOKEN}"}\n' + good_app, 5),
        ("alias bomb", bomb + f"project: {sandbox.project}\napps:\n" + good_app, None),
        ("recursive anchor", "x-loop: &l [*l]\napps:\n" + good_app, 1),
        ("10,000 apps", f"project: {sandbox.project}\napps:\n" + many + good_app, 503),
    ]
    for name, text, line in escapes:
        sha = repo.commit(text, f"Try: {name}")
        where = f"{sha[:10]}:deploy/diplo.yaml:{line if line is not None else ''}"
        listing = wait_for(
            lambda sha=sha: (
                (r := srv.get("/apps"))
                and (r["sources"][0]["refused"] or {}).get("sha") == sha
                and r
            ),
            20,
            f"the refusal of {name}",
        )
        assert where in listing["manifest"]["error"], (name, listing["manifest"]["error"])
        assert SECRET not in json.dumps(listing)
        assert serving(sandbox, web, "v1"), name
        assert srv.app(web)["revision"]["commit"] == good, name
    assert not any(a["app"] == "pwn" for a in srv.get("/apps")["apps"])
