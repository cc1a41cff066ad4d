"""Manifests that try to exhaust the loader (M1), durations without bounds (M9), and
validation messages that would quote an interpolated secret (H2): each is a
ManifestError with file:line:col, in bounded time, and no message holds the secret."""

from __future__ import annotations

import contextlib
import os
import textwrap
import time
from pathlib import Path

import pytest

from diplo.errors import ManifestError, ManifestIssue
from diplo.manifest.load import load_manifests

SECRET = "s3cr3t!T0KEN value"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def issues(path: Path, environ: dict[str, str] | None = None) -> list[ManifestIssue]:
    started = time.monotonic()
    with pytest.raises(ManifestError) as exc:
        load_manifests([str(path)], environ=environ or {})
    assert time.monotonic() - started < 5
    return exc.value.issues


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))


# --- M1: alias bombs, loops, deep nesting, big files, nested defaults, special files ----


def test_an_alias_bomb_is_refused_at_the_alias_in_a_few_hundred_bytes(tmp_path: Path):
    lines = ["x-a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"x-{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    text = "\n".join(lines) + "\napps: {}\n"
    assert len(text) < 700  # stands for 10^9 values
    [issue] = issues(write(tmp_path / "diplo.yaml", text))
    assert "more than" in issue.message and "aliases" in issue.message
    assert issue.line in range(5, 10)  # the alias that went over, not line 1


@pytest.mark.parametrize(
    "text",
    ["x-a: &a [*a]\napps: {}\n", "apps:\n  web: &w\n    image: busybox\n    labels: *w\n"],
)
def test_a_recursive_anchor_is_refused_not_a_recursion_error(tmp_path: Path, text: str):
    [issue] = issues(write(tmp_path / "diplo.yaml", text))
    assert "loop" in issue.message and issue.line in (1, 4)


@pytest.mark.parametrize("levels", [100, 5000, 100_000])
def test_deep_nesting_is_refused_with_its_line(tmp_path: Path, levels: int):
    text = "apps: {}\nx-deep: " + "[" * levels + "]" * levels + "\n"
    [issue] = issues(write(tmp_path / "diplo.yaml", text))
    assert "nest" in issue.message and issue.line == 2


def test_a_file_over_the_size_limit_is_not_parsed(tmp_path: Path):
    text = "apps: {}\nx-pad: " + "a" * (1 << 20) + "\n"
    [issue] = issues(write(tmp_path / "diplo.yaml", text))
    assert "larger than" in issue.message and (issue.line, issue.col) == (1, 1)


def test_thousands_of_nested_defaults_are_an_issue_not_a_recursion_error(tmp_path: Path):
    value = "${A:-" * 3000 + "x" + "}" * 3000
    path = write(
        tmp_path / "diplo.yaml", f"apps:\n  web:\n    image: busybox\n    user: '{value}'\n"
    )
    [issue] = issues(path)
    assert "nested too deeply" in issue.message and issue.line == 4


def test_more_apps_than_the_limit_are_refused_at_the_first_one_over(tmp_path: Path):
    apps = "".join(f"  a{i}: {{image: busybox}}\n" for i in range(501))
    [issue] = issues(write(tmp_path / "diplo.yaml", "apps:\n" + apps))
    assert "more than 500 apps" in issue.message and issue.line == 502


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_a_build_context_is_never_opened(tmp_path: Path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\n")
    os.mkfifo(ctx / "pipe")  # opening it for reading would block forever
    path = write(tmp_path / "diplo.yaml", "apps:\n  web:\n    image: w:1\n    build: ./ctx\n")
    started = time.monotonic()
    state = load_manifests([str(path)], environ={})
    assert time.monotonic() - started < 5
    assert state.app("web") is not None


def test_a_build_context_with_too_many_files_is_refused(tmp_path: Path):
    from diplo.manifest.hashing import ContextTooLarge, context_digest

    for i in range(5):
        (tmp_path / f"f{i}").write_text("x")
    with pytest.raises(ContextTooLarge, match="more than 3 files"):
        context_digest(tmp_path, max_files=3)


def test_a_device_as_build_context_is_an_issue_not_a_hang(tmp_path: Path):
    path = write(tmp_path / "diplo.yaml", "apps:\n  web:\n    image: w:1\n    build: /dev\n")
    started = time.monotonic()
    with contextlib.suppress(ManifestError):  # no Dockerfile in /dev; what matters: it ends
        load_manifests([str(path)], environ={})
    assert time.monotonic() - started < 5


# --- M9: durations have bounds ----------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "bound"),
    [
        ("stop_grace_period", "10000h", "10m"),
        ("deploy: {timeout", "48h}", "24h"),
        ("health: {interval", "0s}", "100ms"),
        ("health: {start_interval", "0s}", "10ms"),
        ("health: {timeout", "1h}", "10m"),
        ("health: {interval", ".inf}", "1h"),
    ],
)
def test_durations_out_of_bounds_are_refused_with_the_bounds(
    tmp_path: Path, key: str, value: str, bound: str
):
    path = write(
        tmp_path / "diplo.yaml", f"apps:\n  web:\n    image: busybox\n    {key}: {value}\n"
    )
    [issue] = issues(path)
    assert issue.line == 4 and "must be between" in issue.message and bound in issue.message


def test_durations_within_bounds_load(tmp_path: Path):
    text = """
    apps:
      web:
        image: busybox
        stop_grace_period: 10m
        deploy: {timeout: 24h}
        health: {interval: 100ms, start_interval: 10ms, timeout: 10m, start_period: 1h}
    """
    app = load_manifests([str(write(tmp_path / "diplo.yaml", text))], environ={}).app("web")
    assert app is not None and app.stop_grace_period == 600 and app.deploy_timeout == 86400


# --- H2: a value that came from interpolation is never quoted ---------------------------


@pytest.mark.parametrize(
    "field",
    [
        "restart: ${TOKEN}",
        "init: ${TOKEN}",
        "ports: ['${TOKEN}']",
        "ports: ['${TOKEN}:80']",
        "env: ['${TOKEN}']",
        "image: 'bad ${TOKEN}'",
        "volumes: ['${TOKEN}']",
        "volumes: ['./${TOKEN}:/data']",
        "volumes: ['${TOKEN}x:/data']",
        "env_file: ['${TOKEN}.env']",
        "build: './${TOKEN}'",
        "stop_grace_period: ${TOKEN}",
        "pull_policy: ${TOKEN}",
        "resources: {memory: '${TOKEN}'}",
        "resources: {cpus: '${TOKEN}'}",
        "health: {interval: '${TOKEN}'}",
        "health: {http: {port: '${TOKEN}'}}",
        "health: {http: {port: 80, status: '${TOKEN}'}}",
        "deploy: {timeout: '${TOKEN}', keep_images: '${TOKEN}'}",
        "user: ${TOKEN}\n    working_dir: ${TOKEN}\n    depends_on: ['${TOKEN}']",
    ],
)
def test_an_interpolated_secret_is_never_quoted_in_an_issue(tmp_path: Path, field: str):
    text = f"apps:\n  web:\n    image: busybox\n    {field}\n"
    if field.startswith("image:"):
        text = f"apps:\n  web:\n    {field}\n"
    found = issues(write(tmp_path / "diplo.yaml", text), environ={"TOKEN": SECRET})
    for issue in found:
        assert SECRET not in str(issue) and SECRET[:8] not in str(issue)
    assert any("${TOKEN}" in str(i) for i in found), found  # it says whose value it was


def test_a_literal_bad_value_is_still_quoted(tmp_path: Path):
    path = write(tmp_path / "diplo.yaml", "apps:\n  web:\n    image: busybox\n    restart: nope\n")
    [issue] = issues(path)
    assert "'nope'" in issue.message
