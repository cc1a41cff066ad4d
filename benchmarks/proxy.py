"""Benchmarks of zero-downtime deploys through the proxy (issue 11), measured in one run:

1. Redeploys under load: 20 consecutive redeploys (each a new release) of a 2-replica
   app with a domain (`start-first` through Caddy, over HTTPS), while N clients ask it
   over and over on new connections. Printed: requests, failed requests, p50/p99.
   Baseline, the same clients against a 1-replica app on a host port during 20
   `recreate` deploys (which stop the old container before the new one starts).
2. The proxy's added latency: requests/s and p50/p99 of the same small page at C
   concurrent keep-alive connections (wrk), through Caddy over HTTPS and straight to the
   container's port; printed as ratios.

Everything runs in a temporary DIPLO_HOME with its own proxy on free ports, and is removed
at the end. Usage: .venv/bin/python benchmarks/proxy.py [--redeploys 20] [--clients 4]"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import yaml
from common import free_port

ROOT = Path(__file__).resolve().parents[1]
DIPLO = [sys.executable, "-m", "diplo.cli"]


class Bench:
    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="diplo-proxy-bench-"))
        self.id = uuid.uuid4().hex[:6]
        self.home = self.work / "home"
        self.home.mkdir()
        self.proxy = f"diplo-proxy-bench-{self.id}"
        self.http_port, self.https_port = free_port(), free_port()
        (self.home / "config.yaml").write_text(
            f"proxy:\n  name: {self.proxy}\n  http_port: {self.http_port}\n"
            f"  https_port: {self.https_port}\n"
        )
        self.env = {**os.environ, "DIPLO_HOME": str(self.home), "NO_COLOR": "1"}
        self.project = f"pb{self.id}"
        self.domain = f"bench-{self.id}.localhost"
        (self.work / "www").mkdir()
        (self.work / "www" / "index.html").write_text("ok\n")

    def manifest(self, release: int, *, proxied: bool) -> Path:
        spec: dict[str, Any] = {
            "image": "busybox:latest",
            "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
            "init": True,
            "volumes": [f"{self.work / 'www'}:/www:ro"],
            "env": {"RELEASE": str(release)},  # a new release each time: a new container
            "health": {"http": {"path": "/", "port": 8080}, "interval": "200ms"},
        }
        if proxied:
            spec |= {"domains": [self.domain], "http_port": 8080, "tls": "internal"}
            spec |= {"replicas": 2, "deploy": {"drain": "5s"}}
        else:
            spec |= {"ports": ["8080"], "deploy": {"strategy": "recreate"}}
        name = "web" if proxied else "direct"
        path = self.work / f"{name}.yaml"
        doc = {"project": self.project, "apps": {name: spec}}
        path.write_text(yaml.safe_dump(doc))
        return path

    def diplo(self, *args: str) -> str:
        proc = subprocess.run(
            [*DIPLO, *args], env=self.env, capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            raise SystemExit(f"diplo {' '.join(args)}: {proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def direct_port(self) -> int:
        api = docker.APIClient()
        (c,) = api.containers(
            filters={"label": [f"diplo.project={self.project}", "diplo.app=direct"]}
        )
        return int(next(p["PublicPort"] for p in c["Ports"] if p.get("PublicPort")))

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            subprocess.run(
                [*DIPLO, "down", "--all", "--volumes"],
                env=self.env,
                capture_output=True,
                timeout=300,
            )
        api = docker.APIClient()
        for name, remove in (
            (self.proxy, api.remove_container),
            (f"{self.proxy}-data", api.remove_volume),
        ):
            with contextlib.suppress(docker.errors.NotFound):
                remove(name, force=True)
        shutil.rmtree(self.work, ignore_errors=True)


def ask(port: int, host: str, ca: str | None) -> None:
    """One GET on a new connection; raises unless it is a 200."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        sock: socket.socket = raw
        if ca is not None:
            sock = ssl.create_default_context(cadata=ca).wrap_socket(raw, server_hostname=host)
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(64)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head[:20].decode(errors="replace"))


def hammer(port: int, host: str, ca: str | None, clients: int, during: Any) -> dict[str, Any]:
    """`clients` threads asking until `during()` returns; their outcome."""
    stop = threading.Event()
    lat: list[float] = []
    failures: list[str] = []

    def client() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                ask(port, host, ca)
                lat.append(time.perf_counter() - t)
            except Exception as exc:
                failures.append(repr(exc)[:80])
                time.sleep(0.01)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    during()
    took = time.perf_counter() - began
    stop.set()
    for t in threads:
        t.join(10)
    lat.sort()
    return {
        "requests": len(lat) + len(failures),
        "failed": len(failures),
        "examples": sorted(set(failures))[:3],
        "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))] if lat else float("nan"),
        "seconds": took,
    }


def table(head: list[str], rows: list[tuple[str, Any]], cells: Any) -> None:
    print("| " + " | ".join(head) + " |")
    print("|---" + "|---:" * (len(head) - 1) + "|")
    for name, row in rows:
        print("| " + " | ".join([name, *map(str, cells(row))]) + " |")


def wrk(url: str, connections: int, seconds: int, host: str | None = None) -> dict[str, float]:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if host:
        args[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rps = float(
        next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec"))
    )

    def pct(label: str) -> float:
        """wrk's latency percentile in ms (it prints us, ms or s)."""
        text = next(line.split()[1] for line in out.splitlines() if line.strip().startswith(label))
        for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
            if text.endswith(unit):
                return float(text.removesuffix(unit)) * scale
        return float(text)

    return {"rps": rps, "p50_ms": pct("50%"), "p99_ms": pct("99%")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redeploys", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    b = Bench()
    try:
        b.diplo("apply", "-f", str(b.manifest(0, proxied=True)))
        b.diplo("apply", "-f", str(b.manifest(0, proxied=False)))
        ca = b.diplo("proxy", "ca")
        release = iter(range(1, 10_000))

        def redeploys(proxied: bool) -> Any:
            return lambda: [
                b.diplo("apply", "-f", str(b.manifest(next(release), proxied=proxied)))
                for _ in range(args.redeploys)
            ]

        proxied = hammer(b.https_port, b.domain, ca, args.clients, redeploys(True))
        direct = hammer(
            b.direct_port(),
            "localhost",
            None,
            args.clients,
            lambda: [
                (b.diplo("apply", "-f", str(b.manifest(next(release), proxied=False))), None)
                for _ in range(args.redeploys)
            ],
        )
        print(f"## {args.redeploys} redeploys, {args.clients} looping clients, new connections")
        table(
            ["path", "deploys", "requests", "failed", "p50 ms", "p99 ms"],
            [
                ("domain via Caddy, HTTPS, 2 replicas, start-first", proxied),
                ("host port, 1 replica, recreate (baseline)", direct),
            ],
            lambda r: [args.redeploys, r["requests"], r["failed"], f"{r['p50_ms']:.1f}",
                       f"{r['p99_ms']:.1f}"],
        )  # fmt: skip
        if proxied["examples"] or direct["examples"]:
            print("failures seen:", proxied["examples"], direct["examples"])
        if proxied["failed"] and os.environ.get("BENCH_PROXY_LOG"):
            logs = docker.APIClient().logs(b.proxy).decode(errors="replace").splitlines()
            errors = [line for line in logs if '"error"' in line]
            Path(os.environ["BENCH_PROXY_LOG"]).write_text("\n".join(errors) + "\n")

        if shutil.which("wrk"):
            # wrk cannot pin SNI: the proxied run is plain HTTP through Caddy (a tls: off
            # twin of the app), so the ratio is Caddy's own cost, not TLS's.
            b.diplo("apply", "-f", str(_plain(b)))
            url = f"http://127.0.0.1:{b.http_port}/"
            through = wrk(url, args.connections, args.seconds, host=f"plain-{b.domain}")
            straight = wrk(f"http://127.0.0.1:{b.direct_port()}/", args.connections, args.seconds)
            ratio = {k: through[k] / straight[k] for k in through}
            print(
                f"\n## Added latency, {args.connections} keep-alive connections (wrk, plain HTTP)"
            )
            table(
                ["path", "req/s", "p50 ms", "p99 ms"],
                [("through Caddy", through), ("container port (baseline)", straight)],
                lambda r: [f"{r['rps']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}"],
            )
            print(f"| ratio (Caddy / direct) | {ratio['rps']:.2f}x | {ratio['p50_ms']:.2f}x "
                  f"| {ratio['p99_ms']:.2f}x |")  # fmt: skip
    finally:
        b.cleanup()


def _plain(b: Bench) -> Path:
    """A tls: off app on the proxy's HTTP port beside the others, for wrk."""
    spec = {
        "image": "busybox:latest",
        "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
        "init": True,
        "volumes": [f"{b.work / 'www'}:/www:ro"],
        "health": {"http": {"path": "/", "port": 8080}, "interval": "200ms"},
        "domains": [f"plain-{b.domain}"],
        "http_port": 8080,
        "tls": "off",
    }
    path = b.work / "plain.yaml"
    path.write_text(yaml.safe_dump({"project": b.project, "apps": {"plain": spec}}))
    return path


if __name__ == "__main__":
    main()
