"""Benchmarks of `diplo serve` (issue 4), all measured in one run:

1. GET /apps latency with 100 apps, 50 concurrent clients for 20 s (wrk): p50, p99,
   errors. Target: p99 < 20 ms, 0 errors. Then the same load on a floor measured in the
   same run: uvicorn answering the same bytes from a constant.
2. Drift: time from `docker rm -f` of an app's container to the app healthy again.
3. Edit: time from saving a manifest change to the changed app healthy (as GET /apps
   shows it), against the engine alone replacing the same container, measured here:
   stop the running one, create + start the new one, first answer (target: that plus
   under 0.5 s of Diplo's own).

Usage: .venv/bin/python benchmarks/serve.py [--apps 100] [--seconds 20] [--clients 50]
Needs a Docker engine, busybox:latest (make engine) and wrk (apt-get install wrk)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import docker
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTTPD = ["httpd", "-f", "-p", "8080", "-h", "/tmp"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def wait(check: Any, timeout: float, what: str, every: float = 0.02) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except Exception:
            pass
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def manifest(path: Path, project: str, n: int, changed: dict[str, str] | None = None) -> list[str]:
    """Write N apps; `changed` maps app names to an env value (kept across edits, so that
    each edit changes exactly one app)."""
    apps: dict[str, Any] = {}
    names = [f"{project}-a{i:03d}" for i in range(n)]
    for name in names:
        spec: dict[str, Any] = {
            "image": "busybox:latest",
            "command": HTTPD,
            "init": True,
            "ports": ["8080"],
            "labels": {"diplo-bench": "1"},
            "health": {"tcp": {"port": 8080}},
        }
        if changed and name in changed:
            spec["env"] = {"BENCH": changed[name]}
        apps[name] = spec
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"project": project, "apps": apps}, sort_keys=False))
    tmp.replace(path)  # an atomic save, as editors do
    return names


def wrk(url: str, seconds: int, clients: int) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{clients}", f"-d{seconds}s", "--latency", "--timeout", "5s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    return {
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "requests": requests,
        "errors": errors,
        "rps": requests / seconds,
    }


def get_bytes(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bytes(resp.read())


FLOOR_APP = """
import sys, uvicorn
body = open(sys.argv[1], "rb").read()
headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
"""


def static_floor(body: bytes, seconds: int, clients: int) -> dict[str, Any]:
    """The same load on the least a Python server can do: uvicorn (same loop and parser
    as diplo serve) answering a constant. This machine's noise shows in its p99 too."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        f.write(body)
        f.flush()
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-c", FLOOR_APP, f.name, str(port)])
        try:
            wait(lambda: get_bytes(f"http://127.0.0.1:{port}/") == body, 30, "the floor server")
            return wrk(f"http://127.0.0.1:{port}/apps", seconds, clients)
        finally:
            proc.terminate()
            proc.wait(10)


def bare_replace(api: docker.APIClient, repeat: int = 5) -> tuple[float, float]:
    """The engine's part of an update, without Diplo: stop the running container, then
    create + start its replacement and wait until it answers. Returns the medians of
    (start-to-answer, stop + start-to-answer)."""

    def run() -> tuple[str, int]:
        c = api.create_container(
            "busybox:latest",
            HTTPD,
            labels={"diplo-bench": "1"},
            ports=[8080],
            host_config=api.create_host_config(port_bindings={8080: None}, init=True),
        )
        api.start(c["Id"])
        info = api.inspect_container(c["Id"])
        port = int(info["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
        wait(
            lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True,
            30,
            "bare httpd",
            every=0.005,
        )
        return c["Id"], port

    starts, replaces = [], []
    for _ in range(repeat):
        old, _ = run()
        start = time.monotonic()
        api.stop(old, timeout=10)
        stopped = time.monotonic()
        new, _ = run()
        done = time.monotonic()
        starts.append(done - stopped)
        replaces.append(done - start)
        for cid in (old, new):
            api.remove_container(cid, force=True)
    return statistics.median(starts), statistics.median(replaces)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--apps", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    api = docker.APIClient(version="auto")
    work = Path(tempfile.mkdtemp(prefix="diplo-serve-bench-"))
    folder, home = work / "manifests", work / "home"
    folder.mkdir()
    env = {**os.environ, "DIPLO_HOME": str(home)}
    project = f"sb{os.getpid() % 10000}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    names = manifest(folder / "diplo.yaml", project, args.apps)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "diplo.cli",
            "serve",
            "--manifests",
            str(folder),
            "--listen",
            f"127.0.0.1:{port}",
            "--workers",
            "8",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    results: dict[str, Any] = {"apps": args.apps}
    try:
        took = wait(
            lambda: sum(a["health"] == "healthy" for a in get(url + "/apps")["apps"]) == args.apps,
            600,
            "all apps healthy",
            every=0.5,
        )
        results["initial_converge_s"] = round(took, 2)
        print(f"{args.apps} apps converged and healthy under diplo serve in {took:.1f}s")

        results["get_apps"] = wrk(url + "/apps", args.seconds, args.clients)
        g = results["get_apps"]
        print(
            f"GET /apps, {args.clients} clients, {args.seconds}s: p50 {g['p50_ms']:.2f} ms, "
            f"p99 {g['p99_ms']:.2f} ms, {g['rps']:.0f} req/s, {g['errors']} errors"
        )
        floor = static_floor(get_bytes(url + "/apps"), args.seconds, args.clients)
        results["static_floor"] = floor
        print(
            f"  floor: uvicorn serving the same bytes from a constant, same load: p50 "
            f"{floor['p50_ms']:.2f} ms, p99 {floor['p99_ms']:.2f} ms, {floor['rps']:.0f} req/s "
            f"(Diplo's p99 is {g['p99_ms'] / floor['p99_ms']:.2f}x the floor's)"
        )

        drift = []
        for i in range(args.repeat):
            app = names[i]
            (c,) = api.containers(filters={"label": f"diplo.app={app}"})
            api.remove_container(c["Id"], force=True)
            start = time.monotonic()
            wait(
                lambda a=app: (
                    api.containers(filters={"label": f"diplo.app={a}"})
                    and get(f"{url}/apps/{a}")["health"] == "healthy"
                    and get(f"{url}/apps/{a}")["running"] == 1
                ),
                60,
                "drift healed",
            )
            drift.append(time.monotonic() - start)
        results["drift_heal_s"] = [round(d, 3) for d in drift]
        print(
            f"docker rm -f -> healthy again: median {statistics.median(drift):.2f}s "
            f"(runs: {', '.join(f'{d:.2f}' for d in drift)})"
        )

        bare_start, bare = bare_replace(api, args.repeat)
        edits = []
        edited: dict[str, str] = {}
        for i in range(args.repeat):
            app = names[-1 - i]
            before = get(f"{url}/apps/{app}")["last_deployment"]["revision"]
            start = time.monotonic()
            edited[app] = str(i)
            manifest(folder / "diplo.yaml", project, args.apps, changed=edited)
            wait(
                lambda a=app, b=before: (
                    (r := get(f"{url}/apps/{a}"))["last_deployment"]["revision"] > b
                    and r["last_deployment"]["result"] == "succeeded"
                    and r["health"] == "healthy"
                ),
                60,
                "edit deployed",
            )
            edits.append(time.monotonic() - start)
        results["edit_to_healthy_s"] = [round(e, 3) for e in edits]
        results["bare_start_s"] = round(bare_start, 3)
        results["bare_replace_s"] = round(bare, 3)
        overhead = statistics.median(edits) - bare
        print(
            f"manifest save -> changed app healthy: median {statistics.median(edits):.2f}s; "
            f"the engine alone replaces such a container (stop the old one, create + start "
            f"the new, first answer) in {bare:.2f}s here (start-to-answer {bare_start:.2f}s), "
            f"so Diplo's own share is {overhead:.2f}s (target < 0.5 s; includes the 0.1 s "
            "save debounce and showing the result in GET /apps)"
        )
        results["targets"] = {
            "get_apps_p99_under_20ms": g["p99_ms"] < 20 and g["errors"] == 0,
            "edit_overhead_under_0_5s": overhead < 0.5,
        }
        print(json.dumps(results["targets"]))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        for c in api.containers(all=True, filters={"label": "diplo-bench=1"}):
            api.remove_container(c["Id"], force=True)
        for n in api.networks(filters={"label": f"diplo.project={project}"}):
            api.remove_network(n["Id"])
        shutil.rmtree(work, ignore_errors=True)
        out = ROOT / "benchmarks" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "serve.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
