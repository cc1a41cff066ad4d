"""Every manifest under examples/ is applied as a user would, and its endpoints answer.

The examples have fixed project and app names, so this test uses the files in place and
removes only what it created (a user's own `make run` deployment of them is left as is)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from .conftest import free_port, http_get
from .test_proxy import eventually, https_get

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PROJECTS = ["hello", "static-site", "counter", "build-local", "domains"]


def _networks(api: docker.APIClient) -> set[str]:
    return {n["Name"] for n in api.networks(names=[f"diplo-{p}" for p in PROJECTS])}


def _owned(api: docker.APIClient) -> tuple[set[str], set[str]]:
    filters = {"label": "diplo.project"}
    containers = {
        c["Id"]
        for c in api.containers(all=True, filters=filters)
        if c["Labels"]["diplo.project"] in PROJECTS
    }
    volumes = {
        v["Name"]
        for v in api.volumes(filters=filters).get("Volumes") or []
        if v["Labels"].get("diplo.project") in PROJECTS
    }
    return containers, volumes


def _kept_tags(api: docker.APIClient) -> set[str]:
    """The tags deploys keep for rollbacks (`diplo-kept/APP:dN-LEDGER`), and those the examples
    build under their project's name (`build-local/api:dev`)."""
    tags = {t for img in api.images() for t in img.get("RepoTags") or []}
    return {t for t in tags if t.startswith("diplo-kept/") or t.split("/")[0] in PROJECTS}


@pytest.fixture
def examples_env(
    tmp_path: Path, docker_api: docker.APIClient, proxy_image: None
) -> Iterator[dict[str, str]]:
    before_c, before_v = _owned(docker_api)
    before_n = _networks(docker_api)
    before_t = _kept_tags(docker_api)
    env = {**os.environ, "DIPLO_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    # The domains example's proxy: a name and ports of this test's own, so that a proxy
    # this host already runs (on 80/443) is left alone.
    proxy = f"diplo-proxy-ex-{uuid.uuid4().hex[:6]}"
    env["TEST_PROXY_HTTPS"] = str(free_port())
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.yaml").write_text(
        f"proxy:\n  name: {proxy}\n  http_port: {free_port()}\n"
        f"  https_port: {env['TEST_PROXY_HTTPS']}\n"
    )
    try:
        yield env
    finally:
        for name, remove in (
            (proxy, docker_api.remove_container),
            (f"{proxy}-data", docker_api.remove_volume),
        ):
            with contextlib.suppress(docker.errors.NotFound):
                remove(name, force=True)
        after_c, after_v = _owned(docker_api)
        for cid in after_c - before_c:
            with contextlib.suppress(docker.errors.NotFound):
                docker_api.remove_container(cid, force=True)
        for name in after_v - before_v:
            with contextlib.suppress(docker.errors.NotFound):
                docker_api.remove_volume(name, force=True)
        for name in _networks(docker_api) - before_n:  # the projects' networks it made
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                docker_api.remove_network(name)
        for tag in _kept_tags(docker_api) - before_t:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                docker_api.remove_image(tag)


def diplo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "diplo.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"diplo {args}: {proc.stdout}\n{proc.stderr}"
    return proc


def ports(env: dict[str, str]) -> dict[str, int]:
    rows = json.loads(diplo(env, "status", "--json").stdout)
    return {r["app"]: int(r["ports"][0].rsplit("->")[0].rsplit(":")[1]) for r in rows if r["ports"]}


def test_all_examples_serve_and_reapply_is_a_no_op(examples_env: dict[str, str]):
    env = examples_env
    out = diplo(env, "apply", "-f", "examples")
    assert "converged: 7 apps" in out.stdout or "in sync" in out.stdout
    p = ports(env)
    assert set(p) == {"hello", "docs", "web", "api"}  # store publishes no port

    assert "Hello from Diplo" in http_get(p["hello"])
    assert "<h1>Project docs</h1>" in http_get(p["docs"])
    assert "404: no such page" in http_get(p["docs"], "/missing.html", status=404)
    first = int(http_get(p["web"], "/cgi-bin/hit").split(":")[1])
    second = int(http_get(p["web"], "/cgi-bin/hit").split(":")[1])
    assert second == first + 1  # web reaches store by name; store keeps the count
    assert json.loads(http_get(p["api"], "/cgi-bin/health")) == {
        "status": "ok",
        "log_level": "info",
    }
    assert http_get(p["api"], "/version.txt").strip() == "1.0"

    ca = diplo(env, "proxy", "ca").stdout
    port = int(env["TEST_PROXY_HTTPS"])
    for domain, text in (("shop.localhost", "The shop"), ("blog.localhost", "The blog")):
        status, body = eventually(lambda d=domain: https_get(port, d, ca=ca))
        assert status == 200 and text in body
    who = {https_get(port, "www.shop.localhost", "/cgi-bin/who", ca=ca)[1] for _ in range(12)}
    assert len(who) == 2  # both replicas serve

    again = diplo(env, "apply", "-f", "examples")
    assert "in sync: 7 apps, nothing to do" in again.stdout
    assert ports(env) == p


def test_main_job_applies_hello_and_prints_status(examples_env: dict[str, str]):
    env = examples_env
    diplo(env, "apply", "-f", "examples/hello/diplo.yaml")
    status = diplo(env, "status").stdout
    assert "hello" in status and "running" in status and "1/1" in status
    assert "Hello from Diplo" in http_get(ports(env)["hello"])


def test_examples_are_in_the_schema_folder_index():
    # every example folder holds a diplo.yaml, and each is listed in PROJECTS above
    found = sorted(p.parent.name for p in EXAMPLES.glob("*/diplo.yaml"))
    assert found == sorted(PROJECTS)
