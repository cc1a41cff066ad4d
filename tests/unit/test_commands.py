"""The operations run on this host (`LocalOps`): status, rollback and sync from manifest
files, over the in-memory engine and a real SQLite ledger."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
import yaml

from diplo.errors import InputError
from diplo.executor import NullReporter
from diplo.ledger import Ledger
from diplo.model import LABEL_APP, LABEL_SPEC_HASH
from diplo.ops.apply import ApplyReport, DeployHandle
from diplo.ops.commands import LocalOps
from diplo.ops.context import Context
from diplo.runtime.memory import MemoryRuntime

from .factories import IMAGE_ID


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    """Log events are captured, not printed: these tests log from threads, and must not
    depend on the stream an earlier test left structlog writing to."""
    with structlog.testing.capture_logs() as entries:
        yield entries


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.engine = MemoryRuntime(images={"busybox:latest": IMAGE_ID})
        self.ledger = Ledger(tmp_path / "home" / "ledger.db")
        self.ctx = Context(_runtime=self.engine, _ledger=self.ledger)
        self.file = tmp_path / "m" / "diplo.yaml"
        self.file.parent.mkdir()
        self.said: list[str] = []
        self.watched: list[ApplyReport] = []

    @contextlib.contextmanager
    def watch(self, report: ApplyReport, handle: DeployHandle) -> Iterator[NullReporter]:
        self.watched.append(report)
        yield NullReporter()

    def ops(self, files_optional: bool = False) -> LocalOps:
        return LocalOps(
            self.ctx,
            [str(self.file)],
            watch=self.watch,
            say=self.said.append,
            files_optional=files_optional,
        )

    def write(self, **apps: dict[str, Any]) -> None:
        self.file.write_text(yaml.safe_dump({"project": "shop", "apps": apps}))

    def container(self, app: str) -> Any:
        (c,) = [c for c in self.engine.containers.values() if c.spec.labels[LABEL_APP] == app]
        return c


def web(**kw: Any) -> dict[str, Any]:
    return {"image": "busybox:latest", "health": {"start_period": "0s"}, **kw}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    w = World(tmp_path)
    yield w
    w.ledger.close()


@pytest.fixture
def two_releases(world: World) -> World:
    """web deployed twice: deployment 1 without a command, deployment 2 with one."""
    ops = world.ops()
    world.write(web=web())
    assert ops.sync("web", resume=False).ok
    world.write(web=web(command=["sleep", "1000"]))
    assert ops.sync("web", resume=False).ok
    world.said.clear()
    return world


def test_sync_deploys_the_app_from_the_files(world: World):
    world.write(web=web(), api=web())
    outcome = world.ops().sync("web", resume=False)
    assert outcome.ok and outcome.detail == "synced"
    assert outcome.report is not None and outcome.report.plan.app("web") is not None
    assert {c.spec.name for c in world.engine.containers.values()} == {"shop-web-1"}
    assert len(world.watched) == 1  # the face saw the deploy
    (dep,) = world.ledger.deployments("web")
    assert dep.result == "succeeded"
    assert dep.source == f"folder:{world.file.parent.resolve()}"


def test_sync_of_an_app_not_in_the_files(world: World):
    world.write(web=web())
    with pytest.raises(InputError, match=r"no app named 'nope' in .*diplo\.yaml"):
        world.ops().sync("nope", resume=False)
    assert world.engine.containers == {}


def test_sync_that_fails_says_so(world: World):
    world.write(web=web())
    world.engine.fail_start["busybox:latest"] = "exec format error"
    outcome = world.ops().sync("web", resume=False)
    assert not outcome.ok and outcome.detail == "sync failed"
    (dep,) = world.ledger.deployments("web")
    assert dep.result == "failed"


def test_status_lists_the_apps(world: World):
    world.write(web=web(), api=web())
    ops = world.ops()
    ops.sync("web", resume=False)
    statuses = ops.status(None)
    assert [a.app for a in statuses.apps] == ["web"]
    assert statuses.apps[0].state == "running"
    assert statuses.manifest_error is None and statuses.served_by is None
    with pytest.raises(InputError):
        ops.status("api")  # in the files, never deployed


def test_rollback_restores_the_previous_release_and_pins_it(two_releases: World):
    world = two_releases
    first = min(world.ledger.deployments("web"), key=lambda d: d.id)
    outcome = world.ops().rollback("web", None)
    assert outcome.ok, outcome.report
    assert outcome.detail == f"rolled back to deployment {first.id}"
    assert world.said == [f"web: rolling back to deployment {first.id} (revision 1)"]
    c = world.container("web")
    assert c.spec.labels[LABEL_SPEC_HASH] == first.spec_hash
    assert c.spec.command is None and c.spec.image == IMAGE_ID  # the kept image, by ID
    assert world.ledger.pins()["web"].deployment_id == first.id
    newest = world.ledger.deployments("web")[0]
    assert newest.rollback_of == first.id and newest.result == "succeeded"


def test_a_pinned_app_stays_until_a_sync_with_resume(two_releases: World):
    world = two_releases
    ops = world.ops()
    first = min(world.ledger.deployments("web"), key=lambda d: d.id)
    assert ops.rollback("web", None).ok
    assert ops.sync("web", resume=False).ok  # still pinned: the rollback stays
    assert world.container("web").spec.command is None
    assert world.said == [f"web: rolling back to deployment {first.id} (revision 1)"]
    assert ops.sync("web", resume=True).ok
    assert world.said[-1] == "web: following the manifest again"
    assert world.ledger.pins() == {}
    assert world.container("web").spec.command == ("sleep", "1000")


def test_resume_of_an_app_that_is_not_pinned_says_nothing(two_releases: World):
    world = two_releases
    assert world.ops().sync("web", resume=True).ok
    assert world.said == []


def test_rollback_to_a_named_deployment(two_releases: World):
    world = two_releases
    first = min(world.ledger.deployments("web"), key=lambda d: d.id)
    outcome = world.ops().rollback("web", first.id)
    assert outcome.ok and world.container("web").spec.command is None
    with pytest.raises(InputError, match="no deployment 99 of app 'web'"):
        world.ops().rollback("web", 99)


def test_a_rollback_that_fails_drops_its_pin_and_keeps_the_release(two_releases: World):
    world = two_releases
    before = world.container("web")
    world.engine.fail_start[IMAGE_ID] = "boom"  # the kept image, run by ID, crashes
    outcome = world.ops().rollback("web", None)
    assert not outcome.ok
    assert outcome.detail == "rollback failed; web is not pinned"
    assert world.ledger.pins() == {}
    after = world.container("web")  # the release that ran stays
    assert after.id == before.id and after.state == "running"


def test_rollback_needs_no_manifest_when_files_are_optional(two_releases: World):
    world = two_releases
    world.file.unlink()
    with pytest.raises(InputError, match="no such file"):
        world.ops().rollback("web", None)
    # The restored record is the app's desired state: with the default file absent,
    # nothing else is desired (and nothing is pruned).
    outcome = world.ops(files_optional=True).rollback("web", None)
    assert outcome.ok
    assert world.container("web").spec.command is None


def test_nothing_to_roll_back_to(world: World):
    world.write(web=web())
    ops = world.ops()
    ops.sync("web", resume=False)
    with pytest.raises(InputError, match="no earlier successful deployment"):
        ops.rollback("web", None)
    assert world.ledger.pins() == {}
