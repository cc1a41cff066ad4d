"""What the benchmark scripts share: a free port, waiting for a condition, and the end of
a run (the `diplo serve` it started stopped, its containers, networks and folder gone)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import docker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(check: Any, timeout: float, what: str, every: float = 0.02) -> float:
    """Seconds until `check()` is true (an exception counts as not yet); past `timeout`
    the benchmark stops with a message."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except Exception:
            pass
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def tear_down(
    serve: subprocess.Popen[Any],
    api: docker.APIClient,
    label: str,
    project: str,
    work: Path,
    apps: str = "",
) -> None:
    """Stop `serve` (SIGTERM, then SIGKILL after 15 s), remove the containers labelled
    `label`, the project's networks, the image tags its deploys kept for rollbacks (of
    the apps the glob `apps` names, by default those named after the project) and the
    run's folder."""
    serve.send_signal(signal.SIGTERM)
    try:
        serve.wait(15)
    except subprocess.TimeoutExpired:
        serve.kill()
    for c in api.containers(all=True, filters={"label": label}):
        api.remove_container(c["Id"], force=True)
    for n in api.networks(filters={"label": f"diplo.project={project}"}):
        api.remove_network(n["Id"])
    for image in api.images(filters={"reference": f"diplo-kept/{apps or project + '-*'}"}):
        for tag in image.get("RepoTags") or []:
            api.remove_image(tag)
    shutil.rmtree(work, ignore_errors=True)
