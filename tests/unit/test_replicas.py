"""Replicas and the start-first strategy: the planner and both strategies against the
in-memory engine, a real SQLite ledger and a recording Router."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from diplo.cli.render import describe_app_plan
from diplo.executor import Executor
from diplo.executor.job import POLL
from diplo.executor.traffic import SETTLE
from diplo.ledger import Ledger
from diplo.model import (
    LABEL_REPLICA,
    LABEL_SPEC_HASH,
    HealthSpec,
    RecordApplied,
    RemoveContainers,
    RunContainer,
    StartContainer,
)
from diplo.planner import plan
from diplo.ports import assign_ports
from diplo.runtime.memory import MemoryRuntime

from .factories import IMAGE_ID, app, port, state

V2 = "sha256:" + "2" * 64


class FakeTime:
    """A clock that only moves when the executor sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeRouter:
    """Records every switch with what the engine held at that moment; `busy` is what
    in_flight answers, one value per call (the last one repeats)."""

    def __init__(self, engine: MemoryRuntime, busy: Sequence[int] = (0,)) -> None:
        self.engine = engine
        self.switches: list[tuple[str, list[str], dict[str, str]]] = []
        self.polls: list[list[str]] = []
        self.busy = list(busy)
        self.on_poll = lambda: None

    def switch(self, key: str, upstreams: Sequence[str]) -> None:
        seen = {c.spec.name: c.state for c in self.engine.containers.values()}
        self.switches.append((key, list(upstreams), seen))

    def in_flight(self, upstreams: Sequence[str]) -> int:
        self.polls.append(list(upstreams))
        self.on_poll()
        return self.busy.pop(0) if len(self.busy) > 1 else self.busy[0]


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.db")
    yield led
    led.close()


@pytest.fixture
def t():
    return FakeTime()


@pytest.fixture
def engine(t):
    return MemoryRuntime(images={"busybox:latest": IMAGE_ID, "v2:latest": V2}, wall=t.clock)


# A drain polls every POLL s until nothing is in flight and SETTLE s have passed.
SETTLE_POLLS = 1 + round(SETTLE / POLL)


def web(replicas: int = 1, **kw):
    kw.setdefault("strategy", "recreate")
    return app("web", replicas=replicas, **kw)


def routed(replicas: int = 2, **kw):
    """An app behind the proxy: domains and an HTTP port, start-first."""
    kw.setdefault("strategy", "start-first")
    kw.setdefault("drain", 5.0)
    return app("web", replicas=replicas, domains=("shop.example.com",), http_port=8080, **kw)


def deploy(engine, ledger, t, *apps, router=None, executor_hook=None):
    p = plan(state(*apps), engine.observe(), ledger.snapshot(), {})
    assert not p.problems, p.problems
    ex = Executor(
        engine, ledger, workers=4, sleep=t.sleep, clock=t.clock, wall=t.clock, router=router
    )
    if executor_hook:
        executor_hook(ex)
    return ex.run(p), p


def replicas(engine):
    """replica number -> (id, name, state, spec hash) of each container."""
    out = {}
    for c in engine.containers.values():
        k = int(c.spec.labels[LABEL_REPLICA])
        assert k not in out, f"two containers of replica {k}"
        out[k] = (c.id, c.spec.name, c.state, c.spec.labels[LABEL_SPEC_HASH])
    return out


def ids_touched(engine):
    return {target for _, target in engine.calls}


# --- the planner and scaling -------------------------------------------------------------


def test_replicas_are_project_app_k_with_their_label(engine, ledger, t):
    result, _ = deploy(engine, ledger, t, web(3))
    assert result.ok
    got = replicas(engine)
    assert {k: (name, st) for k, (_, name, st, _) in got.items()} == {
        1: ("shop-web-1", "running"),
        2: ("shop-web-2", "running"),
        3: ("shop-web-3", "running"),
    }
    assert ledger.snapshot().apps["web"].spec["replicas"] == 3


def test_scaling_3_to_1_to_3_touches_only_the_extra_replicas(engine, ledger, t):
    deploy(engine, ledger, t, web(3))
    before = replicas(engine)
    engine.calls.clear()

    result, p = deploy(engine, ledger, t, web(1))
    assert result.ok
    (ap,) = p.apps
    assert ap.kind == "update" and "replicas 3 -> 1" in ap.reason
    assert not any(isinstance(a, RunContainer) for a in ap.actions)
    assert replicas(engine) == {1: before[1]}
    assert ids_touched(engine) == {before[2][0], before[3][0]}  # stop + remove, no more
    (scaled,) = [e for e in ledger.events("web") if e.kind == "app.scaled"]
    assert scaled.message == "replicas 3 -> 1: removed shop-web-2, shop-web-3"
    assert ledger.snapshot().apps["web"].spec.get("replicas") is None  # back to one

    engine.calls.clear()
    result, p = deploy(engine, ledger, t, web(3))
    assert result.ok
    (ap,) = p.apps
    (run,) = [a for a in ap.actions if isinstance(a, RunContainer)]
    assert run.replicas == (2, 3) and run.replaces == ()
    assert describe_app_plan(ap) == [
        "~ web                  update: replicas 1 -> 3 (start 2, 3) [replicas 1/3]"
    ]
    after = replicas(engine)
    assert after[1] == before[1]  # the survivor: same container, never stopped
    assert before[1][0] not in ids_touched(engine)
    assert sorted(after) == [1, 2, 3] and all(st == "running" for _, _, st, _ in after.values())


def test_replicas_are_not_in_the_spec_hash_but_a_new_spec_replaces_every_replica(engine, ledger, t):
    assert web(1).spec_hash == web(3).spec_hash
    deploy(engine, ledger, t, web(3))
    old = replicas(engine)
    engine.calls.clear()
    new = web(3, env=(("A", "1"),))
    result, p = deploy(engine, ledger, t, new)
    assert result.ok
    (run,) = [a for a in p.apps[0].actions if isinstance(a, RunContainer)]
    assert run.replicas == (1, 2, 3) and len(run.replaces) == 3
    got = replicas(engine)
    assert all(h == new.spec_hash for *_, h in got.values())
    assert not {i for i, *_ in old.values()} & {i for i, *_ in got.values()}
    # recreate: one replica at a time, each stopped just before its successor starts
    kinds = [k for k, _ in engine.calls if k in ("stop", "create")]
    assert kinds == ["stop", "create"] * 3


def test_a_drifted_replica_is_the_only_one_touched(engine, ledger, t):
    deploy(engine, ledger, t, web(3))
    before = replicas(engine)
    engine.containers.pop(before[2][0])  # removed behind Diplo's back
    engine.containers[before[3][0]].state = "exited"  # killed
    engine.calls.clear()
    result, p = deploy(engine, ledger, t, web(3))
    assert result.ok
    (ap,) = p.apps
    starts = [a for a in ap.actions if isinstance(a, StartContainer)]
    runs = [a for a in ap.actions if isinstance(a, RunContainer)]
    assert [s.container.id for s in starts] == [before[3][0]]
    assert [r.replicas for r in runs] == [(2,)]
    after = replicas(engine)
    assert after[1] == before[1] and after[3][0] == before[3][0]
    assert after[2][0] != before[2][0] and after[2][1] == "shop-web-2"
    assert before[1][0] not in ids_touched(engine)


def test_domains_and_tls_alone_are_a_proxy_change_not_a_restart(engine, ledger, t):
    first = routed(2)
    deploy(engine, ledger, t, first)
    engine.calls.clear()
    moved = replace(first, domains=("www.example.com",), tls="internal")
    assert moved.spec_hash == first.spec_hash
    result, p = deploy(engine, ledger, t, moved)
    assert result.ok
    (ap,) = p.apps
    assert ap.kind == "update" and "routes (proxy only)" in ap.reason
    assert [type(a) for a in ap.actions] == [RecordApplied]
    assert isinstance(ap.actions[0], RecordApplied) and ap.actions[0].reroute
    assert engine.calls == []
    assert ledger.snapshot().apps["web"].spec["domains"] == ["www.example.com"]


def test_scale_down_behind_the_router_switches_then_drains_then_removes(engine, ledger, t):
    router = FakeRouter(engine, busy=(2, 1, 0))
    deploy(engine, ledger, t, routed(3), router=router)
    kept = replicas(engine)[1]
    router.switches.clear()
    result, p = deploy(engine, ledger, t, routed(1), router=router)
    assert result.ok
    assert isinstance(p.apps[0].actions[0], RemoveContainers)
    ((key, ups, seen),) = router.switches
    assert key == "shop/web" and len(ups) == 1 and ups[0].endswith(":8080")
    assert seen["shop-web-2"] == "running" and seen["shop-web-3"] == "running"
    # polled until 0 in flight, and on for the settle time after the switch
    assert len(router.polls) == SETTLE_POLLS and all(len(u) == 2 for u in router.polls)
    assert replicas(engine) == {1: kept}


# --- start-first ---------------------------------------------------------------------------


def test_start_first_switches_once_after_every_new_replica_is_healthy(engine, ledger, t):
    router = FakeRouter(engine)
    deploy(engine, ledger, t, routed(2), router=router)
    old = replicas(engine)
    old_ips = {f"{engine.containers[i].ip}:8080" for i, *_ in old.values()}
    router.switches.clear()
    router.busy = [3, 1, 0]
    new = routed(2, image="v2:latest")
    result, _ = deploy(engine, ledger, t, new, router=router)
    assert result.ok, result.failed
    ((key, ups, seen),) = router.switches
    assert key == "shop/web"
    # at the switch, both old replicas and both new ones run
    assert seen["shop-web-1"] == seen["shop-web-2"] == "running"
    nexts = [n for n in seen if "-next-" in n]
    assert len(nexts) == 2 and all(seen[n] == "running" for n in nexts)
    assert len(ups) == 2 and not set(ups) & old_ips
    # the drain polled the old upstreams until nothing was in flight
    assert len(router.polls) == SETTLE_POLLS and all(set(u) == old_ips for u in router.polls)
    got = replicas(engine)
    assert {name for _, name, _, _ in got.values()} == {"shop-web-1", "shop-web-2"}
    assert all(h == new.spec_hash for *_, h in got.values())
    assert not {i for i, *_ in old.values()} & {i for i, *_ in got.values()}
    upstream_ips = {u.split(":")[0] for u in ups}
    assert upstream_ips == {engine.containers[i].ip for i, *_ in got.values()}
    (dep, *_) = ledger.deployments("web")
    assert dep.result == "succeeded"


def test_start_first_drain_stops_at_deploy_drain(engine, ledger, t):
    router = FakeRouter(engine, busy=(5,))  # a request that never ends
    deploy(engine, ledger, t, routed(1), router=router)
    old_id = next(iter(engine.containers))
    polls: list[float] = []
    router.on_poll = lambda: polls.append(t.now)
    result, _ = deploy(engine, ledger, t, routed(1, image="v2:latest", drain=7.0), router=router)
    assert result.ok
    assert polls and 6.8 <= polls[-1] - polls[0] <= 7.0
    assert old_id not in engine.containers


def test_start_first_failing_gate_never_switches_and_leaves_the_old_replicas(engine, ledger, t):
    router = FakeRouter(engine)
    deploy(engine, ledger, t, routed(2), router=router)
    old = replicas(engine)
    router.switches.clear()
    engine.calls.clear()
    engine.fail_start["v2:latest"] = "panic: no config"
    result, _ = deploy(engine, ledger, t, routed(2, image="v2:latest"), router=router)
    assert not result.ok
    assert "panic: no config" in result.failed[0].message
    assert router.switches == []
    assert replicas(engine) == old
    old_ids = {i for i, *_ in old.values()}
    assert not old_ids & ids_touched(engine)  # never stopped, restarted or renamed
    assert ledger.deployments("web")[0].result == "failed"


def test_start_first_cancel_during_the_gate_keeps_the_old_release(engine, ledger, t):
    router = FakeRouter(engine)
    deploy(engine, ledger, t, routed(2), router=router)
    old = replicas(engine)
    router.switches.clear()
    engine.exec_results["v2:latest"] = (1, "warming up")
    slow = routed(
        2,
        image="v2:latest",
        health=HealthSpec(kind="cmd", cmd=("check",), interval=1, retries=3, start_period=600),
    )

    def cancel_later(ex):
        real = t.sleep

        def sleep(seconds):
            real(seconds)
            if t.now > 1010:
                ex.cancel("Ctrl-C")

        ex._sleep = sleep

    result, _ = deploy(engine, ledger, t, slow, router=router, executor_hook=cancel_later)
    assert result.cancelled
    assert router.switches == []
    assert replicas(engine) == old
    assert ledger.deployments("web")[0].result == "cancelled"


def test_start_first_cancel_during_the_drain_sends_traffic_back(engine, ledger, t):
    router = FakeRouter(engine, busy=(1,))
    deploy(engine, ledger, t, routed(2), router=router)
    old = replicas(engine)
    old_ups = sorted(f"{engine.containers[i].ip}:8080" for i, *_ in old.values())
    router.switches.clear()
    box = {}
    router.on_poll = lambda: len(router.polls) == 2 and box["ex"].cancel("Ctrl-C")
    result, _ = deploy(
        engine,
        ledger,
        t,
        routed(2, image="v2:latest"),
        router=router,
        executor_hook=lambda ex: box.setdefault("ex", ex),
    )
    assert result.cancelled and result.outcomes["web"].step == "drain"
    assert len(router.switches) == 2
    assert sorted(router.switches[1][1]) == old_ups  # back to the old replicas
    assert replicas(engine) == old


def test_start_first_without_a_router_starts_gates_then_stops(engine, ledger, t):
    deploy(engine, ledger, t, routed(1))
    (old_id,) = engine.containers
    engine.calls.clear()
    result, _ = deploy(engine, ledger, t, routed(1, image="v2:latest"))
    assert result.ok
    kinds = [k for k, target in engine.calls if k in ("create", "start", "stop", "remove")]
    assert kinds == ["create", "start", "stop", "remove"]
    assert ("stop", old_id) in engine.calls and ("remove", old_id) in engine.calls
    ((_, name, state_, _),) = replicas(engine).values()
    assert name == "shop-web-1" and state_ == "running"


def test_start_first_scale_up_switches_to_old_and_new_together(engine, ledger, t):
    router = FakeRouter(engine)
    deploy(engine, ledger, t, routed(1), router=router)
    (old_id,) = engine.containers
    router.switches.clear()
    result, _ = deploy(engine, ledger, t, routed(3), router=router)
    assert result.ok
    ((_, ups, _),) = router.switches
    assert len(ups) == 3 and f"{engine.containers[old_id].ip}:8080" in ups
    assert router.polls == []  # nothing left the pool: nothing to drain
    assert old_id in engine.containers


def test_ephemeral_host_ports_for_replicated_apps_are_not_recorded(engine, ledger, t):
    many = web(2, ports=(port(80),))
    single = app("api", ports=(port(80),))
    assigned = assign_ports([many, single], [], engine.observe(), lambda ip, p, proto: True)
    assert [p.host_port for p in assigned.ports["web"]] == [0]  # the engine picks, per container
    assert assigned.ports["api"][0].host_port >= 20000  # one container: a stable port
    p = plan(state(many), engine.observe(), ledger.snapshot(), {"web": assigned.ports["web"]})
    ex = Executor(engine, ledger, workers=4, sleep=t.sleep, clock=t.clock, wall=t.clock)
    assert ex.run(p).ok
    assert len(engine.containers) == 2 and ledger.snapshot().ports == ()


def test_start_first_waits_for_the_slowest_replica_before_switching(engine, ledger, t):
    router = FakeRouter(engine)
    health = HealthSpec(kind="cmd", cmd=("check",), interval=1, retries=3, start_period=60)
    deploy(engine, ledger, t, routed(2, health=health), router=router)
    router.switches.clear()
    engine.exec_results["v2:latest"] = (1, "warming up")
    ready_at: list[float] = []
    switched_at: list[float] = []
    real_switch = router.switch

    def switch(key, upstreams):
        switched_at.append(t.now)
        real_switch(key, upstreams)

    router.switch = switch  # type: ignore[method-assign]

    def warm_up_later(ex):
        real = t.sleep

        def sleep(seconds):
            real(seconds)
            if t.now > 1020 and not ready_at:
                engine.exec_results["v2:latest"] = (0, "ok")
                ready_at.append(t.now)

        ex._sleep = sleep

    result, _ = deploy(
        engine,
        ledger,
        t,
        routed(2, image="v2:latest", health=health),
        router=router,
        executor_hook=warm_up_later,
    )
    assert result.ok
    assert len(switched_at) == 1 and ready_at and switched_at[0] >= ready_at[0]
    failed_before = [p for p in ledger.probes("web", 100) if not p.ok]
    assert failed_before  # the new replicas were probed, and failed, before the switch
