"""Benchmarks of health-gated deploys (issue 3), measured in one run:

1. Rollback gap: a broken release (its health check never passes) applied over a good
   one; time from the probe that declared it unhealthy to the good revision serving
   again, seen by a client polling every 20 ms. Target: under 5 s.
2. Cancel: `diplo cancel APP` from another process during a slow health wait; time until
   `diplo apply` has returned with the previous revision serving. Target: under 2 s.

Usage: .venv/bin/python benchmarks/rollback.py [--repeat 5]"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import yaml

ROOT = Path(__file__).resolve().parents[1]


class Bench:
    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="diplo-rollback-bench-"))
        self.env = {**os.environ, "DIPLO_HOME": str(self.work / "home")}
        self.project = f"rb{os.getpid() % 10000}"
        self.app = f"{self.project}-web"
        for release in ("good", "broken"):  # the poller tells the revisions apart
            (self.work / release).mkdir()
            (self.work / release / "index.html").write_text(f"{release}\n")

    def write(self, broken: bool, start_period: str = "0s") -> None:
        health: dict[str, Any] = {"http": {"path": "/", "port": 8080}, "interval": "200ms"}
        if broken:
            health = {
                "http": {"path": "/healthz", "port": 8080},
                "interval": "200ms",
                "retries": 3,
                "start_period": start_period,
            }
        spec = {
            "image": "busybox:latest",
            "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
            "init": True,
            "ports": ["8080"],
            "volumes": [f"{self.work / ('broken' if broken else 'good')}:/www:ro"],
            "labels": {"diplo-bench": "1"},
            "env": {"RELEASE": "broken" if broken else "good"},
            "health": health,
        }
        doc = {"project": self.project, "apps": {self.app: spec}}
        (self.work / "diplo.yaml").write_text(yaml.safe_dump(doc))

    def diplo(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "diplo.cli", *args],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def port(self) -> int:
        rows = json.loads(self.diplo("status", "--json").stdout)
        return int(rows[0]["ports"][0].rsplit("->")[0].rsplit(":")[1])


def poll(port: int, samples: list[tuple[float, bool]], stop: threading.Event) -> None:
    while not stop.is_set():
        at = time.time()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=0.5) as r:
                samples.append((at, r.read() == b"good\n"))
        except Exception:
            samples.append((at, False))
        time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    b = Bench()
    api = docker.APIClient(version="auto")
    results: dict[str, Any] = {}
    try:
        b.write(broken=False)
        assert b.diplo("apply").returncode == 0
        port = b.port()
        gaps = []
        for _ in range(args.repeat):
            b.write(broken=True)
            samples: list[tuple[float, bool]] = []
            stop = threading.Event()
            t = threading.Thread(target=poll, args=(port, samples, stop))
            t.start()
            proc = b.diplo("apply")
            returned = time.time()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                ok for at, ok in samples[:] if at > returned
            ):
                time.sleep(0.05)
            stop.set()
            t.join()
            assert proc.returncode == 1, proc.stderr
            probes = json.loads(b.diplo("health", b.app, "--json", "-n", "50").stdout)["probes"]
            detected = max(
                datetime.fromisoformat(p["at"]).timestamp()
                for p in probes
                if p["health"] == "unhealthy"
            )
            back = min(at for at, ok in samples if ok and at > detected)
            gaps.append(back - detected)
        results["rollback_gap_s"] = [round(g, 3) for g in gaps]
        print(
            f"rollback: good revision serving again {statistics.median(gaps):.2f}s (median; "
            f"max {max(gaps):.2f}s) after the failure was detected; target < 5 s"
        )

        cancels = []
        for _ in range(args.repeat):
            b.write(broken=True, start_period="10m")
            proc = subprocess.Popen(
                [sys.executable, "-m", "diplo.cli", "apply"],
                cwd=b.work,
                env=b.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                running = api.containers(filters={"label": f"diplo.app={b.app}"})
                if (
                    len(api.containers(all=True, filters={"label": f"diplo.app={b.app}"})) == 2
                    and running
                ):
                    break
                time.sleep(0.05)
            time.sleep(0.5)
            asked = time.monotonic()
            b.diplo("cancel", b.app)
            proc.wait(30)
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            cancels.append(time.monotonic() - asked)
            assert body == b"good\n", body
        results["cancel_s"] = [round(c, 3) for c in cancels]
        print(
            f"cancel: apply returned, previous revision serving {statistics.median(cancels):.2f}s "
            f"(median; max {max(cancels):.2f}s) after `diplo cancel`; target < 2 s "
            "(includes the cancel command's own start-up)"
        )
        results["targets"] = {
            "rollback_under_5s": max(gaps) < 5,
            "cancel_under_2s": max(cancels) < 2,
        }
        print(json.dumps(results["targets"]))
    finally:
        b.diplo("down", "--all", "--volumes")
        for c in api.containers(all=True, filters={"label": "diplo-bench=1"}):
            api.remove_container(c["Id"], force=True)
        shutil.rmtree(b.work, ignore_errors=True)
        out = ROOT / "benchmarks" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "rollback.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
