"""Replicas and the start-first strategy against the real Docker engine, through the CLI
(no proxy on this host: start-first starts, gates, then stops, without a switch)."""

from __future__ import annotations

from typing import Any

from .conftest import Sandbox, http_get, web_spec


def replicas(box: Sandbox, app: str) -> dict[int, dict[str, Any]]:
    """replica number -> {id, name, ip, started, state, spec} of the app's containers."""
    out: dict[int, dict[str, Any]] = {}
    for c in box.containers(app):
        info = box.api.inspect_container(c["Id"])
        k = int(info["Config"]["Labels"]["diplo.replica"])
        assert k not in out, f"two containers of replica {k}"
        nets = info["NetworkSettings"]["Networks"]
        out[k] = {
            "id": info["Id"],
            "name": info["Name"].lstrip("/"),
            "ip": next(iter(nets.values()))["IPAddress"],
            "started": info["State"]["StartedAt"],
            "state": info["State"]["Status"],
            "spec": info["Config"]["Labels"]["diplo.spec-hash"],
            "ports": [
                int(b["HostPort"])
                for b in (info["NetworkSettings"]["Ports"] or {}).get("8080/tcp") or []
                if ":" not in b["HostIp"]
            ],
        }
    return out


def routed(box: Sandbox, text: str, n: int, **extra: Any) -> dict[str, Any]:
    """A busybox httpd app on a domain (start-first by default) with `n` replicas."""
    return web_spec(box, text, replicas=n, domains=[f"{box.id}.localhost"], **extra)


def test_three_replicas_are_three_healthy_containers_with_their_own_address(sandbox: Sandbox):
    web = sandbox.name("web")
    sandbox.manifest({web: web_spec(sandbox, "hello", replicas=3)})
    sandbox.diplo("apply", check=True)
    got = replicas(sandbox, web)
    assert sorted(got) == [1, 2, 3]
    assert {r["name"] for r in got.values()} == {f"{sandbox.project}-{web}-{k}" for k in (1, 2, 3)}
    assert all(r["state"] == "running" for r in got.values())
    assert len({r["ip"] for r in got.values()}) == 3 and all(r["ip"] for r in got.values())
    ports = [p for r in got.values() for p in r["ports"]]
    assert len(set(ports)) == 3  # each replica its own ephemeral host port
    for p in ports:
        assert http_get(p) == "hello\n"
    row = sandbox.status()[web]
    assert row["replicas"] == "3/3" and row["state"] == "running" and row["health"] == "healthy"


def test_scaling_3_to_1_to_3_keeps_the_surviving_replicas(sandbox: Sandbox):
    web = sandbox.name("web")
    sandbox.manifest({web: web_spec(sandbox, "v1", replicas=3)})
    sandbox.diplo("apply", check=True)
    before = replicas(sandbox, web)

    sandbox.manifest({web: web_spec(sandbox, "v1", replicas=1)})
    diff = sandbox.diplo("diff")
    assert diff.returncode == 1 and "replicas 3 -> 1" in diff.stdout
    sandbox.diplo("apply", check=True)
    after = replicas(sandbox, web)
    assert after == {1: before[1]}  # same container, same start time

    sandbox.manifest({web: web_spec(sandbox, "v1", replicas=3)})
    sandbox.diplo("apply", check=True)
    again = replicas(sandbox, web)
    assert sorted(again) == [1, 2, 3] and again[1] == before[1]
    assert {again[2]["id"], again[3]["id"]}.isdisjoint({before[2]["id"], before[3]["id"]})
    assert sandbox.status()[web]["replicas"] == "3/3"


def test_start_first_with_a_broken_release_leaves_the_old_replicas_serving(sandbox: Sandbox):
    web = sandbox.name("web")
    sandbox.manifest({web: routed(sandbox, "v1", 2)})
    sandbox.diplo("apply", check=True)
    before = replicas(sandbox, web)

    broken = routed(
        sandbox,
        "v2",
        2,
        health={"http": {"path": "/missing", "port": 8080}, "interval": "200ms",
                "start_period": "0s", "retries": 2},
    )  # fmt: skip
    sandbox.manifest({web: broken})
    out = sandbox.diplo("apply")
    assert out.returncode != 0
    assert "unhealthy" in out.stdout + out.stderr
    after = replicas(sandbox, web)
    assert after == before  # same containers, never stopped or restarted
    for r in after.values():
        assert http_get(r["ports"][0]) == "v1\n"
    assert len(sandbox.containers(web)) == 2  # the new release's containers are gone


def test_start_first_with_a_good_release_ends_with_only_the_new_replicas(sandbox: Sandbox):
    web = sandbox.name("web")
    sandbox.manifest({web: routed(sandbox, "v1", 2)})
    sandbox.diplo("apply", check=True)
    before = replicas(sandbox, web)

    sandbox.manifest({web: routed(sandbox, "v2", 2)})
    sandbox.diplo("apply", check=True)
    after = replicas(sandbox, web)
    assert sorted(after) == [1, 2]
    assert {r["name"] for r in after.values()} == {f"{sandbox.project}-{web}-{k}" for k in (1, 2)}
    assert {r["id"] for r in after.values()}.isdisjoint({r["id"] for r in before.values()})
    assert len({r["spec"] for r in after.values()}) == 1
    assert after[1]["spec"] != before[1]["spec"]
    for r in after.values():
        assert http_get(r["ports"][0]) == "v2\n"
    assert len(sandbox.containers(web)) == 2
    assert sandbox.diplo("diff").returncode == 0
