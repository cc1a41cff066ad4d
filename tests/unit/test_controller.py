"""The controller's reconcile and restart logic over the in-memory engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from diplo.controller.controller import Controller
from diplo.ledger import Ledger
from diplo.runtime.memory import MemoryRuntime
from diplo.service import Context

from .factories import IMAGE_ID


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "diplo.yaml").write_text(
        yaml.safe_dump(
            {
                "project": "shop",
                "apps": {"web": {"image": "busybox:latest", "health": {"start_period": "0s"}}},
            }
        )
    )
    engine = MemoryRuntime(images={"busybox:latest": IMAGE_ID})
    ledger = Ledger(tmp_path / "home" / "ledger.db")
    c = Controller(folder, Context(_runtime=engine, _ledger=ledger))
    c._reload()
    yield c
    ledger.close()


def test_reconcile_creates_then_does_nothing(controller: Controller):
    engine = controller.ctx.runtime
    controller.reconcile("web")
    assert [k for k, _ in engine.calls if k in ("create", "start")] == ["create", "start"]
    engine.calls.clear()
    controller.reconcile("web")
    assert engine.calls == []
    assert controller.views["web"].health == "healthy"


def test_unhealthy_app_is_restarted_with_backoff(controller: Controller):
    engine = controller.ctx.runtime
    controller.reconcile("web")
    controller.views["web"] = replace(controller.views["web"], health="unhealthy")
    engine.calls.clear()
    controller._restart_unhealthy()
    assert [k for k, _ in engine.calls] == ["stop", "start"]
    engine.calls.clear()
    controller.views["web"] = replace(controller.views["web"], health="unhealthy")
    controller._restart_unhealthy()  # within the 1 s backoff: left alone
    assert engine.calls == []
    controller.restart_after["web"] = 0.0
    controller._restart_unhealthy()
    assert [k for k, _ in engine.calls] == ["stop", "start"]
    assert controller.backoffs["web"].restarts == 2
    assert controller.backoffs["web"].delay() == 4
    kinds = [e.kind for e in controller.ctx.ledger.events("web")]
    assert kinds.count("app.restarted") == 2


def test_invalid_manifest_keeps_the_last_good_state(controller: Controller):
    controller.reconcile("web")
    (controller.manifests / "diplo.yaml").write_text("apps: [broken")
    assert controller._reload() == set()
    assert not controller.manifest.ok and "invalid YAML" in (controller.manifest.error or "")
    assert controller.desired.app("web") is not None


def test_removed_app_is_pruned_unless_prune_false(controller: Controller):
    engine = controller.ctx.runtime
    controller.reconcile("web")
    (controller.manifests / "diplo.yaml").write_text(
        yaml.safe_dump({"project": "shop", "apps": {}})
    )
    assert controller._reload() == {"web"}
    controller.reconcile("web")
    assert engine.containers == {}
    assert "web" not in controller.views


def test_prune_false_keeps_a_removed_app(controller: Controller):
    engine = controller.ctx.runtime
    path = controller.manifests / "diplo.yaml"
    doc = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**doc, "prune": False}))
    controller._reload()
    controller.reconcile("web")
    path.write_text(yaml.safe_dump({"project": "shop", "prune": False, "apps": {}}))
    controller._reload()
    controller.reconcile("web")
    assert len(engine.containers) == 1


def _write(controller: Controller, **web: object) -> None:
    assert controller.manifests is not None
    spec = {"image": "busybox:latest", "health": {"start_period": "0s"}, **web}
    (controller.manifests / "diplo.yaml").write_text(
        yaml.safe_dump({"project": "shop", "apps": {"web": spec}})
    )


def test_sync_status_follows_the_source(controller: Controller):
    assert controller.sync_status["web"]["sync"]["status"] == "OutOfSync"  # not deployed
    controller.reconcile("web")
    assert controller.view("web")["sync"] == {"status": "Synced", "differs": []}
    _write(controller, command=["sleep", "100"])
    controller._reload()
    assert controller.view("web")["sync"] == {"status": "OutOfSync", "differs": ["command"]}
    (controller.manifests / "diplo.yaml").write_text("apps: [broken")
    controller._reload()
    assert controller.view("web")["sync"]["status"] == "Unknown"


def test_rollback_pins_until_resume(controller: Controller):
    engine = controller.ctx.runtime
    controller.reconcile("web")
    _write(controller, command=["sleep", "100"])
    controller._reload()
    controller.reconcile("web")
    (c,) = engine.containers.values()
    assert c.spec.command == ("sleep", "100")

    assert controller.rollback("web") == 1
    controller.reconcile("web")
    (c,) = engine.containers.values()
    assert c.spec.command is None
    view = controller.view("web")
    assert view["pinned"] == {"deployment": 1} and view["sync"]["status"] == "OutOfSync"
    controller._reload()  # the source still says v2: the pin holds
    engine.calls.clear()
    controller.reconcile("web")
    assert engine.calls == []
    deps = controller.ctx.ledger.deployments("web")
    assert deps[0].rollback_of == 1 and deps[0].result == "succeeded"

    assert controller.sync("web", resume=True) is True
    controller.reconcile("web")
    (c,) = engine.containers.values()
    assert c.spec.command == ("sleep", "100")
    assert controller.view("web")["pinned"] is None


def test_rollback_with_nothing_to_restore_changes_nothing(controller: Controller):
    from diplo.errors import InputError

    controller.reconcile("web")
    with pytest.raises(InputError, match="no earlier successful deployment"):
        controller.rollback("web")
    assert controller.ctx.ledger.pins() == {}
