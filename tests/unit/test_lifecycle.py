"""Operations on running apps (down, logs, restart, cancel) over the in-memory engine and
a real SQLite ledger, with apps deployed by `ops.apply` from manifest files."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from diplo.errors import InputError, LockTimeout
from diplo.ledger import Ledger
from diplo.manifest.load import load_manifests
from diplo.model import LABEL_APP, LABEL_PROJECT, LABEL_SPEC_HASH, ContainerSpec
from diplo.ops import lifecycle
from diplo.ops.apply import apply
from diplo.ops.context import Context
from diplo.runtime.memory import MemoryRuntime

from .factories import IMAGE_ID

HEALTHY = {"start_period": "0s"}


@pytest.fixture
def engine() -> MemoryRuntime:
    return MemoryRuntime(images={"busybox:latest": IMAGE_ID})


@pytest.fixture
def ctx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: MemoryRuntime
) -> Iterator[Context]:
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    ledger = Ledger(tmp_path / "home" / "ledger.db")
    yield Context(_runtime=engine, _ledger=ledger)
    ledger.close()


def deploy(ctx: Context, folder: Path, project: str, apps: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "diplo.yaml").write_text(yaml.safe_dump({"project": project, "apps": apps}))
    report = apply(ctx, load_manifests([str(folder)]))
    assert report.ok


@pytest.fixture
def shop(ctx: Context, tmp_path: Path) -> Context:
    """Project shop: `web` (a port and a named volume) and `api`."""
    deploy(
        ctx,
        tmp_path / "shop",
        "shop",
        {
            "web": {
                "image": "busybox:latest",
                "ports": ["8080"],
                "volumes": ["data:/data"],
                "health": HEALTHY,
            },
            "api": {"image": "busybox:latest", "health": HEALTHY},
        },
    )
    return ctx


def names(engine: MemoryRuntime) -> set[str]:
    return {c.spec.name for c in engine.containers.values()}


def add_container(engine: MemoryRuntime, app: str, name: str, logs: list[str], *, run: bool) -> str:
    labels = {LABEL_PROJECT: "shop", LABEL_APP: app, LABEL_SPEC_HASH: "h"}
    cid = engine.create(ContainerSpec(name, "busybox:latest", labels, "diplo-shop"))
    engine.containers[cid].logs.extend(logs)
    if run:
        engine.start(cid)
    else:
        engine.containers[cid].state = "exited"
    return cid


# --- down ----------------------------------------------------------------------------


def test_down_one_app_keeps_the_others_and_the_network(shop: Context):
    engine = shop.runtime
    removed = lifecycle.down(shop, ["web"])
    assert "container shop-web-1" in removed
    assert names(engine) == {"shop-api-1"}
    assert "diplo-shop" in engine.networks  # api still uses it
    assert "shop_data" in engine.volumes  # volumes only with volumes=True
    assert "web" not in shop.ledger.snapshot().apps
    assert "api" in shop.ledger.snapshot().apps


def test_down_drops_the_kept_image_tags_and_keeps_the_host_port(shop: Context):
    engine, ledger = shop.runtime, shop.ledger
    ((_, tag),) = ledger.kept_images("web")
    assert tag in engine.images
    port_before = {p.key: p.host_port for p in ledger.snapshot().ports if p.app == "web"}
    assert port_before
    removed = lifecycle.down(shop, ["web"])
    assert f"image tag {tag}" in removed
    assert tag not in engine.images and ledger.kept_images("web") == []
    assert "busybox:latest" in engine.images  # the image the manifest names stays
    # The host port stays reserved, so that the app comes back on the same one.
    port_after = {p.key: p.host_port for p in ledger.snapshot().ports if p.app == "web"}
    assert port_after == port_before


def test_down_with_volumes_removes_the_app_s_named_volumes(shop: Context):
    removed = lifecycle.down(shop, ["web"], volumes=True)
    assert "volume shop_data" in removed
    assert shop.runtime.volumes == {}


def test_the_project_network_goes_with_its_last_app(shop: Context):
    engine = shop.runtime
    lifecycle.down(shop, ["web"])
    assert "diplo-shop" in engine.networks
    lifecycle.down(shop, ["api"])
    assert "diplo-shop" not in engine.networks
    assert engine.containers == {}
    assert shop.ledger.snapshot().apps == {}


def test_down_of_an_unknown_app_removes_nothing(shop: Context):
    engine = shop.runtime
    engine.calls.clear()
    with pytest.raises(InputError, match="'nope'") as exc:
        lifecycle.down(shop, ["web", "nope"])
    assert "nothing was removed" in exc.value.message
    assert engine.calls == []
    assert names(engine) == {"shop-web-1", "shop-api-1"}
    assert set(shop.ledger.snapshot().apps) == {"web", "api"}


def test_down_everything_takes_only_this_ledgers_apps(
    shop: Context, tmp_path: Path, engine: MemoryRuntime
):
    # Another Diplo (another DIPLO_HOME, so another ledger) deploys on the same engine.
    other_ledger = Ledger(tmp_path / "other" / "ledger.db")
    try:
        other = Context(_runtime=engine, _ledger=other_ledger)
        deploy(
            other,
            tmp_path / "blog",
            "blog",
            {"post": {"image": "busybox:latest", "health": HEALTHY}},
        )
        assert names(engine) == {"shop-web-1", "shop-api-1", "blog-post-1"}
        removed = lifecycle.down(shop, [], everything=True)
        assert sorted(r for r in removed if r.startswith("container")) == [
            "container shop-api-1",
            "container shop-web-1",
        ]
        assert names(engine) == {"blog-post-1"}
        assert engine.networks == {"diplo-blog"}
        assert set(other_ledger.snapshot().apps) == {"post"}
    finally:
        other_ledger.close()


def test_down_everything_takes_an_app_recorded_without_a_container(shop: Context):
    engine = shop.runtime
    (api,) = [c for c in engine.containers.values() if c.spec.labels[LABEL_APP] == "api"]
    engine.remove(api.id)  # removed behind Diplo's back; still recorded
    lifecycle.down(shop, [], everything=True)
    assert shop.ledger.snapshot().apps == {}
    assert engine.containers == {} and engine.networks == set()


# --- logs ----------------------------------------------------------------------------


def test_logs_come_from_the_newest_running_container(ctx: Context, engine: MemoryRuntime):
    add_container(engine, "web", "shop-web-1", ["old 1", "old 2"], run=True)
    add_container(engine, "web", "shop-web-2", ["crashed"], run=False)  # newer, exited
    assert list(lifecycle.logs(ctx, "web", follow=False, tail=None)) == [b"old 1\n", b"old 2\n"]
    assert list(lifecycle.logs(ctx, "web", follow=False, tail=1)) == [b"old 2\n"]
    add_container(engine, "web", "shop-web-3", ["new"], run=True)
    assert list(lifecycle.logs(ctx, "web", follow=False, tail=None)) == [b"new\n"]


def test_logs_of_an_app_whose_containers_all_stopped_are_the_newest(
    ctx: Context, engine: MemoryRuntime
):
    add_container(engine, "web", "shop-web-1", ["first"], run=False)
    add_container(engine, "web", "shop-web-2", ["second"], run=False)
    assert list(lifecycle.logs(ctx, "web", follow=False, tail=None)) == [b"second\n"]


def test_logs_without_a_container(shop: Context):
    with pytest.raises(InputError, match="no container for app 'nope'"):
        lifecycle.logs(shop, "nope", follow=False, tail=None)


# --- restart -------------------------------------------------------------------------


def test_restart_stops_and_starts_the_container_and_records_an_event(shop: Context):
    engine = shop.runtime
    (web,) = [c for c in engine.containers.values() if c.spec.labels[LABEL_APP] == "web"]
    engine.calls.clear()
    assert lifecycle.restart(shop, "web", grace=3, reason="asked by ann", lock_wait=1)
    assert engine.calls == [("stop", web.id), ("start", web.id)]
    assert engine.containers[web.id].state == "running"
    (event,) = [e for e in shop.ledger.events("web") if e.kind == "app.restarted"]
    assert event.message == "asked by ann"


def test_restart_without_a_container_is_false_and_records_nothing(shop: Context):
    assert not lifecycle.restart(shop, "nope", grace=3, reason="x", lock_wait=1)
    assert not [e for e in shop.ledger.events("nope") if e.kind == "app.restarted"]


def test_restart_waits_for_the_app_s_lock(shop: Context):
    engine = shop.runtime
    engine.calls.clear()
    with shop.locks.hold(["web"]), pytest.raises(LockTimeout):
        lifecycle.restart(shop, "web", grace=3, reason="x", lock_wait=0.1)
    assert engine.calls == []


# --- cancel --------------------------------------------------------------------------


def test_cancel_with_nothing_in_flight(shop: Context):
    with pytest.raises(InputError, match="no deploy of 'web' is in flight"):
        lifecycle.cancel(shop, "web", wait=0)


def test_cancel_flags_the_deploy_and_reports_it_still_running(ctx: Context):
    dep_id = ctx.ledger.start_deployment("web", "shop", "h")
    started = time.monotonic()
    (out,) = lifecycle.cancel(ctx, "web", wait=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    assert out.deployment.id == dep_id and out.result is None
    assert ctx.ledger.cancel_requested([dep_id]) == {dep_id}
    assert "deploy.cancel_requested" in [e.kind for e in ctx.ledger.events("web")]


def test_cancel_reports_the_result_once_the_deploy_finishes(ctx: Context):
    dep_id = ctx.ledger.start_deployment("web", "shop", "h")
    # The deploying executor sees the flag and closes its deployment a moment later.
    timer = threading.Timer(0.2, ctx.ledger.finish_deployment, (dep_id, "cancelled"))
    timer.start()
    try:
        started = time.monotonic()
        (out,) = lifecycle.cancel(ctx, "web", wait=10)
        assert out.result == "cancelled"
        assert time.monotonic() - started < 5
    finally:
        timer.join()


def test_cancel_of_a_deploy_whose_process_died_closes_it_as_interrupted(
    ctx: Context, tmp_path: Path
):
    # Another Diplo process started a deployment and died without finishing it.
    script = "import sys; from diplo.ledger import Ledger; print(Ledger(sys.argv[1]).start_deployment('web', 'shop', 'h'))"  # noqa: E501
    out = subprocess.run(
        [sys.executable, "-c", script, str(ctx.ledger.path)],
        capture_output=True,
        text=True,
        check=True,
    )
    dep_id = int(out.stdout)
    with pytest.raises(InputError, match="nothing to cancel"):
        lifecycle.cancel(ctx, "web", wait=0)
    dep = ctx.ledger.deployment(dep_id)
    assert dep is not None and dep.result == "interrupted"


def test_down_waits_for_a_deploy_of_its_apps(shop: Context, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(lifecycle, "LOCK_WAIT", 0.1)
    engine = shop.runtime
    engine.calls.clear()
    with shop.locks.hold(["web"]), pytest.raises(LockTimeout):
        lifecycle.down(shop, ["web", "api"])
    assert engine.calls == []
    assert names(engine) == {"shop-web-1", "shop-api-1"}


def test_down_of_an_app_taken_down_while_it_waited(shop: Context):
    errors: list[BaseException] = []
    results: list[list[str]] = []

    def second_down() -> None:
        try:
            results.append(lifecycle.down(shop, ["web"]))
        except BaseException as exc:
            errors.append(exc)

    engine = shop.runtime
    with shop.locks.hold(["web"]):  # another `diplo down web`, or a prune, under way
        waiter = threading.Thread(target=second_down)
        waiter.start()
        time.sleep(0.2)  # the second one has chosen its targets and waits for the lock
        assert waiter.is_alive()
        for c in engine.observe().of_app("web"):
            engine.remove(c.id)
        shop.ledger.forget_app("web", keep_ports=True)
    waiter.join(5)
    assert not waiter.is_alive()
    assert all(isinstance(e, InputError) for e in errors), errors
    assert names(shop.runtime) == {"shop-api-1"}
