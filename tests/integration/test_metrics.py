"""Metrics of `diplo serve` against the real engine: a container that burns CPU, an idle
one, one that holds memory and one that is sent traffic, as the API shows them; and a
real Prometheus (Debian's package, which `make engine` installs) scraping `/metrics`
with the viewer token."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Sandbox, free_port, http_get, web_spec
from .test_serve import Server, wait_for

TOKEN = "metrics-test-admin-token-0123456789"
VIEWER = "metrics-test-viewer-token-0123456789"
MB = 1_000_000


def busybox(*command: str) -> dict[str, Any]:
    return {"image": "busybox:latest", "command": list(command), "init": True}


def read(server: Server, path: str, token: str | None = VIEWER) -> tuple[int, bytes]:
    req = urllib.request.Request(server.url + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def series(server: Server, app: str) -> dict[str, Any]:
    status, body = read(server, f"/apps/{app}/metrics?since=10m")
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def exposition(server: Server) -> dict[tuple[str, str], float]:
    """(metric name, app) -> value of each per-container sample of GET /metrics."""
    status, body = read(server, "/metrics")
    assert status == 200, body
    return {
        (s.name, s.labels["app"]): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if "app" in s.labels
    }


@pytest.fixture
def served(sandbox: Sandbox) -> Iterator[tuple[Server, dict[str, str]]]:
    """`diplo serve` sampling every second, with chosen tokens, over four apps."""
    apps = {
        "burn": sandbox.name("burn"),
        "idle": sandbox.name("idle"),
        "hog": sandbox.name("hog"),
        "web": sandbox.name("web"),
    }
    sandbox.home.mkdir(parents=True, exist_ok=True)
    with (sandbox.home / "config.yaml").open("a") as config:  # beside the test's proxy
        config.write("metrics:\n  interval: 1\n")
    sandbox.manifest(
        {
            apps["burn"]: busybox("sh", "-c", "while :; do :; done"),
            apps["idle"]: {**busybox("sleep", "3600"), "replicas": 2},
            # 48 MB in a tmpfs file: memory charged to the container's cgroup
            apps["hog"]: busybox(
                "sh", "-c", "head -c 48000000 /dev/zero > /dev/shm/fill && exec sleep 3600"
            ),
            apps["web"]: web_spec(sandbox),
        }
    )
    server = Server(sandbox, env={"DIPLO_TOKEN": TOKEN, "DIPLO_VIEWER_TOKEN": VIEWER})
    try:
        server.start()
        yield server, apps
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


def test_cpu_memory_and_network_of_real_containers(
    sandbox: Sandbox, served: tuple[Server, dict[str, str]]
):
    server, apps = served

    def sampled() -> bool:
        return all(len(series(server, a)["timestamps"]) >= 3 for a in apps.values())

    wait_for(sampled, 90, "three samples of every app")
    burn = series(server, apps["burn"])["metrics"]
    idle = series(server, apps["idle"])["metrics"]
    hog = series(server, apps["hog"])["metrics"]
    # a busy loop takes a core, less what the other processes of a shared machine take
    assert max(burn["cpu_percent_max"]) > 50, burn["cpu_percent"]
    assert max(idle["cpu_percent_max"]) < 5, idle["cpu_percent"]
    assert hog["memory_bytes"][-1] > 45 * MB, hog["memory_bytes"]
    assert idle["memory_bytes"][-1] < 10 * MB, idle["memory_bytes"]

    # traffic sent to the web app shows in its receive counter and rate
    before = exposition(server)[("diplo_container_network_receive_bytes_total", apps["web"])]
    port = sandbox.host_port(apps["web"])
    for _ in range(50):
        http_get(port, "/")

    def received() -> float:
        now = exposition(server)[("diplo_container_network_receive_bytes_total", apps["web"])]
        return now - before

    # 50 requests of at least 60 bytes each
    wait_for(lambda: received() > 50 * 60, 10, "the web app's rx bytes to grow")
    rates = series(server, apps["web"])["metrics"]["rx_bytes_per_second"]
    assert max(r or 0 for r in rates) > 0

    # the host figures, and the unauthenticated are turned away
    status, body = read(server, "/system/stats")
    assert status == 200
    host = json.loads(body)["host"]
    assert host["cores"] >= 1 and host["memory"]["total_bytes"] > 0
    assert host["docker_disk"]["total_bytes"] > 0
    assert read(server, "/metrics", token=None)[0] == 401
    top = json.loads(read(server, "/system/top")[1])
    assert {a["app"] for a in top["apps"]} >= set(apps.values())
    # the replicas of an app: one series each in /metrics, added up in its history
    (idle_row,) = (a for a in top["apps"] if a["app"] == apps["idle"])
    assert idle_row["replicas"] == 2
    status, body = read(server, "/metrics")
    replicas = {
        s.labels["replica"]
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == "diplo_container_memory_bytes" and s.labels["app"] == apps["idle"]
    }
    assert replicas == {"1", "2"}
    # the samples are cgroup reads: no stats API call was needed
    assert "metrics.stats_failed" not in server.output

    # the CLI asks the server
    env = {"DIPLO_TOKEN": TOKEN}
    shown = json.loads(sandbox.diplo("top", "--json", check=True, env=env).stdout)
    hog_row = next(a for a in shown["apps"] if a["app"] == apps["hog"])
    assert hog_row["memory_bytes"] > 45 * MB and hog_row["replicas"] == 1
    table = sandbox.diplo("metrics", apps["burn"], "--since", "5m", check=True, env=env).stdout
    assert table.startswith(f"{apps['burn']}: every 10s over the last 300s\n")


def test_a_real_prometheus_scrapes_diplo(
    sandbox: Sandbox, served: tuple[Server, dict[str, str]], tmp_path: Path
):
    server, apps = served
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: `make engine` installs Debian's package"
    token_file = tmp_path / "viewer-token"
    token_file.write_text(VIEWER)
    token_file.chmod(0o600)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: diplo\n"
        f"    authorization: {{credentials_file: {token_file}}}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("DIPLO_")},
    )
    try:
        query = urllib.parse.quote(f'diplo_container_memory_bytes{{app="{apps["hog"]}"}}')

        def scraped() -> list[Any]:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/v1/query?query={query}", timeout=2
                ) as resp:
                    result: list[Any] = json.loads(resp.read())["data"]["result"]
                    return result
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                return []

        def filled() -> list[Any]:  # a scrape can come before the hog has filled its 48 MB
            return [s for s in scraped() if float(s["value"][1]) > 45 * MB]

        (sample,) = wait_for(filled, 60, "Prometheus to scrape the hog's 48 MB")
        assert sample["metric"]["project"] == sandbox.project
        assert sample["metric"]["replica"] == "1" and sample["metric"]["job"] == "diplo"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as r:
            (target,) = json.loads(r.read())["data"]["activeTargets"]
        assert target["health"] == "up", target.get("lastError")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
