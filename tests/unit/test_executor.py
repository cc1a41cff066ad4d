"""The executor against the in-memory engine and a real SQLite ledger."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from diplo.executor import Executor, container_spec
from diplo.executor.recreate import Recreate
from diplo.executor.run import STRATEGIES
from diplo.ledger import Ledger
from diplo.model import (
    LABEL_APP,
    LABEL_PROJECT,
    LABEL_SPEC_HASH,
    BuildSpec,
    HealthSpec,
    ResolvedPort,
    RunContainer,
)
from diplo.planner import plan
from diplo.runtime.memory import MemoryRuntime

from .factories import IMAGE_ID, app, state


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.db")
    yield led
    led.close()


@pytest.fixture
def engine():
    return MemoryRuntime(images={"busybox:latest": IMAGE_ID})


def converge(engine, ledger, desired, ports=None, **kw):
    p = plan(desired, engine.observe(), ledger.snapshot(), ports or {}, **kw)
    assert not p.problems, p.problems
    return Executor(engine, ledger, workers=4, sleep=lambda s: None).run(p)


def test_create_labels_the_container_and_records_the_deployment(engine, ledger):
    web = app("web")
    ports = {"web": (ResolvedPort("8080/tcp", "", 21000, True),)}
    result = converge(engine, ledger, state(web), ports)
    assert result.ok
    (c,) = engine.containers.values()
    assert c.state == "running" and c.spec.name == "shop-web-1"
    assert c.spec.labels[LABEL_APP] == "web" and c.spec.labels[LABEL_PROJECT] == "shop"
    assert c.spec.labels[LABEL_SPEC_HASH] == web.spec_hash
    assert c.spec.network == "diplo-shop" and "diplo-shop" in engine.networks
    (dep,) = ledger.deployments("web")
    assert dep.result == "succeeded" and dep.image_id == IMAGE_ID
    snap = ledger.snapshot()
    assert snap.apps["web"].spec_hash == web.spec_hash
    assert [p.host_port for p in snap.ports] == [21000]


def test_second_run_makes_no_engine_call(engine, ledger):
    web = app("web")
    converge(engine, ledger, state(web))
    engine.calls.clear()
    assert converge(engine, ledger, state(web)).ok
    assert engine.calls == []


def test_update_stops_old_starts_new_then_removes_old(engine, ledger):
    converge(engine, ledger, state(app("web")))
    (old_id,) = engine.containers
    engine.calls.clear()
    engine.images["shop/web:2"] = "sha256:" + "b" * 64
    new = app("web", image="shop/web:2")
    assert converge(engine, ledger, state(new)).ok
    kinds = [k for k, _ in engine.calls]
    # ...then tags the image it runs, so that a rollback needs no rebuild
    assert kinds == ["stop", "rename", "create", "start", "remove", "tag"]
    assert engine.calls[-2] == ("remove", old_id)
    (c,) = engine.containers.values()
    assert c.spec.labels[LABEL_SPEC_HASH] == new.spec_hash and c.spec.name == "shop-web-1"


def test_failed_start_restores_the_previous_container(engine, ledger):
    converge(engine, ledger, state(app("web")))
    (old_id,) = engine.containers
    engine.images["shop/web:2"] = "sha256:" + "b" * 64
    engine.fail_start["shop/web:2"] = "panic: cannot open config"
    result = converge(engine, ledger, state(app("web", image="shop/web:2")))
    assert not result.ok
    (failed,) = result.failed
    assert failed.step == "start"
    assert "web: start failed: the container exited with code 1" in failed.message
    assert "panic: cannot open config" in failed.message
    (c,) = engine.containers.values()  # the new one is gone, the old one runs again
    assert c.id == old_id and c.state == "running" and c.spec.name == "shop-web-1"
    last = ledger.deployments("web")[0]
    assert last.result == "failed" and last.step == "start"
    assert ledger.snapshot().apps["web"].spec["image"] == "busybox:latest"


def test_failed_first_deployment_leaves_nothing(engine, ledger):
    engine.fail_start["busybox:latest"] = "boom"
    result = converge(engine, ledger, state(app("web")))
    assert not result.ok and engine.containers == {}
    assert "web" not in ledger.snapshot().apps


def test_build_failure_leaves_the_running_app_alone(engine, ledger):
    build = BuildSpec("/src", "Dockerfile", (), "h1")
    converge(engine, ledger, state(app("web", image="shop/web:dev", build=build)))
    engine.calls.clear()
    engine.fail_build.add("shop/web:dev")
    changed = BuildSpec("/src", "Dockerfile", (), "h2")
    result = converge(engine, ledger, state(app("web", image="shop/web:dev", build=changed)))
    (failed,) = result.failed
    assert failed.step == "build" and "RUN exited with 1" in failed.message
    assert [k for k, _ in engine.calls] == ["build"]
    assert all(c.state == "running" for c in engine.containers.values())


def test_unchanged_build_is_not_rebuilt(engine, ledger):
    build = BuildSpec("/src", "Dockerfile", (), "h1")
    web = app("web", image="shop/web:dev", build=build)
    converge(engine, ledger, state(web))
    engine.containers.clear()  # the container went away; the image did not
    engine.calls.clear()
    assert converge(engine, ledger, state(web)).ok
    assert "build" not in [k for k, _ in engine.calls]


def test_unavailable_image_fails_at_pull_with_a_clear_message(engine, ledger):
    result = converge(engine, ledger, state(app("web", image="shop/web:9")))
    (failed,) = result.failed
    assert failed.step == "pull" and "cannot be pulled" in failed.message
    assert engine.containers == {}


def test_dependencies_start_first_and_failures_skip_dependents(engine, ledger):
    db, web = app("db"), app("web", depends_on=("db",))
    converge(engine, ledger, state(web, db))
    creates = [t for k, t in engine.calls if k == "create"]
    assert creates == ["shop-db-1", "shop-web-1"]

    fresh = MemoryRuntime(images={"busybox:latest": IMAGE_ID, "bad:1": "sha256:" + "c" * 64})
    fresh.fail_start["bad:1"] = "crash"
    led2 = Ledger(ledger.path.with_name("other.db"))
    result = Executor(fresh, led2, sleep=lambda s: None).run(
        plan(state(app("db", image="bad:1"), web), fresh.observe(), led2.snapshot(), {})
    )
    assert result.outcomes["db"].ok is False
    assert (
        result.outcomes["web"].skipped
        and "dependency 'db' failed" in result.outcomes["web"].message
    )
    assert not any(k == "create" and t == "shop-web-1" for k, t in fresh.calls)
    led2.close()


def test_one_failing_app_does_not_stop_the_others(engine, ledger):
    engine.images["bad:1"] = "sha256:" + "c" * 64
    engine.fail_start["bad:1"] = "crash"
    result = converge(engine, ledger, state(app("a", image="bad:1"), app("b"), app("c")))
    assert {n: o.ok for n, o in result.outcomes.items()} == {"a": False, "b": True, "c": True}


class BarrierRuntime(MemoryRuntime):
    """start() waits until two starts happen at once: fails if apps run one by one."""

    def __init__(self) -> None:
        super().__init__(images={"busybox:latest": IMAGE_ID})
        self.barrier = threading.Barrier(2, timeout=5)

    def start(self, container_id: str) -> None:
        self.barrier.wait()
        super().start(container_id)


def test_independent_apps_deploy_in_parallel(ledger):
    engine = BarrierRuntime()
    assert converge(engine, ledger, state(app("a"), app("b"))).ok


def test_prune_removes_containers_and_forgets_the_app(engine, ledger):
    converge(engine, ledger, state(app("web"), app("old")))
    result = converge(engine, ledger, state(app("web")), prune=True)
    assert result.outcomes["old"].ok
    assert [c.spec.name for c in engine.containers.values()] == ["shop-web-1"]
    assert "old" not in ledger.snapshot().apps


# --- health gates, deadlines, cancellation --------------------------------------------------


class FakeTime:
    """A clock that only moves when the executor sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def gated(engine, ledger, desired, t: FakeTime, **kw):
    p = plan(desired, engine.observe(), ledger.snapshot(), {})
    ex = Executor(engine, ledger, workers=4, sleep=t.sleep, clock=t.clock, wall=t.clock, **kw)
    return ex, p


def cmd_app(name="web", image="busybox:latest", **health):
    spec = HealthSpec(
        kind="cmd",
        cmd=("check",),
        interval=1,
        timeout=1,
        retries=3,
        start_period=health.pop("start_period", 0),
    )
    return app(name, image=image, health=spec, **health)


def test_unhealthy_release_is_rolled_back_with_the_probe_error(ledger):
    t = FakeTime()
    engine = MemoryRuntime(
        images={"busybox:latest": IMAGE_ID, "v2:latest": "sha256:" + "2" * 64}, wall=t.clock
    )
    ex, p = gated(engine, ledger, state(cmd_app()), t)
    assert ex.run(p).ok
    (good_id,) = engine.containers
    engine.exec_results["v2:latest"] = (1, "db unreachable")
    ex, p = gated(engine, ledger, state(cmd_app(image="v2:latest")), t)
    result = ex.run(p)
    (failed,) = result.failed
    assert failed.step == "health"
    assert "unhealthy after 3 failed probes (last: exit 1: db unreachable)" in failed.message
    (c,) = engine.containers.values()
    assert c.id == good_id and c.state == "running"
    probes = ledger.probes("web")
    assert probes[0].ok == 0 and probes[0].detail == "exit 1: db unreachable"


def test_deadline_fails_the_deploy_and_names_the_last_probe(ledger):
    t = FakeTime()
    engine = MemoryRuntime(images={"busybox:latest": IMAGE_ID}, wall=t.clock)
    engine.exec_results["busybox:latest"] = (1, "warming up")
    slow = replace(cmd_app(start_period=600), deploy_timeout=30)
    ex, p = gated(engine, ledger, state(slow), t)
    (failed,) = ex.run(p).failed
    assert failed.step == "health"
    assert "deploy deadline of 30s exceeded (last probe: exit 1: warming up)" in failed.message
    assert engine.containers == {}  # a first deploy that fails leaves nothing
    assert 1030 <= t.now <= 1031


def test_cancel_during_health_wait_restores_the_previous_revision(ledger):
    t = FakeTime()
    engine = MemoryRuntime(
        images={"busybox:latest": IMAGE_ID, "v2:latest": "sha256:" + "2" * 64}, wall=t.clock
    )
    ex, p = gated(engine, ledger, state(cmd_app()), t)
    ex.run(p)
    (good_id,) = engine.containers
    engine.exec_results["v2:latest"] = (1, "not yet")
    ex, p = gated(engine, ledger, state(cmd_app(image="v2:latest", start_period=600)), t)
    real_sleep = t.sleep

    def sleep_then_cancel(seconds: float) -> None:
        real_sleep(seconds)
        if t.now > 1005:
            ex.cancel("Ctrl-C")

    ex._sleep = sleep_then_cancel
    result = ex.run(p)
    assert result.cancelled and not result.ok
    assert "cancelled by Ctrl-C" in result.outcomes["web"].message
    (c,) = engine.containers.values()
    assert c.id == good_id and c.state == "running"
    assert ledger.deployments("web")[0].result == "cancelled"


def test_diplo_cancel_through_the_ledger_stops_a_build(ledger):
    engine = MemoryRuntime(images={"busybox:latest": IMAGE_ID})
    engine.slow_build.add("shop/web:dev")
    web = app("web", image="shop/web:dev", build=BuildSpec("/src", "Dockerfile", (), "h"))
    p = plan(state(web), engine.observe(), ledger.snapshot(), {})
    ex = Executor(engine, ledger)
    outcome: dict[str, object] = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("r", ex.run(p)))
    worker.start()
    deadline = time.monotonic() + 5
    # Cancel once the build runs (earlier, it would stop the deploy before the build).
    while ("build", "shop/web:dev") not in engine.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    asked = time.monotonic()
    assert ledger.request_cancel("web")
    worker.join(5)
    assert not worker.is_alive() and time.monotonic() - asked < 2
    result = outcome["r"]
    assert result.outcomes["web"].cancelled and result.outcomes["web"].step == "build"
    assert ledger.deployments("web")[0].result == "cancelled"
    assert engine.containers == {}


def test_dependent_waits_for_an_unchanged_dependency_to_be_healthy(ledger):
    t = FakeTime()
    engine = MemoryRuntime(images={"busybox:latest": IMAGE_ID}, wall=t.clock)
    db = cmd_app("db")
    ex, p = gated(engine, ledger, state(db), t)
    ex.run(p)
    engine.exec_results["busybox:latest"] = (1, "db down")
    web = app("web", depends_on=("db",))
    ex, p = gated(engine, ledger, state(db, web), t)
    result = ex.run(p)
    (failed,) = result.failed
    assert failed.app == "web" and failed.step == "depends_on"
    assert "dependency 'db' is not healthy" in failed.message
    assert [c.spec.name for c in engine.containers.values()] == ["shop-db-1"]


def test_no_wait_returns_after_start(ledger):
    t = FakeTime()
    engine = MemoryRuntime(images={"busybox:latest": IMAGE_ID}, wall=t.clock)
    engine.exec_results["busybox:latest"] = (1, "never healthy")
    ex, p = gated(engine, ledger, state(cmd_app()), t, wait=False)
    assert ex.run(p).ok and t.now == 1000.0


def test_the_apps_strategy_replaces_its_container(engine, ledger, monkeypatch):
    seen = []

    class Recording(Recreate):
        def deploy(self, job, action):
            seen.append((job.app, action.name, self.ctx.wait))
            return super().deploy(job, action)

    monkeypatch.setitem(STRATEGIES, "recreate", Recording)
    result = converge(engine, ledger, state(app("web")))
    assert result.ok and seen == [("web", "shop-web-1", True)]
    (cid,) = engine.containers
    assert result.outcomes["web"].container_id == cid


class BuggyRuntime(MemoryRuntime):
    """Inspecting a container of `buggy_image` raises an exception no code expects."""

    def state(self, container_id, listed=None):
        if self.containers[container_id].spec.image == "v2:latest":
            raise UnicodeEncodeError("ascii", "/é", 1, 2, "ordinal not in range(128)")
        return super().state(container_id, listed)


def test_an_unexpected_exception_during_a_deploy_rolls_back_and_fails_the_deployment(ledger):
    engine = BuggyRuntime(images={"busybox:latest": IMAGE_ID, "v2:latest": "sha256:" + "2" * 64})
    assert converge(engine, ledger, state(app("web"))).ok
    (good_id,) = engine.containers
    result = converge(engine, ledger, state(app("web", image="v2:latest")))
    (failed,) = result.failed
    assert failed.step == "health"
    assert "internal error: UnicodeEncodeError" in failed.message
    (c,) = engine.containers.values()  # the new container is gone, the old one serves
    assert c.id == good_id and c.state == "running" and c.spec.name == "shop-web-1"
    last = ledger.deployments("web")[0]
    assert last.result == "failed" and last.step == "health"
    assert last.error.startswith("internal error: UnicodeEncodeError")
    assert ledger.snapshot().apps["web"].spec["image"] == "busybox:latest"
    # ...and the next reconcile retries the release instead of adopting anything
    again = plan(state(app("web", image="v2:latest")), engine.observe(), ledger.snapshot(), {})
    assert [a.kind for a in again.apps] == ["update"]


def dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_after_a_crash_mid_deploy_the_verified_release_serves_and_the_row_is_closed(
    ledger, tmp_path
):
    import sqlite3

    t = FakeTime()
    engine = MemoryRuntime(
        images={"busybox:latest": IMAGE_ID, "v2:latest": "sha256:" + "2" * 64}, wall=t.clock
    )
    ex, p = gated(engine, ledger, state(cmd_app()), t)
    assert ex.run(p).ok
    (good_id,) = engine.containers
    # A deploy of v2 dies between stop-old and the health verdict (OOM, kill -9, reboot):
    v2 = cmd_app(image="v2:latest")
    crashed = ledger.start_deployment("web", "shop", v2.spec_hash)
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        db.execute("UPDATE deployments SET pid = ? WHERE id = ?", (dead_pid(), crashed))
    engine.stop(good_id, 10)
    engine.rename(good_id, f"shop-web-1-old-{good_id[:12]}")
    actions = plan(state(v2), engine.observe(), ledger.snapshot(), {}).apps[0].actions
    (run,) = [a for a in actions if isinstance(a, RunContainer)]
    engine.start(engine.create(replace(container_spec(run, 10))))
    # v2 is in fact broken: the next reconcile must find out, not adopt it.
    engine.exec_results["v2:latest"] = (1, "db unreachable")
    ex, p = gated(engine, ledger, state(v2), t)
    (failed,) = ex.run(p).failed
    assert failed.step == "health"
    (c,) = engine.containers.values()
    assert c.id == good_id and c.state == "running" and c.spec.name == "shop-web-1"
    assert ledger.snapshot().apps["web"].spec["image"] == "busybox:latest"
    swept = ledger.deployment(crashed)
    assert swept.result == "interrupted" and swept.error == "the deploying process died"


def slow_stopping(ledger, **kw):
    """v1 runs on an image whose PID 1 ignores SIGTERM (every stop takes the full grace
    period); returns the engine, v1's container id and a v2 release."""
    engine = MemoryRuntime(images={"busybox:latest": IMAGE_ID, "v2:latest": "sha256:" + "2" * 64})
    engine.slow_stop.add("busybox:latest")
    assert converge(engine, ledger, state(app("web", stop_grace_period=5, **kw))).ok
    (old_id,) = engine.containers
    return engine, old_id, app("web", image="v2:latest", stop_grace_period=5, **kw)


def test_cancel_during_a_slow_stop_of_the_old_container_is_fast_and_restores_it(ledger):
    engine, old_id, v2 = slow_stopping(ledger)
    p = plan(state(v2), engine.observe(), ledger.snapshot(), {})
    ex = Executor(engine, ledger)
    outcome: dict[str, object] = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("r", ex.run(p)))
    worker.start()
    deadline = time.monotonic() + 5
    while ("stop", old_id) not in engine.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    asked = time.monotonic()
    assert ledger.request_cancel("web")  # `diplo cancel` from another process
    worker.join(10)
    took = time.monotonic() - asked
    assert took < 1.0, took
    result = outcome["r"]
    assert result.cancelled
    assert "stop-old cancelled by diplo cancel" in result.outcomes["web"].message
    (c,) = engine.containers.values()
    assert c.id == old_id and c.state == "running" and c.spec.name == "shop-web-1"
    assert ledger.deployments("web")[0].result == "cancelled"


def test_the_stop_of_the_old_container_is_capped_at_the_deploy_deadline(ledger):
    engine, _, v2 = slow_stopping(ledger)
    v2 = replace(v2, deploy_timeout=1)
    started = time.monotonic()
    assert converge(engine, ledger, state(v2)).ok
    assert time.monotonic() - started < 1.5
    assert engine.stop_timeouts[-1] == 0  # 5s of grace cut to the (under 1s) left


def test_a_deploy_deadline_passing_during_the_stop_fails_it_and_restores_the_old(ledger):
    t = FakeTime()  # the deploy's clock jumps past its deadline once the stop began
    engine, old_id, v2 = slow_stopping(ledger)
    p = plan(state(v2), engine.observe(), ledger.snapshot(), {})
    clock = lambda: t.now + (1000 if ("stop", old_id) in engine.calls else 0)  # noqa: E731
    ex = Executor(engine, ledger, clock=clock)
    started = time.monotonic()
    (failed,) = ex.run(p).failed
    assert time.monotonic() - started < 1.0
    assert failed.step == "stop-old" and "deploy deadline of 120s exceeded" in failed.message
    (c,) = engine.containers.values()
    assert c.id == old_id and c.state == "running"
