"""Replicas through the operations layer: status shows ready/desired, rollback restores
every replica."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from diplo.model import LABEL_APP, LABEL_REPLICA, LABEL_SPEC_HASH
from diplo.ops import lifecycle

from .test_commands import World, logs, web  # noqa: F401  (logs: an autouse fixture)
from .test_replicas import FakeRouter


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    w = World(tmp_path)
    yield w
    w.ledger.close()


def containers(world: World) -> list[Any]:
    found = [c for c in world.engine.containers.values() if c.spec.labels[LABEL_APP] == "web"]
    return sorted(found, key=lambda c: int(c.spec.labels[LABEL_REPLICA]))


def routed(**kw: Any) -> dict[str, Any]:
    return web(replicas=3, ports=["8080"], domains=["shop.localhost"], **kw)


def test_status_shows_ready_over_desired_replicas(world: World):
    world.write(web=routed())
    ops = world.ops()
    assert ops.sync("web", resume=False).ok
    (row,) = ops.status(None).apps
    assert (row.replicas, row.state, row.desired) == ("3/3", "running", 3)
    assert row.health == "healthy" and row.health_detail.startswith("replica 1: ")
    containers(world)[1].state = "exited"
    (row,) = ops.status(None).apps
    assert (row.replicas, row.state) == ("2/3", "partial")


def test_rollback_restores_every_replica_of_the_earlier_release(world: World):
    ops = world.ops()
    world.write(web=routed())
    assert ops.sync("web", resume=False).ok
    first = world.ledger.deployments("web")[0]
    world.write(web=routed(command=["sleep", "1000"]))
    assert ops.sync("web", resume=False).ok
    assert all(c.spec.command == ("sleep", "1000") for c in containers(world))
    outcome = ops.rollback("web", None)
    assert outcome.ok, outcome.report
    got = containers(world)
    assert [c.spec.name for c in got] == ["shop-web-1", "shop-web-2", "shop-web-3"]
    assert all(c.spec.labels[LABEL_SPEC_HASH] == first.spec_hash for c in got)
    assert all(c.spec.command is None and c.state == "running" for c in got)
    assert world.ledger.snapshot().apps["web"].spec["domains"] == ["shop.localhost"]


def test_the_contexts_router_is_switched_by_a_deploy(world: World):
    router = FakeRouter(world.engine)
    world.ctx.router = router
    ops = world.ops()
    world.write(web=routed())
    assert ops.sync("web", resume=False).ok
    ((key, ups, _),) = router.switches
    assert key == "shop/web" and len(ups) == 3 and all(u.endswith(":8080") for u in ups)


def test_restart_restarts_every_replica_in_turn(world: World):
    world.write(web=routed())
    assert world.ops().sync("web", resume=False).ok
    ids = [c.id for c in containers(world)]
    world.engine.calls.clear()
    assert lifecycle.restart(world.ctx, "web", grace=1, reason="test", lock_wait=1)
    assert world.engine.calls == [(k, i) for i in ids for k in ("stop", "start")]
    assert [c.id for c in containers(world)] == ids


def test_a_route_in_the_ledger_becomes_the_proxy_route_asked_for():
    from diplo.ops.proxy import _route, route_of
    from diplo.proxy.config import CertFiles

    from .factories import app

    spec = app("web", domains=("a.localhost",), http_port=8080, load_balancing="least_conn")
    route = _route("shop/web", route_of(spec) or {}, ["10.0.0.2:8080"])
    assert (route.lb_policy, route.domains, route.upstreams) == (
        "least_conn",
        ("a.localhost",),
        ("10.0.0.2:8080",),
    )
    files = app(
        "web", domains=("a.localhost",), http_port=80, tls="files", tls_cert="/c", tls_key="/k"
    )
    assert _route("shop/web", route_of(files) or {}, []).tls == CertFiles("/c", "/k")
    assert route_of(app("web")) is None  # no domains: nothing for the proxy
