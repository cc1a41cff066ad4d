"""How fast the dashboard's overview renders with 100 apps (issue 13: first render under
300 ms on this machine's kind).

A real `diplo serve` (metrics on) over N busybox apps on the real engine; then:
1. the server: GET / (the whole overview's HTML), GET /ui/rows and GET /ui/sparks, each
   asked REPEAT times: median and worst;
2. the browser: Debian's chromium (Playwright) opens / REPEAT times in fresh contexts:
   First Contentful Paint and DOMContentLoaded from the page's own performance entries,
   and the time until the WebSocket says "live".

Usage: .venv/bin/python benchmarks/dashboard.py [--apps 100] [--repeat 10]
Needs a Docker engine with busybox:latest (make engine) and chromium (make browser).
Everything it starts (serve, containers, its DIPLO_HOME) is removed at the end."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import docker
import yaml
from common import free_port, tear_down, wait

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("DIPLO_CHROMIUM", "/usr/bin/chromium")
TARGET_MS = 300.0


def timed_get(url: str) -> tuple[float, int]:
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = resp.read()
    return (time.perf_counter() - began) * 1000, len(body)


def summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values), 1), "max_ms": round(max(values), 1)}


def browser_loads(url: str, repeat: int, live: bool = True, warm: bool = False) -> dict[str, Any]:
    """Chromium opening `url` `repeat` times, each in a fresh context (a first visit in a
    new profile: nothing cached, a new renderer); `warm`: each in a new tab of one context
    that opened it once before (a person's running browser: the stylesheet and scripts
    cached as the server's headers allow). `live`: also wait until the WebSocket is open."""
    from playwright.sync_api import sync_playwright

    fcp: list[float] = []
    dcl: list[float] = []
    ready: list[float] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        shared = None
        if warm:
            shared = browser.new_context(viewport={"width": 1280, "height": 900})
            first = shared.new_page()
            first.goto(url)
            first.wait_for_load_state("load")
            first.close()
        try:
            for _ in range(repeat):
                ctx = shared or browser.new_context(viewport={"width": 1280, "height": 900})
                page = ctx.new_page()
                began = time.perf_counter()
                page.goto(url)
                if live:
                    page.wait_for_selector("#live[data-state=live]", timeout=30_000)
                ready.append((time.perf_counter() - began) * 1000)
                # the paint entry can come after `load`: wait for it (buffered) rather
                # than read a missing one
                entries = page.evaluate(
                    """async () => ({
                        fcp: await new Promise(done => {
                            new PerformanceObserver(list => {
                                const e = list.getEntriesByName('first-contentful-paint')[0];
                                if (e) done(e.startTime);
                            }).observe({type: 'paint', buffered: true});
                            setTimeout(() => done(null), 10000);
                        }),
                        dcl: performance.getEntriesByType('navigation')[0]
                              .domContentLoadedEventEnd,
                        rows: document.querySelectorAll('#app-rows tr').length,
                    })"""
                )
                if entries["fcp"] is None:
                    raise SystemExit(f"{url}: no first-contentful-paint entry in 10 s")
                fcp.append(entries["fcp"])
                dcl.append(entries["dcl"])
                page.close()
                if shared is None:
                    ctx.close()
        finally:
            browser.close()
    return {
        "rows": entries["rows"],
        "first_contentful_paint": summary(fcp),
        "dom_content_loaded": summary(dcl),
        "live": summary(ready),
    }


def floor(url: str, repeat: int) -> dict[str, Any]:
    """The same overview's bytes (its HTML, stylesheet and scripts, as served) from a
    plain static file server, opened the same way: what the browser and this machine's
    load cost by themselves, whatever the server."""
    import http.server
    import threading
    from functools import partial

    site = Path(tempfile.mkdtemp(prefix="diplo-dash-floor-"))
    for path in ("/", "/ui/static/dash.css", "/ui/static/dash.js",
                 "/ui/static/vendor/htmx.min.js"):  # fmt: skip
        with urllib.request.urlopen(url + path, timeout=10) as resp:
            body = resp.read()
        target = site / (path.lstrip("/") or "index.html")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=site))
    server.handle_error = lambda *_: None  # type: ignore[method-assign]  # pages leaving
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return browser_loads(f"http://127.0.0.1:{server.server_address[1]}/", repeat, live=False)
    finally:
        server.shutdown()
        shutil.rmtree(site, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()

    api = docker.APIClient(version="auto", timeout=120)
    project = f"bench-dash-{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="diplo-dash-bench-"))
    folder, home = work / "manifests", work / "home"
    folder.mkdir()
    apps = {
        f"d{i:03d}-{project[-6:]}": {
            "image": "busybox:latest",
            "command": ["sleep", "86400"],
            "init": True,
            "health": {"start_period": "0s"},
        }
        for i in range(args.apps)
    }
    (folder / "diplo.yaml").write_text(yaml.safe_dump({"project": project, "apps": apps}))
    port = free_port()
    env = {**os.environ, "DIPLO_HOME": str(home), "NO_COLOR": "1"}
    env.pop("DIPLO_TOKEN", None)
    log = (work / "serve.log").open("w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "diplo.cli", "serve", "--manifests", str(folder),
         "--listen", f"127.0.0.1:{port}"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        print(f"starting {args.apps} apps under diplo serve ({url})...", file=sys.stderr)

        def all_up() -> bool:
            with urllib.request.urlopen(url + "/apps", timeout=5) as resp:
                rows = json.loads(resp.read())["apps"]
            return len(rows) == args.apps and all(r["state"] == "running" for r in rows)

        wait(all_up, 600, f"{args.apps} apps to run", every=0.2)
        time.sleep(12)  # a few metrics cycles, so that the sparklines have data
        server = {}
        for path in ("/", "/ui/rows", "/ui/sparks"):
            samples = [timed_get(url + path) for _ in range(args.repeat)]
            server[path] = {**summary([s[0] for s in samples]), "bytes": samples[-1][1]}
        browser = browser_loads(url + "/", args.repeat)
        warm = browser_loads(url + "/", args.repeat, warm=True)
        static = floor(url, args.repeat)
    finally:
        tear_down(serve, api, f"diplo.project={project}", project, work, f"d*-{project[-6:]}")

    result = {
        "apps": args.apps,
        "repeat": args.repeat,
        "server": server,
        "browser": browser,
        "browser_warm": warm,
        "floor": static,
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "dashboard.json").write_text(json.dumps(result, indent=2))
    print(f"\n| {args.apps} apps | median | worst |\n|---|---|---|")
    for path, s in server.items():
        what = f"server GET {path} ({s['bytes']} bytes)"
        print(f"| {what} | {s['median_ms']} ms | {s['max_ms']} ms |")
    for key in ("first_contentful_paint", "dom_content_loaded", "live"):
        s = browser[key]
        print(f"| browser {key.replace('_', ' ')} | {s['median_ms']} ms | {s['max_ms']} ms |")
    for key in ("first_contentful_paint", "dom_content_loaded", "live"):
        s = warm[key]
        print(f"| browser, a new tab of a running one: {key.replace('_', ' ')} | "
              f"{s['median_ms']} ms | {s['max_ms']} ms |")  # fmt: skip
    for key in ("first_contentful_paint", "dom_content_loaded"):
        s = static[key]
        what = f"floor (same bytes, static server) {key.replace('_', ' ')}"
        print(f"| {what} | {s['median_ms']} ms | {s['max_ms']} ms |")
    for what, run in (("a new tab of a running browser", warm), ("a new profile", browser)):
        fcp = run["first_contentful_paint"]["median_ms"]
        verdict = "PASS" if fcp < TARGET_MS else "MISS"
        print(f"{verdict}: first render (FCP, median) in {what}: {fcp} ms at {args.apps} "
              f"apps (target < {TARGET_MS:.0f} ms)")  # fmt: skip
    print(
        f"(the same bytes from a static server, new profile: "
        f"{static['first_contentful_paint']['median_ms']} ms)"
    )


if __name__ == "__main__":
    main()
