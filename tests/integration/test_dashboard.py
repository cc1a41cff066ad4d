"""The dashboard in a real browser: Debian's chromium, driven by Playwright, against a
real `diplo serve` on the real engine. Playwright's own browser download is never used
(`make browser` installs chromium); DIPLO_CHROMIUM names another binary.

Screenshots go to the test's tmp folder (printed), and to docs/ when DIPLO_SCREENSHOTS
names a folder (how the README's picture is made)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, Route, sync_playwright

from .conftest import Sandbox, web_spec
from .test_gitops import Repo, serving
from .test_serve import Server, wait_for

CHROMIUM = os.environ.get("DIPLO_CHROMIUM", "/usr/bin/chromium")
AXE = Path(__file__).parents[2] / "web" / "node_modules" / "axe-core" / "axe.min.js"
ADMIN = "dashboard-admin-token-0123456789abcdef"
VIEWER = "dashboard-viewer-token-0123456789abcdef"
TOKENS = {"DIPLO_TOKEN": ADMIN, "DIPLO_VIEWER_TOKEN": VIEWER}
LIVE = 1.0  # s: how soon after the API shows a change the page must show it


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def chromium(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (Debian's chromium)")
    # --no-sandbox: CI runs as root, where chromium's sandbox cannot start
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield browser
    browser.close()


@pytest.fixture
def contexts(chromium: Browser) -> Iterator[list[BrowserContext]]:
    made: list[BrowserContext] = []
    yield made
    for ctx in made:
        ctx.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder


def new_page(
    chromium: Browser, contexts: list[BrowserContext], width: int = 1280, dark: bool = False
) -> Page:
    ctx = chromium.new_context(
        viewport={"width": width, "height": 900}, color_scheme="dark" if dark else "light"
    )
    contexts.append(ctx)
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # the page's Content-Security-Policy is enforced: anything it blocks is an error
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    page.errors = errors  # type: ignore[attr-defined]
    return page


def screenshot(page: Page, shots: Path, name: str) -> Path:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    if keep := os.environ.get("DIPLO_SCREENSHOTS"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / f"dashboard-{path.name}")
    return path


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is. Evaluated through
    the browser's debugging protocol: the page's own policy runs no script but its own."""
    page.evaluate(AXE.read_text())
    result = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]}
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


def api_get(srv: Server, path: str, token: str | None = None) -> Any:
    req = urllib.request.Request(srv.url + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def stop(srv: Server, wait: float = 30.0) -> None:
    """Stop serve, with more patience than Server.stop: on a loaded machine its controller
    takes more than 10 s to stop."""
    if srv.proc is None or srv.proc.poll() is not None:
        return
    srv.proc.send_signal(signal.SIGTERM)
    try:
        srv.proc.wait(wait)
    finally:
        srv.proc.kill()


def sign_in(page: Page, srv: Server, token: str, then: str = "/") -> None:
    page.goto(srv.url + then)
    assert "/ui/login" in page.url  # tokens were chosen: no page without signing in
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(srv.url + then)


def health_on_screen(page: Page, app: str) -> str:
    return page.locator(f"#row-{app} td[data-label=Health] .badge").first.inner_text()


def watch_row(page: Page, app: str) -> None:
    """Record every health the page shows for `app` (a state may last less than a poll of
    the test), and mark the document: a reload would lose both."""
    page.evaluate(
        """app => {
          window.__seen = [];
          window.__noReload = true;
          const look = () => {
            const b = document.querySelector(`#row-${app} td[data-label=Health] .badge`);
            const h = b ? b.textContent : "gone";
            if (window.__seen[window.__seen.length - 1] !== h) window.__seen.push(h);
          };
          look();
          new MutationObserver(look).observe(document.body, {subtree: true, childList: true});
        }""",
        app,
    )


def test_the_overview_follows_a_broken_app_live_and_survives_a_restart_of_serve(
    sandbox: Sandbox, chromium: Browser, contexts: list[BrowserContext], shots: Path
):
    web, worker = sandbox.name("web"), sandbox.name("worker")
    sandbox.manifest(
        {
            web: web_spec(sandbox, "v1"),
            worker: {
                "image": "busybox:latest",
                "command": ["sleep", "3600"],
                "init": True,
                "health": {"start_period": "0s"},
            },
        }
    )
    srv = Server(sandbox).start()
    try:
        wait_for(
            lambda: all((srv.app(a) or {}).get("health") == "healthy" for a in (web, worker)),
            60,
            "both apps to be healthy",
        )
        page = new_page(chromium, contexts)
        began = time.perf_counter()
        page.goto(srv.url + "/")  # loopback without a token: no sign-in
        page.wait_for_selector("#live[data-state=live]")
        print(f"overview loaded and live in {time.perf_counter() - began:.2f}s")
        assert health_on_screen(page, web) == "healthy"
        assert health_on_screen(page, worker) == "healthy"
        assert page.locator("#row-" + web).get_attribute("data-project") == sandbox.project

        # filter by name, then by health
        page.fill("#f-name", "worker")
        assert (
            page.locator(f"#row-{web}").is_hidden() and page.locator(f"#row-{worker}").is_visible()
        )
        page.fill("#f-name", "")
        page.select_option("#f-health", "unhealthy")
        assert page.locator(f"#row-{web}").is_hidden()
        page.select_option("#f-health", "")

        assert not axe_violations(page), axe_violations(page)

        # break the app: the page shows it within a second of the API, without a reload.
        # Its page goes away (a 404 fails its health check) for as long as the test says:
        # a removed container comes back faster than a page can be sure to show it.
        watch_row(page, web)
        index = sandbox.root / "www-v1" / "index.html"
        aside = index.with_name("away.html")
        index.rename(aside)
        api_saw = page_saw = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and page_saw is None:
            if api_saw is None and (srv.app(web) or {}).get("health") != "healthy":
                api_saw = time.monotonic()
            if page.evaluate("window.__seen").__len__() > 1:
                page_saw = time.monotonic()
            time.sleep(0.02)
        assert page_saw is not None, "the page never showed the app broken"
        seen = page.evaluate("window.__seen")
        assert seen[0] == "healthy" and seen[1] != "healthy", seen
        lag = page_saw - (api_saw or page_saw)
        print(f"broken app on screen {lag:.2f}s after the API said so ({seen[1]})")
        assert lag < LIVE
        aside.rename(index)  # mended: healthy again, on screen too
        wait_for(
            lambda: page.evaluate("window.__seen")[-1] == "healthy", 60, "healthy again on screen"
        )
        assert page.evaluate("window.__noReload") is True

        # serve restarts: the page says so, then is live again by itself
        stop(srv)
        page.wait_for_selector("#live[data-state=down]", timeout=10_000)
        srv.start()
        page.wait_for_selector("#live[data-state=live]", timeout=30_000)
        assert page.evaluate("window.__noReload") is True
        # (a fresh serve looks at the host again: for a moment an app may show as missing)
        wait_for(lambda: health_on_screen(page, web) == "healthy", 30, "healthy after restart")
        screenshot(page, shots, "overview")

        # keyboard: the first app's link is reached with Tab and followed with Enter
        page.keyboard.press("Tab")  # the skip link
        page.keyboard.press("Enter")
        for _ in range(30):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.closest('#app-rows') !== null"):
                break
        page.keyboard.press("Enter")
        page.wait_for_url(f"{srv.url}/ui/apps/*")

        # a phone: no sideways scrolling, dark as well
        phone = new_page(chromium, contexts, width=390, dark=True)
        phone.goto(srv.url + "/")
        phone.wait_for_selector("#live[data-state=live]")
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert not axe_violations(phone), axe_violations(phone)
        screenshot(phone, shots, "overview-phone-dark")
        assert not page.errors and not phone.errors  # type: ignore[attr-defined]
        phone.context.close()  # a page that leaves: its socket ends without a traceback
        page.context.close()
        time.sleep(0.5)
        stop(srv)
        assert "Traceback" not in srv.output, srv.output
    finally:
        stop(srv)


@pytest.fixture
def repo_serve(sandbox: Sandbox) -> Iterator[tuple[Repo, Server]]:
    repo = Repo(sandbox, sandbox.root / "repo")
    yield (
        repo,
        Server(
            sandbox,
            ["--repo", str(repo.root), "--branch", "main", "--path", "deploy", "--interval", "1s"],
            env=TOKENS,
        ),
    )


def test_commits_history_rollback_and_roles_in_the_app_page(
    sandbox: Sandbox,
    repo_serve: tuple[Repo, Server],
    chromium: Browser,
    contexts: list[BrowserContext],
    shots: Path,
):
    repo, srv = repo_serve
    web = sandbox.name("web")
    first = repo.commit({web: web_spec(sandbox, "v1")}, "Serve v1")
    srv.start()
    try:

        def deployed(sha: str) -> bool:
            row = api_get(srv, f"/apps/{web}", VIEWER) or {}
            return (row.get("revision") or {}).get("commit") == sha and row.get(
                "health"
            ) == "healthy"

        wait_for(lambda: deployed(first), 60, "the first commit to deploy")
        admin = new_page(chromium, contexts)
        sign_in(admin, srv, ADMIN, f"/ui/apps/{web}")
        admin.wait_for_selector("#live[data-state=live]")
        history = admin.locator("#history tbody tr")
        assert history.count() == 1 and "Serve v1" in history.first.inner_text()

        # a commit to the watched repository shows as a new deployment, without a reload
        admin.evaluate("window.__noReload = true")
        second = repo.commit({web: web_spec(sandbox, "v2")}, "Serve v2")
        admin.wait_for_function(
            "() => document.querySelector('#history tbody tr').innerText.includes('Serve v2')",
            timeout=120_000,  # a poll every second, and a deploy: slow on a loaded machine
        )
        wait_for(lambda: deployed(second), 120, "the second commit to deploy")
        admin.wait_for_function(
            "sha => document.querySelector('#summary').innerText.includes(sha)",
            arg=second[:8],
        )
        assert admin.evaluate("window.__noReload") is True
        assert not axe_violations(admin), axe_violations(admin)
        screenshot(admin, shots, "app")

        # the diff between the two deployments
        admin.click("#history button:has-text('diff vs')")
        admin.wait_for_selector("#diff table")
        shown = admin.locator("#diff").inner_text()
        assert "mounts" in shown and "www-v1" in shown and "www-v2" in shown

        # a viewer sees the page, and has no way to act; a forged POST is refused
        viewer = new_page(chromium, contexts)
        sign_in(viewer, srv, VIEWER, f"/ui/apps/{web}")
        assert "acts on nothing" in viewer.locator("#summary").inner_text()
        assert viewer.locator("button:has-text('Roll back')").count() == 0
        answer = viewer.evaluate(
            """async ([app]) => {
                const csrf = document.body.dataset.csrf;
                const r = await fetch(`/ui/apps/${app}/rollback`, {method: "POST",
                    headers: {"X-CSRF-Token": csrf, "Content-Type":
                    "application/x-www-form-urlencoded"}, body: "to=1"});
                return [r.status, await r.text()];
            }""",
            [web],
        )
        assert answer[0] == 403 and "viewer" in answer[1]

        # an admin's POST without the CSRF token is refused, and changes nothing
        bare = admin.evaluate(
            """async ([app]) => {
                const r = await fetch(`/ui/apps/${app}/rollback`, {method: "POST",
                    headers: {"Content-Type": "application/x-www-form-urlencoded"},
                    body: "to=1"});
                return r.status;
            }""",
            [web],
        )
        assert bare == 403
        assert (api_get(srv, f"/apps/{web}", VIEWER) or {}).get("pinned") is None

        # rollback as admin: the diff first, a confirmation, then progress and outcome live
        old = admin.locator("#history tbody tr").last
        old.locator("button:has-text('Roll back')").click()
        confirm = admin.locator("#confirm")
        confirm.locator("table").wait_for()
        assert "mounts" in confirm.inner_text() and "www-v1" in confirm.inner_text()
        confirm.locator("#confirm-rollback").click()
        admin.wait_for_selector("#action-result .note.good")
        assert "rolling back" in admin.locator("#action-result").inner_text()
        admin.wait_for_function(
            "() => document.querySelector('#activity').innerText.includes('deploy.succeeded')",
            timeout=60_000,
        )
        admin.wait_for_selector("#summary .badge:has-text('pinned')", timeout=30_000)
        wait_for(lambda: serving(sandbox, web, "v1"), 30, "the rollback to serve v1")
        assert admin.evaluate("window.__noReload") is True

        # resume: the pin goes, and the app follows the source again
        admin.click("#summary button:has-text('Resume')")
        admin.wait_for_selector("#action-result .note.good:has-text('following the source')")
        wait_for(lambda: serving(sandbox, web, "v2"), 60, "v2 again after resuming")
        assert not admin.errors and not viewer.errors  # type: ignore[attr-defined]
    finally:
        stop(srv)


def test_logs_stream_and_can_be_searched_and_paused(
    sandbox: Sandbox, chromium: Browser, contexts: list[BrowserContext]
):
    talker = sandbox.name("talker")
    loop = 'i=0; while true; do i=$$((i+1)); echo "line $$i"; sleep 0.2; done'  # $$: a literal $
    sandbox.manifest(
        {talker: {"image": "busybox:latest", "command": ["sh", "-c", loop], "init": True}}
    )
    srv = Server(sandbox).start()
    try:
        wait_for(lambda: (srv.app(talker) or {}).get("state") == "running", 60, "the app to run")
        page = new_page(chromium, contexts)
        page.goto(f"{srv.url}/ui/apps/{talker}")
        logs = page.locator("#logs")

        def newest() -> int:
            lines = [ln for ln in logs.inner_text().splitlines() if ln.startswith("line ")]
            return int(lines[-1].split()[1]) if lines else 0

        wait_for(lambda: newest() > 0, 20, "the first lines")
        start = newest()
        wait_for(lambda: newest() >= start + 5, 20, "new lines to stream in")

        page.click("#log-pause")
        held = newest()
        time.sleep(1.0)
        assert newest() == held  # paused: nothing new shown...
        assert "new lines held" in page.locator("#log-state").inner_text()
        page.click("#log-pause")
        assert newest() > held  # ...and all of it shown on resuming

        page.fill("#log-search", "line 1")
        shown = logs.inner_text().splitlines()
        assert shown and all("line 1" in ln for ln in shown)
        assert not page.errors  # type: ignore[attr-defined]
        page.context.close()
        time.sleep(0.5)
    finally:
        stop(srv)
    assert "Traceback" not in srv.output, srv.output


def test_the_overview_sends_a_screen_of_rows_first_and_the_rest_after_it_is_shown(
    sandbox: Sandbox, chromium: Browser, contexts: list[BrowserContext]
):
    """Issue 13's first render: the page's HTML holds the first screen of rows; the others
    arrive right after the first paint, and the count, filters and live rows then cover
    every app."""
    from diplo.web.pages import FIRST_ROWS

    names = [sandbox.name(f"a{i:02d}") for i in range(FIRST_ROWS + 2)]
    sleeper = {"image": "busybox:latest", "command": ["sleep", "3600"], "init": True,
               "health": {"start_period": "0s"}}  # fmt: skip
    sandbox.manifest({n: sleeper for n in names})
    srv = Server(sandbox).start()
    try:
        wait_for(
            lambda: all((srv.app(a) or {}).get("health") == "healthy" for a in names),
            120,
            "every app to be healthy",
        )
        with urllib.request.urlopen(srv.url + "/", timeout=5) as resp:
            html = resp.read().decode()
        assert html.count('<tr id="row-') == FIRST_ROWS and 'data-more="2"' in html
        with urllib.request.urlopen(srv.url + f"/?q={names[-1]}", timeout=5) as resp:
            assert resp.read().decode().count('<tr id="row-') == len(names)  # filtered: whole

        page = new_page(chromium, contexts)
        page.goto(srv.url + "/")
        page.wait_for_selector("#live[data-state=live]")
        page.wait_for_function(f"document.querySelectorAll('#app-rows tr').length === {len(names)}")
        assert page.locator("#shown-count").inner_text() == str(len(names))
        assert page.locator("#app-rows").get_attribute("aria-busy") is None
        page.fill("#f-name", names[-1])  # one past the first screen
        assert page.locator(f"#row-{names[-1]}").is_visible()
        assert page.locator(f"#row-{names[0]}").is_hidden()
        assert page.locator("#shown-count").inner_text() == f"1 of {len(names)}"
        assert page.errors == []  # type: ignore[attr-defined]

        # A fetch that finds no server (serve restarting), or a body cut short (serve gone
        # in the middle of it), is no error of the page: it keeps what it shows, and the
        # next change or reconnection fetches again.
        offline = new_page(chromium, contexts)
        failed: list[str] = []
        offline.on("requestfailed", lambda request: failed.append(request.url))
        offline.route("**/ui/rows", lambda route: route.abort("connectionrefused"))

        def cut_short(route: Route) -> None:
            failed.append(route.request.url)
            route.fulfill(status=200, content_type="application/json", body='{"apps": {"a')

        offline.route("**/ui/sparks", cut_short)
        offline.goto(srv.url + "/")
        offline.wait_for_selector("#live[data-state=live]")
        for _ in range(100):  # the sync API hands events over only while it is called
            if len(failed) >= 2:
                break
            offline.wait_for_timeout(100)
        offline.wait_for_timeout(300)  # a rejection nobody handles is reported by now
        assert len(failed) >= 2, failed
        assert offline.errors == []  # type: ignore[attr-defined]
        assert offline.locator("#app-rows tr").count() == FIRST_ROWS
    finally:
        stop(srv)
