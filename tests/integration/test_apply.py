"""`diplo apply` and friends against the real Docker engine, through the real CLI."""

from __future__ import annotations

import json
import re
import socket
import time

import docker.errors
import pytest

from .conftest import TEST_LABEL, Sandbox, http_get, web_spec

MUTATING = {"create", "start", "stop", "die", "kill", "destroy", "rename", "restart"}


def engine_events(box: Sandbox, since: float) -> list[dict]:
    """Container events of this test's project since `since` (engine clock = host clock)."""
    stream = box.api.events(
        since=int(since),
        until=int(time.time()) + 1,
        filters={"type": "container", "label": f"diplo.project={box.project}"},
        decode=True,
    )
    return [e for e in stream if e.get("time", 0) >= int(since)]


def test_apply_serves_and_a_second_apply_changes_nothing(sandbox: Sandbox):
    web = sandbox.name("web")
    sandbox.manifest({web: web_spec(sandbox, "hello")})
    first = sandbox.diplo("apply", check=True)
    assert f"{web}: ok: created" in first.stdout
    port = sandbox.host_port(web)
    assert http_get(port) == "hello\n"

    row = sandbox.status()[web]
    assert row["state"] == "running" and row["running"] == 1 and row["desired"] == 1
    assert row["ports"] == [f"0.0.0.0:{port}->8080/tcp"]
    assert row["last_deployment"]["result"] == "succeeded"

    time.sleep(1.1)  # engine events have 1 s resolution
    since = time.time()
    second = sandbox.diplo("apply", check=True)
    assert "in sync" in second.stdout
    time.sleep(1.1)
    touched = [e for e in engine_events(sandbox, since) if e.get("Action") in MUTATING]
    assert touched == []
    assert sandbox.diplo("diff").returncode == 0


def test_editing_one_apps_env_recreates_only_that_app(sandbox: Sandbox):
    a, b = sandbox.name("a"), sandbox.name("b")
    sandbox.manifest({a: web_spec(sandbox, "a"), b: web_spec(sandbox, "b")})
    sandbox.diplo("apply", check=True)
    before = {c["Labels"]["diplo.app"]: c["Id"] for c in sandbox.containers()}
    port_b = sandbox.host_port(b)

    sandbox.manifest({a: web_spec(sandbox, "a"), b: web_spec(sandbox, "b", env={"LOG": "debug"})})
    diff = sandbox.diplo("diff")
    assert diff.returncode == 1
    assert f"~ {b}" in diff.stdout and "env.LOG" in diff.stdout and f"= {a}" in diff.stdout
    assert "debug" not in diff.stdout  # env values are never shown

    out = sandbox.diplo("apply", check=True).stdout
    after = {c["Labels"]["diplo.app"]: c["Id"] for c in sandbox.containers()}
    assert after[a] == before[a]
    assert after[b] != before[b]
    assert len(sandbox.containers()) == 2  # the old container of b is gone
    assert sandbox.host_port(b) == port_b  # the URL did not move
    assert http_get(port_b) == "b\n"
    assert f"{b}: ok: updated" in out


def test_invalid_manifest_changes_nothing(sandbox: Sandbox):
    path = sandbox.dir / "diplo.yaml"
    path.write_text(
        f"project: {sandbox.project}\n"
        "apps:\n"
        f"  {sandbox.name('web')}:\n"
        "    image: busybox:latest\n"
        "    comand: [httpd]\n"
        "    ports: ['99999']\n"
    )
    proc = sandbox.diplo("apply")
    assert proc.returncode == 2
    assert f"{path}:5:5: unknown key 'comand'" in proc.stderr
    assert "did you mean 'command'?" in proc.stderr
    assert f"{path}:6:13:" in proc.stderr and "65535" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sandbox.containers() == []
    # not even a ledger was created: the home holds only the test's proxy settings
    assert [p.name for p in sandbox.home.iterdir()] == ["config.yaml"]


def test_invalid_edit_leaves_the_running_app_alone(sandbox: Sandbox):
    web = sandbox.name("web")
    sandbox.manifest({web: web_spec(sandbox)})
    sandbox.diplo("apply", check=True)
    (before,) = sandbox.containers()
    sandbox.manifest({web: {**web_spec(sandbox), "restart": "sometimes"}})
    proc = sandbox.diplo("apply")
    assert proc.returncode == 2 and "restart" in proc.stderr
    (after,) = sandbox.containers()
    assert after["Id"] == before["Id"] and after["State"] == "running"


def test_port_taken_on_the_host_is_reported_before_anything_starts(sandbox: Sandbox):
    holder = socket.socket()
    holder.bind(("0.0.0.0", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        a, b = sandbox.name("a"), sandbox.name("b")
        sandbox.manifest(
            {a: web_spec(sandbox), b: {**web_spec(sandbox), "ports": [f"{taken}:8080"]}}
        )
        proc = sandbox.diplo("apply")
        assert proc.returncode == 2
        assert f"{b}: host port {taken}/tcp is already in use" in proc.stderr
        assert sandbox.containers() == []  # not even the app without a problem started
    finally:
        holder.close()


def test_two_apps_claiming_one_port_is_an_error(sandbox: Sandbox):
    a, b = sandbox.name("a"), sandbox.name("b")
    sandbox.manifest(
        {
            a: {**web_spec(sandbox), "ports": ["28999:8080"]},
            b: {**web_spec(sandbox), "ports": ["28999:80"]},
        }
    )
    proc = sandbox.diplo("apply")
    assert proc.returncode == 2 and "is also claimed by app" in proc.stderr
    assert sandbox.containers() == []


def test_failed_deploy_names_app_step_and_cause_and_keeps_the_good_revision(sandbox: Sandbox):
    web = sandbox.name("web")
    sandbox.manifest({web: web_spec(sandbox, "good")})
    sandbox.diplo("apply", check=True)
    port = sandbox.host_port(web)
    (good,) = sandbox.containers()

    broken = {
        **web_spec(sandbox, "good"),
        "command": ["sh", "-c", "echo config missing >&2; exit 3"],
    }
    sandbox.manifest({web: broken})
    proc = sandbox.diplo("apply")
    assert proc.returncode == 1
    assert f"{web}: start failed: the container exited with code 3" in proc.stderr
    assert "config missing" in proc.stderr
    assert "Traceback" not in proc.stderr
    (still,) = sandbox.containers()
    assert still["Id"] == good["Id"] and still["State"] == "running"
    assert http_get(port) == "good\n"
    row = sandbox.status()[web]
    assert row["last_deployment"]["result"] == "failed"
    assert row["last_deployment"]["step"] == "start"


def test_missing_image_is_a_clear_error(sandbox: Sandbox):
    web = sandbox.name("web")
    sandbox.manifest({web: {"image": f"diplo-test/nothing-{sandbox.id}:1"}})
    proc = sandbox.diplo("apply")
    assert proc.returncode == 1
    assert (
        f"{web}: pull failed: image diplo-test/nothing-{sandbox.id}:1 is not on this host"
        in proc.stderr
    )
    assert sandbox.containers() == []


def test_prune_removes_dropped_apps_and_keeps_their_volumes(sandbox: Sandbox):
    web, db = sandbox.name("web"), sandbox.name("db")
    db_spec = {
        "image": "busybox:latest",
        "command": ["sh", "-c", "date > /data/started; exec sleep 3600"],
        "init": True,
        "volumes": ["data:/data"],
    }
    sandbox.manifest({web: web_spec(sandbox), db: db_spec})
    sandbox.diplo("apply", check=True)
    volume = f"{sandbox.project}_data"
    assert sandbox.api.inspect_volume(volume)["Labels"]["diplo.app"] == db

    sandbox.manifest({web: web_spec(sandbox)})
    kept = sandbox.diplo("apply", check=True)
    assert db in kept.stdout and "--prune" in kept.stdout
    assert len(sandbox.containers(db)) == 1

    sandbox.diplo("apply", "--prune", check=True)
    assert sandbox.containers(db) == []
    assert sandbox.api.inspect_volume(volume)["Name"] == volume
    assert db not in sandbox.status()


def test_volume_data_survives_an_update(sandbox: Sandbox):
    db = sandbox.name("db")
    spec = {
        "image": "busybox:latest",
        "command": ["sh", "-c", "echo $$RUN >> /data/runs; exec sleep 3600"],
        "init": True,
        "volumes": ["data:/data"],
    }
    sandbox.manifest({db: {**spec, "env": {"RUN": "one"}}})
    sandbox.diplo("apply", check=True)
    sandbox.manifest({db: {**spec, "env": {"RUN": "two"}}})
    sandbox.diplo("apply", check=True)
    (c,) = sandbox.containers(db)
    exec_id = sandbox.api.exec_create(c["Id"], ["cat", "/data/runs"])
    assert sandbox.api.exec_start(exec_id).decode().split() == ["one", "two"]


def test_depends_on_starts_dependencies_first(sandbox: Sandbox):
    db, web = sandbox.name("db"), sandbox.name("web")
    sandbox.manifest({web: {**web_spec(sandbox), "depends_on": [db]}, db: web_spec(sandbox)})
    since = time.time() - 1
    sandbox.diplo("apply", check=True)
    time.sleep(1.1)
    order = [
        (e["Action"], e["Actor"]["Attributes"]["diplo.app"])
        for e in engine_events(sandbox, since)
        if e.get("Action") in ("create", "start")
    ]
    assert order.index(("start", db)) < order.index(("create", web))


def test_apps_of_a_project_reach_each_other_by_name(sandbox: Sandbox):
    api, client = sandbox.name("api"), sandbox.name("client")
    sandbox.manifest(
        {
            api: {**web_spec(sandbox, "from-api"), "ports": []},
            client: {
                "image": "busybox:latest",
                "command": ["sh", "-c", f"sleep 1; wget -q -O - http://{api}:8080/; sleep 3600"],
                "init": True,
                "depends_on": [api],
            },
        }
    )
    sandbox.diplo("apply", check=True)
    deadline = time.time() + 10
    logs = ""
    while time.time() < deadline and "from-api" not in logs:
        time.sleep(0.3)
        logs = sandbox.diplo("logs", client).stdout
    assert "from-api" in logs


def test_bind_mounted_config_file_edit_redeploys(sandbox: Sandbox):
    web = sandbox.name("web")
    conf = sandbox.dir / "httpd.conf"
    conf.write_text(".html:text/html\n")
    spec = {
        **web_spec(sandbox),
        "volumes": [*web_spec(sandbox)["volumes"], "./httpd.conf:/etc/httpd.conf:ro"],
    }
    sandbox.manifest({web: spec})
    sandbox.diplo("apply", check=True)
    (before,) = sandbox.containers()
    conf.write_text(".html:text/html\n.txt:text/plain\n")
    diff = sandbox.diplo("diff")
    assert diff.returncode == 1 and "files." in diff.stdout
    sandbox.diplo("apply", check=True)
    (after,) = sandbox.containers()
    assert after["Id"] != before["Id"]


def test_build_runs_once_and_again_only_when_the_context_changes(sandbox: Sandbox):
    web = sandbox.name("web")
    ctx = sandbox.dir / "app"
    (ctx / "www").mkdir(parents=True)
    (ctx / "www" / "index.html").write_text("built v1\n")
    (ctx / "Dockerfile").write_text(
        'FROM busybox:latest\nCOPY www /www\nCMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n'
    )
    tag = f"diplo-test/{sandbox.id}:dev"
    spec = {"image": tag, "build": "./app", "init": True, "ports": ["8080"]}
    sandbox.manifest({web: spec})
    first = sandbox.diplo("apply", check=True)
    assert f"{web}: build {tag}" in first.stdout
    assert http_get(sandbox.host_port(web)) == "built v1\n"
    image_v1 = sandbox.api.inspect_image(tag)["Id"]
    assert sandbox.api.inspect_image(tag)["Config"]["Labels"]["diplo.app"] == web

    sandbox.diplo("down", web, check=True)  # the container goes, the image stays
    again = sandbox.diplo("apply", check=True)
    assert "build" not in again.stdout
    assert sandbox.api.inspect_image(tag)["Id"] == image_v1

    (ctx / "www" / "index.html").write_text("built v2\n")
    third = sandbox.diplo("apply", check=True)
    assert f"{web}: build {tag}" in third.stdout
    assert http_get(sandbox.host_port(web)) == "built v2\n"


def test_build_failure_is_reported_and_changes_nothing(sandbox: Sandbox):
    web = sandbox.name("web")
    ctx = sandbox.dir / "app"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN echo compiling; exit 7\n")
    sandbox.manifest({web: {"image": f"diplo-test/{sandbox.id}:bad", "build": "./app"}})
    proc = sandbox.diplo("apply")
    assert proc.returncode == 1
    assert f"{web}: build failed:" in proc.stderr and "returned a non-zero code: 7" in proc.stderr
    assert sandbox.containers() == []


def test_down_removes_containers_and_volumes_only_when_asked(sandbox: Sandbox):
    db = sandbox.name("db")
    sandbox.manifest(
        {
            db: {
                "image": "busybox:latest",
                "command": ["sleep", "3600"],
                "init": True,
                "volumes": ["data:/data"],
            }
        }
    )
    sandbox.diplo("apply", check=True)
    volume = f"{sandbox.project}_data"
    # the image tag kept for rollbacks: deployment 1's, of this home's ledger
    (kept,) = sandbox.api.images(name=f"diplo-kept/{db}")[0]["RepoTags"]
    assert re.fullmatch(rf"diplo-kept/{db}:d1-[0-9a-f]{{8}}", kept), kept
    out = sandbox.diplo("down", db, check=True).stdout
    assert f"removed container {sandbox.project}-{db}-1" in out
    assert f"removed image tag {kept}" in out
    assert not sandbox.api.images(name=f"diplo-kept/{db}")
    assert sandbox.containers() == [] and sandbox.api.inspect_volume(volume)
    sandbox.diplo("apply", check=True)
    out = sandbox.diplo("down", "--all", "--volumes", check=True).stdout
    assert f"removed volume {volume}" in out
    assert not [v for v in sandbox.api.volumes()["Volumes"] or [] if v["Name"] == volume]
    unknown = sandbox.diplo("down", "nope")
    assert unknown.returncode == 2 and "no app named 'nope'" in unknown.stderr


def test_port_is_stable_across_down_and_apply(sandbox: Sandbox):
    web = sandbox.name("web")
    sandbox.manifest({web: web_spec(sandbox)})
    sandbox.diplo("apply", check=True)
    port = sandbox.host_port(web)
    sandbox.diplo("down", web, check=True)
    sandbox.diplo("apply", check=True)
    assert sandbox.host_port(web) == port


def test_logs_tail(sandbox: Sandbox):
    app = sandbox.name("talker")
    sandbox.manifest(
        {
            app: {
                "image": "busybox:latest",
                "init": True,
                "command": [
                    "sh",
                    "-c",
                    "for i in 1 2 3 4 5; do echo line$$i; done; exec sleep 3600",
                ],
            }
        }
    )
    sandbox.diplo("apply", check=True)
    deadline = time.time() + 5
    out = ""
    while time.time() < deadline and "line5" not in out:
        out = sandbox.diplo("logs", app, "--tail", "2", check=True).stdout
    assert out.split() == ["line4", "line5"]


def test_json_log_format(sandbox: Sandbox):
    web = sandbox.name("web")
    sandbox.manifest({web: web_spec(sandbox)})
    proc = sandbox.diplo("--log-format", "json", "apply", check=True)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert any(
        e.get("event") == "app.result" and e.get("app") == web and e.get("ok") for e in events
    )
    assert events[-1]["ok"] is True


def test_dry_run_changes_nothing(sandbox: Sandbox):
    web = sandbox.name("web")
    sandbox.manifest({web: web_spec(sandbox)})
    proc = sandbox.diplo("apply", "--dry-run", check=True)
    assert f"+ {web}" in proc.stdout
    assert sandbox.containers() == []


def test_secret_values_never_reach_the_output_or_the_ledger(sandbox: Sandbox):
    web = sandbox.name("web")
    secret = f"s3cret-{sandbox.id}"
    sandbox.manifest({web: web_spec(sandbox, env={"API_TOKEN": "${API_TOKEN}"})})
    env = {"API_TOKEN": secret}
    outputs = [
        sandbox.diplo("apply", check=True, env=env),
        sandbox.diplo("--log-format", "json", "-v", "apply", check=True, env=env),
        sandbox.diplo("status", "--json", check=True, env=env),
        sandbox.diplo("diff", "--json", env=env),
    ]
    for proc in outputs:
        assert secret not in proc.stdout + proc.stderr
    for path in sandbox.home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes()
    (c,) = sandbox.containers()
    env_in_container = sandbox.api.inspect_container(c["Id"])["Config"]["Env"]
    assert f"API_TOKEN={secret}" in env_in_container


def test_projects_beyond_the_engines_address_pools_still_get_a_network(sandbox: Sandbox):
    """Docker's default pools hold about 30 bridge networks; Diplo's projects go on in
    subnets of their own, and a project's network goes with its last app."""
    api = sandbox.api
    fillers: list[str] = []
    try:
        for i in range(64):  # until the engine says its pools are exhausted
            try:
                net = api.create_network(
                    f"dt-fill-{sandbox.id}-{i}", labels={TEST_LABEL: sandbox.id}
                )
            except docker.errors.APIError as exc:
                assert "non-overlapping IPv4 address pool" in str(exc)
                break
            fillers.append(net["Id"])
        else:
            pytest.skip("the engine's address pools did not run out within 64 networks")
        web = sandbox.name("web")
        sandbox.manifest({web: web_spec(sandbox, "pooled")})
        sandbox.diplo("apply", check=True)
        assert http_get(sandbox.host_port(web)) == "pooled\n"
        (net,) = api.networks(names=[f"diplo-{sandbox.project}"])
        subnet = api.inspect_network(net["Id"])["IPAM"]["Config"][0]["Subnet"]
        assert subnet.startswith("10.213.") and subnet.endswith("/24")
    finally:
        for net_id in fillers:
            api.remove_network(net_id)
    sandbox.manifest({}, allow_empty=True)
    sandbox.diplo("apply", "--prune", check=True)
    assert api.networks(names=[f"diplo-{sandbox.project}"]) == []
