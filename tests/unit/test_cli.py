"""The `diplo` command line as a user meets it, over the in-memory engine and a real
SQLite ledger (tests/unit/cliworld.py): what each command prints, its exit code, and
what it changed on the engine and in the ledger. The commands that go through a running
`diplo serve` are driven against the API served over HTTP on 127.0.0.1.

Exit codes: 0 converged / in sync, 1 a deployment failed (or `diff` found differences),
2 invalid input or usage, 130 cancelled."""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from diplo.cli import main
from diplo.cli.render import LiveReporter, watch
from diplo.errors import LedgerError
from diplo.ledger import Ledger
from diplo.manifest.load import load_manifests
from diplo.ops.apply import DeployHandle, apply
from diplo.ops.context import Context
from diplo.ops.plan import prepare

from .apiworld import app_specs
from .cliworld import (
    BROKEN_IMAGE,
    OLD_IMAGE,
    OLD_IMAGE_ID,
    CliWorld,
    ServedWorld,
    bad_gateway,
    free_port,
    slow_spec,
    spec,
)

# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliWorld:
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DIPLO_DEBUG", raising=False)
    monkeypatch.delenv("DIPLO_TOKEN", raising=False)
    return CliWorld(tmp_path)


def deployments(world: CliWorld, app: str) -> list[Any]:
    with world.ledger() as ledger:
        return ledger.deployments(app)


def pins(world: CliWorld) -> dict[str, int]:
    with world.ledger() as ledger:
        return {name: pin.deployment_id for name, pin in ledger.pins().items()}


def when_in_flight(world: CliWorld, app: str, then: Any) -> threading.Thread:
    """A thread that waits for a deploy of `app` to be in flight, then calls `then()`."""

    def wait_then() -> None:
        deadline = time.monotonic() + 10
        with world.ledger() as ledger:
            while not ledger.in_flight(app) and time.monotonic() < deadline:
                time.sleep(0.01)
        then()

    thread = threading.Thread(target=wait_then, daemon=True)
    thread.start()
    return thread


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal(io.StringIO):
    """A stdout that says it is a terminal."""

    def isatty(self) -> bool:
        return True


# --- usage errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve"], "give --manifests DIR, --repo URL, or both"),
        (["down"], "name the apps to remove, or pass --all"),
        (["down", "web", "--all"], "name the apps to remove, or pass --all (not both)"),
        (["serve", "--repo", "x", "--path", "../up"], "give a folder inside the repository"),
        (["serve", "--manifests", "m", "--listen", "7700"], "use HOST:PORT, e.g. 127.0.0.1:7700"),
        (["serve", "--manifests", "m", "--listen", "h:99999"], "use HOST:PORT"),
        (["serve", "--manifests", "m", "--resync", "soon"], "--resync:"),
        (["serve", "--manifests", "m", "--interval", "often"], "--interval:"),
        (["apply", "--parallel", "0"], "Invalid value for '--parallel'"),
    ],
)
def test_usage_errors_exit_2_with_the_reason(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "internal error" not in result.output


def test_a_deployment_id_beyond_sqlite_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["rollback", "web", "--to", str(2**63)])
    assert result.exit_code == 2 and "internal error" not in result.output


def test_version_and_schema(world: CliWorld):
    assert world.run("--version").stdout.startswith("diplo, version ")
    result = world.run("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert {"project", "apps"} <= set(schema["properties"])


# --- apply -----------------------------------------------------------------------------------


def test_apply_converges_then_has_nothing_to_do(world: CliWorld):
    world.write({"web": spec(ports=["8080"]), "worker": spec()})
    result = world.apply()
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "converged: 2 apps, 2 changed"
    assert "web: ok: created" in result.stdout and "worker: ok: created" in result.stdout
    assert result.stderr == ""
    assert {c.state for c in world.engine.containers.values()} == {"running"}
    assert world.apps() == {"web", "worker"}
    assert [d.result for d in deployments(world, "web")] == ["succeeded"]

    before = list(world.engine.calls)
    again = world.apply()
    assert again.exit_code == 0
    assert again.stdout == "in sync: 2 apps, nothing to do\n"
    assert world.engine.calls == before  # nothing touched
    assert len(deployments(world, "web")) == 1


def test_in_sync_line_says_one_app_in_the_singular(world: CliWorld):
    world.write({"web": spec()})
    assert world.apply().stdout.endswith("converged: 1 app, 1 changed\n")
    assert world.apply().stdout == "in sync: 1 app, nothing to do\n"


def test_apply_reads_diplo_yaml_of_the_current_folder(world, monkeypatch):
    world.write({"web": spec()})
    monkeypatch.chdir(world.site)
    result = world.run("apply")
    assert result.exit_code == 0, result.output
    assert "converged: 1 app, 1 changed" in result.stdout
    assert world.apps() == {"web"}


def test_dry_run_shows_the_plan_and_changes_nothing(world: CliWorld):
    world.write({"web": spec(OLD_IMAGE), "worker": spec()})
    assert world.apply().exit_code == 0
    world.write({"web": spec()})
    before = list(world.engine.calls)

    result = world.apply("--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "~ web                  update",
        "      image: busybox:1.36 -> busybox:latest",
        "- worker               remove: no longer in the manifests (apply --prune removes it)",
    ]

    as_json = world.run("--log-format", "json", "apply", "-f", str(world.manifest), "--dry-run")
    assert as_json.exit_code == 0
    plan = json.loads(as_json.stdout)
    assert plan["in_sync"] is False
    web, worker = plan["apps"]
    assert web["change"] == "update" and web["fields"] == [
        {"path": "image", "old": "busybox:1.36", "new": "busybox:latest"}
    ]
    assert worker["app"] == "worker" and worker["change"] == "remove"

    assert world.engine.calls == before
    assert world.images_of("web") == [OLD_IMAGE]
    assert len(deployments(world, "web")) == 1


def test_a_manifest_without_apps_is_refused(world: CliWorld):
    world.write({"web": spec()})
    assert world.apply().exit_code == 0
    world.write({})  # a truncated file must not take the project down
    before = list(world.engine.calls)
    result = world.apply("--prune")
    assert result.exit_code == 2
    assert f"error: {world.manifest}: no apps; nothing was changed" in result.stderr
    assert world.engine.calls == before and world.apps() == {"web"}


def test_log_format_json_prints_json_lines(world: CliWorld):
    world.write({"web": spec()})
    result = world.run("--log-format", "json", "apply", "-f", str(world.manifest))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    steps = [(e["app"], e["step"]) for e in lines if e.get("event") == "app.step"]
    assert ("web", "create") in steps and ("web", "start") in steps
    (done,) = [e for e in lines if e.get("event") == "app.result"]
    assert done["ok"] is True and done["level"] == "info"
    assert lines[-1] == {
        "ok": True,
        "apps": {"web": {"change": "create", "ok": True, "message": "created", "step": None}},
    }


def test_an_app_left_out_is_kept_unless_prune(world: CliWorld):
    world.write({"web": spec(), "worker": spec()})
    assert world.apply().exit_code == 0
    world.write({"web": spec()})

    kept = world.apply()
    assert kept.exit_code == 0
    assert "not in the manifests (kept; apply --prune removes): worker" in kept.stdout
    assert world.apps() == {"web", "worker"}

    pruned = world.apply("--prune")
    assert pruned.exit_code == 0, pruned.output
    assert "worker: ok: removed" in pruned.stdout
    assert "converged: 2 apps, 1 changed" in pruned.stdout
    assert "not in the manifests" not in pruned.stdout
    assert world.apps() == {"web"}
    with world.ledger() as ledger:
        assert set(ledger.snapshot().apps) == {"web"}


def test_a_failed_deploy_exits_1_and_keeps_the_previous_container(world: CliWorld):
    world.write({"web": spec()})
    assert world.apply().exit_code == 0
    (good,) = world.containers("web")
    world.write({"web": spec(BROKEN_IMAGE)})

    result = world.apply()
    assert result.exit_code == 1
    assert "web: FAILED: web: start failed" in result.stdout
    assert "converged" not in result.stdout
    assert (
        "error: web: start failed: the container exited with code 1; last log lines:\n"
        "      panic: cannot open /etc/app.conf"
    ) in result.stderr
    (kept,) = world.containers("web")
    assert kept.id == good.id and kept.state == "running" and kept.spec.image == "busybox:latest"
    last = deployments(world, "web")[0]
    assert (last.result, last.step) == ("failed", "start")

    status = world.run("status")
    assert status.exit_code == 0
    assert "web: last deployment failed at start: the container exited with code 1" in status.stdout


def test_a_failed_first_deploy_in_json(world: CliWorld):
    world.write({"web": spec(BROKEN_IMAGE)})
    result = world.run("--log-format", "json", "apply", "-f", str(world.manifest))
    assert result.exit_code == 1
    final = json.loads(result.stdout.splitlines()[-1])
    assert final["ok"] is False and final["apps"]["web"]["step"] == "start"
    assert world.containers("web") == []


def test_an_invalid_manifest_exits_2_and_changes_nothing(world: CliWorld):
    world.site.mkdir()
    world.manifest.write_text("project: shop\napps: [broken\n")
    result = world.apply()
    assert result.exit_code == 2
    assert "error: invalid manifest (1 error); nothing was changed" in result.stderr
    assert f"{world.manifest}:" in result.stderr and "internal error" not in result.stderr
    assert world.engine.calls == [] and world.engine.containers == {}
    assert deployments(world, "web") == []


def test_a_port_claimed_twice_exits_2_and_changes_nothing(world: CliWorld):
    host = free_port()  # the clash is between the two apps, not with this host
    world.write({"web": spec(ports=[f"{host}:80"]), "api": spec(ports=[f"{host}:81"])})
    result = world.apply()
    assert result.exit_code == 2
    assert "error: cannot apply (1 problem); nothing was changed" in result.stderr
    assert f"host port {host}/tcp is also claimed" in result.stderr
    assert world.engine.calls == []


def test_apply_tells_it_waits_for_another_diplo_process(world, monkeypatch):
    world.write({"web": spec()})
    locks = world.home / "locks"
    locks.mkdir(parents=True)
    fd = os.open(locks / "web.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a `diplo serve` deploying web would
    cli = importlib.import_module("diplo.cli.main")  # the module, not the click group
    tell = cli._tell_waiting

    def tell_then_release(app: str) -> None:
        tell(app)  # what the user sees
        fcntl.flock(fd, fcntl.LOCK_UN)  # then the other process finishes its deploy

    monkeypatch.setattr(cli, "_tell_waiting", tell_then_release)
    try:
        result = world.apply()
    finally:
        os.close(fd)
    assert result.exit_code == 0, result.output
    assert result.stderr == "web: waiting for another Diplo process (diplo serve?) deploying it\n"
    assert "converged: 1 app, 1 changed" in result.stdout
    assert world.apps() == {"web"}


def test_no_wait_returns_once_the_container_starts(world: CliWorld):
    world.write({"web": slow_spec()})  # never healthy: a waiting apply would hang
    started = time.monotonic()
    result = world.apply("--no-wait", "--parallel", "2")
    assert result.exit_code == 0, result.output
    assert "converged: 1 app, 1 changed" in result.stdout
    assert time.monotonic() - started < 5
    (c,) = world.containers("web")
    assert c.state == "running"


def test_ctrl_c_cancels_the_deploy_exits_130_and_keeps_the_previous_revision(world):
    world.write({"web": spec()})
    assert world.apply().exit_code == 0
    (good,) = world.containers("web")
    world.write({"web": slow_spec()})

    def press_ctrl_c() -> None:  # the handler `diplo apply` installed for SIGINT
        handler = signal.getsignal(signal.SIGINT)
        assert callable(handler)
        handler(signal.SIGINT, None)

    previous = signal.getsignal(signal.SIGINT)
    thread = when_in_flight(world, "web", press_ctrl_c)
    result = world.apply()
    thread.join(timeout=10)
    assert result.exit_code == 130, result.output
    # The step it lands in (create, start, health) depends on the machine's speed.
    assert re.search(
        r"error: web: [a-z-]+ cancelled by Ctrl-C; the previous revision was kept", result.stderr
    ), result.stderr
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is put back
    (kept,) = world.containers("web")
    assert kept.id == good.id and kept.state == "running"
    assert deployments(world, "web")[0].result == "cancelled"


def test_an_apply_cancelled_from_another_terminal_exits_1(world: CliWorld):
    world.write({"web": spec()})
    assert world.apply().exit_code == 0
    world.write({"web": slow_spec()})

    def cancel_elsewhere() -> None:
        with world.ledger() as ledger:
            ledger.request_cancel("web")

    thread = when_in_flight(world, "web", cancel_elsewhere)
    result = world.apply()
    thread.join(timeout=10)
    assert "cancelled by diplo cancel" in result.stderr
    assert result.exit_code == 1  # as documented: 130 is for Ctrl-C


def test_on_a_terminal_apply_and_status_draw_tables(world, monkeypatch):
    world.write({"web": spec(), "worker": spec()})
    term, err = Terminal(), io.StringIO()
    monkeypatch.setenv("COLUMNS", "200")  # the status table on one line per app
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", err)
    for args in (["apply", "-f", str(world.manifest)], ["status"]):
        context = Context(_runtime=world.engine, _ledger=Ledger(world.ledger_path))
        with pytest.raises(SystemExit) as stop:
            main.main(args, obj={"context": context}, prog_name="diplo")
        assert stop.value.code == 0, err.getvalue()
    out = ANSI.sub("", term.getvalue())
    assert "converged: 2 apps, 2 changed" in out
    assert re.search(r"web\s+ok\s+created", out) and re.search(r"worker\s+ok\s+created", out)
    assert "web: create" not in out  # the live table, not the plain lines
    assert re.search(r"web\s+shop\s+running\s+healthy\s+1/1", out)


# --- diff ------------------------------------------------------------------------------------


def test_diff_exits_0_in_sync_and_1_with_differences(world: CliWorld):
    world.write({"web": spec(OLD_IMAGE)})
    assert world.apply().exit_code == 0
    same = world.run("diff", "-f", str(world.manifest))
    assert same.exit_code == 0
    assert same.stdout.splitlines() == ["= web                  unchanged", "in sync"]

    world.write({"web": spec()})
    before = list(world.engine.calls)
    differs = world.run("diff", "-f", str(world.manifest))
    assert differs.exit_code == 1
    assert differs.stdout.splitlines() == [
        "~ web                  update",
        "      image: busybox:1.36 -> busybox:latest",
        "differences found",
    ]
    for args in (["diff", "--json"], ["--log-format", "json", "diff"]):
        as_json = world.run(*args, "-f", str(world.manifest))
        assert as_json.exit_code == 1
        plan = json.loads(as_json.stdout)
        assert plan["in_sync"] is False
        assert plan["apps"][0]["app"] == "web" and plan["apps"][0]["reason"] == "image"
    assert world.engine.calls == before  # diff changes nothing
    assert world.images_of("web") == [OLD_IMAGE]


def test_diff_of_a_new_project_shows_its_network(world: CliWorld):
    world.write({"web": spec()})
    result = world.run("diff", "-f", str(world.manifest))
    assert result.exit_code == 1
    assert result.stdout.splitlines()[:2] == [
        "+ network diplo-shop",
        "+ web                  create",
    ]


# --- status ----------------------------------------------------------------------------------


def test_status_table_of_healthy_apps(world: CliWorld):
    world.write({"web": spec(ports=["8080"]), "worker": spec()})
    assert world.apply().exit_code == 0
    result = world.run("status")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "APP", "PROJECT", "STATE", "HEALTH", "READY", "IMAGE", "PORTS", "SPEC", "SYNC",
        "REVISION", "LAST", "DEPLOY",
    ]  # fmt: skip
    web = lines[1].split()
    assert web[:6] == ["web", "shop", "running", "healthy", "1/1", "busybox:latest"]
    assert web[6].endswith("->8080/tcp") and web[-3:-1] == ["#1", "succeeded"]
    worker = lines[2].split()
    assert worker[:7] == ["worker", "shop", "running", "healthy", "1/1", "busybox:latest", "-"]
    assert len(lines) == 3  # healthy apps need no explanation lines
    assert "from diplo serve" not in result.stdout


def test_status_json_has_the_fields_of_each_app(world: CliWorld):
    world.write({"web": spec(ports=["8080"]), "worker": spec()})
    assert world.apply().exit_code == 0
    result = world.run("status", "web", "--json")
    assert result.exit_code == 0
    (web,) = json.loads(result.stdout)
    assert web["app"] == "web" and web["project"] == "shop"
    assert (web["state"], web["health"], web["desired"], web["running"]) == (
        "running",
        "healthy",
        1,
        1,
    )
    assert web["in_sync"] is True and web["image"] == "busybox:latest"
    assert len(web["ports"]) == 1 and web["ports"][0].endswith("->8080/tcp")
    assert web["last_deployment"]["result"] == "succeeded"
    assert web["containers"][0]["name"] == "shop-web-1"


def test_status_of_an_empty_host(world: CliWorld):
    result = world.run("status")
    assert result.exit_code == 0 and result.stdout == "no apps on this host\n"
    assert world.run("status", "--json").stdout.strip() == "[]"


def test_status_of_an_unknown_app_exits_2(world: CliWorld):
    result = world.run("status", "nope")
    assert result.exit_code == 2
    assert "error: no app named 'nope' on this host" in result.stderr


def test_status_explains_an_app_that_is_not_healthy(world: CliWorld):
    world.write({"web": spec(), "worker": spec()})
    assert world.apply().exit_code == 0
    (web,) = world.containers("web")
    world.engine.stop(web.id, 1)  # it died behind Diplo's back
    result = world.run("status")
    assert result.exit_code == 0
    assert re.search(r"web\s+shop\s+exited\s+crashed\s+0/1", result.stdout)
    assert result.stdout.splitlines()[-1] == "web: crashed: exited, exit code 0"
    assert "worker:" not in result.stdout


# --- down ------------------------------------------------------------------------------------


def test_down_one_app_leaves_the_others(world: CliWorld):
    world.write({"web": spec(), "worker": spec()})
    assert world.apply().exit_code == 0
    with world.ledger() as ledger:  # the two apps deploy in parallel: either may get d1
        kept = f"diplo-kept/web:d{ledger.deployments('web')[0].id}-{ledger.identity}"
    result = world.run("down", "web")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "removed container shop-web-1",
        f"removed image tag {kept}",
    ]
    assert world.apps() == {"worker"}
    assert "diplo-shop" in world.engine.networks  # worker still uses it
    with world.ledger() as ledger:
        assert set(ledger.snapshot().apps) == {"worker"}
    assert kept not in world.engine.images


def test_down_all_removes_every_app_and_the_network(world: CliWorld):
    world.write({"web": spec(), "worker": spec()})
    assert world.apply().exit_code == 0
    result = world.run("down", "--all")
    assert result.exit_code == 0, result.output
    removed = result.stdout.splitlines()
    assert "removed container shop-web-1" in removed
    assert "removed container shop-worker-1" in removed
    assert world.engine.containers == {} and world.engine.networks == set()
    with world.ledger() as ledger:
        assert ledger.snapshot().apps == {}
    again = world.run("down", "--all")
    assert again.exit_code == 0 and again.stdout == "nothing to remove\n"


def test_down_of_an_unknown_app_exits_2_and_removes_nothing(world: CliWorld):
    world.write({"web": spec()})
    assert world.apply().exit_code == 0
    before = list(world.engine.calls)
    result = world.run("down", "web", "nope")
    assert result.exit_code == 2
    assert "error: no app named 'nope' on this host; nothing was removed" in result.stderr
    assert world.engine.calls == before and world.apps() == {"web"}


def test_down_keeps_named_volumes_unless_asked(world: CliWorld):
    world.write({"db": spec(volumes=["data:/data"])})
    assert world.apply().exit_code == 0
    assert set(world.engine.volumes) == {"shop_data"}

    kept = world.run("down", "db")
    assert kept.exit_code == 0
    assert "removed container shop-db-1" in kept.stdout and "volume" not in kept.stdout
    assert set(world.engine.volumes) == {"shop_data"}

    assert world.apply().exit_code == 0
    gone = world.run("down", "db", "--volumes")
    assert gone.exit_code == 0
    assert "removed volume shop_data" in gone.stdout.splitlines()
    assert world.engine.volumes == {}


# --- logs ------------------------------------------------------------------------------------


def test_logs_prints_the_container_output(world: CliWorld):
    world.write({"web": spec()})
    assert world.apply().exit_code == 0
    (c,) = world.containers("web")
    c.logs.extend(["listening on :8080", "GET / 200"])
    result = world.run("logs", "web")
    assert result.exit_code == 0
    assert result.stdout_bytes == b"listening on :8080\nGET / 200\n"
    assert world.run("logs", "web", "--tail", "1").stdout == "GET / 200\n"


def test_logs_of_an_unknown_app_exits_2(world: CliWorld):
    result = world.run("logs", "nope")
    assert result.exit_code == 2
    assert "error: no container for app 'nope'" in result.stderr


def test_ctrl_c_ends_following_logs_quietly(world, monkeypatch):
    world.write({"web": spec()})
    assert world.apply().exit_code == 0

    def follow(container_id: str, **kw: Any) -> Iterator[bytes]:
        assert kw["follow"] is True
        yield b"tick\n"
        raise KeyboardInterrupt

    monkeypatch.setattr(world.engine, "logs", follow)
    result = world.run("logs", "web", "--follow")
    assert result.exit_code == 0
    assert result.stdout == "tick\n" and result.stderr == ""


# --- cancel ----------------------------------------------------------------------------------


def test_cancel_with_nothing_in_flight_exits_2(world: CliWorld):
    result = world.run("cancel", "web")
    assert result.exit_code == 2
    assert result.stderr == "error: no deploy of 'web' is in flight; nothing to cancel\n"


def test_cancel_stops_a_deploy_of_another_process(world: CliWorld):
    world.write({"web": spec()})
    assert world.apply().exit_code == 0
    (good,) = world.containers("web")
    world.write({"web": slow_spec()})
    outcome: dict[str, Any] = {}

    def deploy() -> None:  # as another terminal's `diplo apply`
        ctx = Context(_runtime=world.engine, _ledger=Ledger(world.ledger_path))
        try:
            outcome["report"] = apply(ctx, load_manifests([str(world.manifest)]))
        finally:
            ctx.close()

    other = threading.Thread(target=deploy, daemon=True)
    other.start()
    with world.ledger() as ledger:
        deadline = time.monotonic() + 10
        while not ledger.in_flight("web") and time.monotonic() < deadline:
            time.sleep(0.01)
    result = world.run("cancel", "web", "--wait", "10")
    other.join(timeout=10)
    assert result.exit_code == 0, result.output
    assert result.stdout == "web: deployment #2 cancelled\n"
    assert outcome["report"].result.outcomes["web"].cancelled
    (kept,) = world.containers("web")
    assert kept.id == good.id and kept.state == "running"


def test_cancel_says_when_the_deploy_has_not_stopped_yet(world: CliWorld):
    with world.ledger() as ledger:  # a deploy of a live process that does not poll
        dep_id = ledger.start_deployment("web", "shop", "f" * 64)
    result = world.run("cancel", "web", "--wait", "0.2")
    assert result.exit_code == 1
    assert result.stdout == "web: cancel requested; deployment #1 still running\n"
    with world.ledger() as ledger:
        assert ledger.cancel_requested([dep_id]) == {dep_id}


# --- health ----------------------------------------------------------------------------------


def test_health_probes_now_and_lists_recent_probes(world: CliWorld):
    world.write({"web": spec(health={"cmd": ["check"], "start_period": "0s"})})
    assert world.apply().exit_code == 0
    ok = world.run("health", "web")
    assert ok.exit_code == 0
    lines = ok.stdout.splitlines()
    assert lines[0].startswith("web: healthy (exit 0 in ")
    assert len(lines) >= 3  # the deploy's probe and this one
    assert all(re.search(r"\s ok \s+healthy\s+\d+ms  exit 0$", line) for line in lines[1:])

    world.engine.exec_results["busybox:latest"] = (1, "db down")
    failing = world.run("health", "web", "--last", "2")
    lines = failing.stdout.splitlines()
    assert lines[0].startswith("web: unhealthy (exit 1: db down in ")
    assert re.search(r"\sFAIL\s+unhealthy\s+\d+ms  exit 1: db down$", lines[1])
    assert len(lines) == 3

    as_json = world.run("health", "web", "--json", "-n", "1")
    assert as_json.exit_code == 0
    body = json.loads(as_json.stdout)
    assert body["app"] == "web" and body["health"] == "unhealthy"
    assert body["detail"].startswith("exit 1: db down") and body["restarts"] == 0
    (probe,) = body["probes"]
    assert not probe["ok"] and probe["detail"] == "exit 1: db down"


def test_health_of_an_app_without_a_probe(world: CliWorld):
    world.write({"web": spec()})
    assert world.apply().exit_code == 0
    result = world.run("health", "web")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "web: healthy (up 0s, no health check)",
        "  no probes recorded (the app has no http, tcp or cmd health check)",
    ]
    assert json.loads(world.run("health", "web", "--json").stdout)["probes"] == []
    assert world.run("health", "nope").exit_code == 2


# --- history ---------------------------------------------------------------------------------


def test_history_lists_deployments_newest_first(world: CliWorld):
    world.write({"web": spec(OLD_IMAGE)})
    assert world.apply().exit_code == 0
    world.write({"web": spec()})
    assert world.apply().exit_code == 0
    world.write({"web": spec(BROKEN_IMAGE)})
    assert world.apply().exit_code == 1

    result = world.run("history", "web")
    assert result.exit_code == 0
    header, *lines = result.stdout.splitlines()
    rows = [line for line in lines if re.match(r"\d", line)]  # an error may wrap its row
    assert header.split() == ["ID", "REV", "STARTED", "RESULT", "COMMIT", "MESSAGE", "NOTE"]
    assert [r.split()[:2] for r in rows] == [["3", "3"], ["2", "2"], ["1", "1"]]
    assert rows[0].split()[4] == "failed"
    assert "start: the container exited with code 1" in rows[0]
    assert [r.split()[4] for r in rows[1:]] == ["succeeded", "succeeded"]

    as_json = world.run("history", "web", "--json", "-n", "2")
    assert [(d["id"], d["result"]) for d in json.loads(as_json.stdout)] == [
        (3, "failed"),
        (2, "succeeded"),
    ]


def test_history_of_an_app_never_deployed_exits_2(world: CliWorld):
    result = world.run("history", "nope")
    assert result.exit_code == 2
    assert "error: no deployments of 'nope' recorded" in result.stderr


def test_history_and_status_show_the_git_commit_of_the_manifests(world: CliWorld):
    world.write({"web": spec()})

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(world.site), "-c", "user.name=T", "-c", "user.email=t@example",
             *args],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return out.stdout.strip()

    git("init", "-q")
    git("add", "diplo.yaml")
    git("commit", "-qm", "first web")
    sha = git("rev-parse", "HEAD")
    assert world.apply().exit_code == 0
    world.write({"web": spec(command=["sleep", "1d"])})  # not committed
    assert world.apply().exit_code == 0

    history = world.run("history", "web").stdout.splitlines()
    assert history[1].split()[4:8] == ["succeeded", f"{sha[:10]}+dirty", "first", "web"]
    assert history[2].split()[4:8] == ["succeeded", sha[:10], "first", "web"]
    status = world.run("status").stdout
    assert f"{sha[:10]}+dirty" in status


# --- rollback and sync, here -----------------------------------------------------------------


def test_rollback_pins_the_app_until_sync_resume(world, monkeypatch, tmp_path):
    world.write({"web": spec(OLD_IMAGE)})
    assert world.apply().exit_code == 0
    world.write({"web": spec()})
    assert world.apply().exit_code == 0
    monkeypatch.chdir(tmp_path)  # no ./diplo.yaml: a rollback needs none

    rolled = world.run("rollback", "web")
    assert rolled.exit_code == 0, rolled.output
    assert rolled.stdout.splitlines()[0] == "web: rolling back to deployment 1 (revision 1)"
    assert "converged: 1 app, 1 changed" in rolled.stdout
    (c,) = world.containers("web")
    assert c.spec.image == OLD_IMAGE_ID and c.state == "running"  # the kept image, by ID
    assert pins(world) == {"web": 1}
    assert deployments(world, "web")[0].rollback_of == 1
    assert "rollback to #1" in world.run("history", "web").stdout

    pinned = (
        "web: pinned to deployment 1 by a rollback; "
        "`diplo sync web --resume` follows the manifest again\n"
    )
    again = world.apply()
    assert again.exit_code == 0
    assert again.stderr == pinned
    assert again.stdout.startswith("in sync: 1 app") and "nothing to do" in again.stdout
    planned = world.apply("--dry-run")
    assert planned.stderr == pinned and "unchanged" in planned.stdout
    assert world.containers("web") == [c] and pins(world) == {"web": 1}

    resumed = world.run("sync", "web", "--resume", "-f", str(world.manifest))
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stdout.splitlines()[0] == "web: following the manifest again"
    assert "converged: 1 app, 1 changed" in resumed.stdout
    assert world.images_of("web") == ["busybox:latest"]
    assert pins(world) == {}


def test_rollback_to_a_missing_deployment_exits_2_and_pins_nothing(world: CliWorld):
    world.write({"web": spec()})
    assert world.apply().exit_code == 0
    before = list(world.engine.calls)
    missing = world.run("rollback", "web", "--to", "99", "-f", str(world.manifest))
    assert missing.exit_code == 2
    assert "error: no deployment 99 of app 'web'" in missing.stderr
    nothing = world.run("rollback", "web", "-f", str(world.manifest))
    assert nothing.exit_code == 2
    assert "no earlier successful deployment with another spec" in nothing.stderr
    assert pins(world) == {} and world.engine.calls == before


def test_a_rollback_that_fails_to_start_leaves_the_app_unpinned(world: CliWorld):
    world.write({"web": spec(OLD_IMAGE)})
    assert world.apply().exit_code == 0
    world.write({"web": spec()})
    assert world.apply().exit_code == 0
    (current,) = world.containers("web")
    world.engine.fail_start[OLD_IMAGE_ID] = "segfault"  # the kept image no longer starts

    result = world.run("rollback", "web", "-f", str(world.manifest))
    assert result.exit_code == 1
    assert "web: rolling back to deployment 1" in result.stdout
    assert "web: rollback failed; web is not pinned" in result.stderr
    assert pins(world) == {}
    (kept,) = world.containers("web")
    assert kept.id == current.id and kept.state == "running"
    history = world.run("history", "web").stdout.splitlines()
    assert "rollback to #1; start: the container exited with code 1" in history[1]


def test_sync_deploys_just_that_app(world: CliWorld):
    world.write({"web": spec(OLD_IMAGE), "worker": spec(OLD_IMAGE)})
    assert world.apply().exit_code == 0
    world.write({"web": spec(), "worker": spec()})
    result = world.run("sync", "web", "-f", str(world.manifest))
    assert result.exit_code == 0, result.output
    assert "converged: 1 app, 1 changed" in result.stdout
    assert world.images_of("web") == ["busybox:latest"]
    assert world.images_of("worker") == [OLD_IMAGE]


def test_sync_of_an_app_not_in_the_manifest_exits_2(world: CliWorld):
    world.write({"web": spec()})
    result = world.run("sync", "nope", "-f", str(world.manifest))
    assert result.exit_code == 2
    assert f"error: no app named 'nope' in {world.manifest}" in result.stderr
    assert world.engine.calls == []


def test_a_failed_sync_exits_1(world: CliWorld):
    world.write({"web": spec(BROKEN_IMAGE)})
    result = world.run("sync", "web", "-f", str(world.manifest))
    assert result.exit_code == 1
    assert "error: web: start failed" in result.stderr


# --- through a running `diplo serve` ---------------------------------------------------------


def test_status_goes_to_the_running_server(served: ServedWorld):
    result = served.run("status")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"from diplo serve at {served.url}"
    assert re.search(r"^web\s+shop\s+running\s+healthy\s+1/1\s+busybox:latest\s.*Synced", lines[2])
    assert re.search(r"^worker\s+shop\s+running\s+healthy\s+1/1\s.*Synced", lines[3])

    (web,) = json.loads(served.run("status", "web", "--json").stdout)
    assert web["app"] == "web" and web["sync"]["status"] == "Synced"
    assert web["revision"]["deployment"] == 1
    unknown = served.run("status", "nope")
    assert unknown.exit_code == 2
    assert "error: no app named 'nope' on this host" in unknown.stderr


def test_rollback_and_resume_go_to_the_running_server(served: ServedWorld):
    world = served.world
    specs = app_specs()
    specs["worker"]["command"] = ["sleep", "1d"]
    world.write(specs)
    world.controller.handle("worker")  # deployment 3: worker with the new command
    calls = list(world.engine.calls)

    rolled = served.run("rollback", "worker")
    assert rolled.exit_code == 0, rolled.output
    assert rolled.stdout == (
        "worker: rolling back to deployment 2; pinned until a sync with resume\n"
    )
    assert world.engine.calls == calls  # the server's controller deploys it, not the CLI
    assert {n: p.deployment_id for n, p in world.ledger.pins().items()} == {"worker": 2}

    world.controller.handle("worker")  # what the controller's worker does next
    status = served.run("status").stdout
    assert re.search(r"^worker\s.*OutOfSync \(pinned to #2\)", status, re.MULTILINE)

    resumed = served.run("sync", "worker", "--resume")
    assert resumed.exit_code == 0
    assert resumed.stdout == "worker: following the source again; reconcile queued\n"
    assert world.ledger.pins() == {}
    synced = served.run("sync", "web")
    assert synced.exit_code == 0 and synced.stdout == "web: reconcile queued\n"


def test_the_running_server_refusals_exit_2(served: ServedWorld):
    url = served.url
    refused = served.run("rollback", "web", "--to", "999")
    assert refused.exit_code == 2
    assert refused.stderr == (
        f"error: diplo serve at {url} answered 409: cannot roll back: "
        "no deployment 999 of app 'web'\n"
    )
    unknown = served.run("sync", "nope")
    assert unknown.exit_code == 2
    assert f"error: diplo serve at {url} answered 404: no such app:" in unknown.stderr
    assert served.world.ledger.pins() == {}


def test_a_wrong_token_is_refused_by_the_running_server(served, monkeypatch):
    monkeypatch.setenv("DIPLO_TOKEN", "not-the-token-but-long-enough-for-it")
    result = served.run("sync", "web")
    assert result.exit_code == 2
    assert f"diplo serve at {served.url} answered 403: invalid token" in result.stderr


def test_status_shows_the_manifest_error_of_the_running_server(served: ServedWorld):
    (served.world.folder / "diplo.yaml").write_text("apps: [broken")
    served.world.controller.reload()
    result = served.run("status")
    assert result.exit_code == 0
    assert "manifest error (the last good manifest stays in force):\n" in result.stdout
    assert "invalid manifest (1 error); nothing was changed" in result.stdout
    assert "web" in result.stdout and "worker" in result.stdout  # still running


def _failed_reconcile(served: ServedWorld) -> None:
    """The controller tries to deploy worker from an image it cannot pull."""
    specs = app_specs()
    specs["worker"]["image"] = "nowhere:1"
    served.world.write(specs)
    served.world.controller.handle("worker")


def test_status_through_serve_explains_a_failed_reconcile(served: ServedWorld):
    _failed_reconcile(served)
    result = served.run("status")
    assert result.exit_code == 0
    assert re.search(r"^worker\s.*OutOfSync\s.*#2 failed", result.stdout, re.MULTILINE)
    lines = result.stdout.splitlines()
    assert (
        "worker: last deployment failed at pull: "
        "image nowhere:1 is not on this host and cannot be pulled"
    ) in lines
    assert lines[-1].endswith(
        "worker: pull failed: image nowhere:1 is not on this host and cannot be pulled"
    )  # the controller's last error
    assert served.world.container("worker").spec.image == "busybox:latest"  # kept


def test_status_names_the_app_once_in_the_last_error_line(served: ServedWorld):
    _failed_reconcile(served)
    result = served.run("status")
    assert "worker: worker:" not in result.stdout


@pytest.mark.parametrize("announce", ["dead pid", "garbage", "nobody listening"])
def test_a_stale_serve_json_is_ignored(world: CliWorld, announce: str):
    world.write({"web": spec()})
    assert world.apply().exit_code == 0
    info = world.home / "serve.json"
    if announce == "dead pid":
        gone = subprocess.Popen(["true"])
        gone.wait()
        info.write_text(json.dumps({"pid": gone.pid, "url": "http://127.0.0.1:9"}))
    elif announce == "garbage":
        info.write_text("{not json")
    else:
        info.write_text(json.dumps({"pid": os.getpid(), "url": f"http://127.0.0.1:{free_port()}"}))
    result = world.run("status")
    assert result.exit_code == 0
    assert "from diplo serve" not in result.stdout
    assert re.search(r"^web\s+shop\s+running", result.stdout, re.MULTILINE)


def test_an_html_error_of_a_proxy_is_reported_with_its_status(world: CliWorld):
    with bad_gateway(world.home) as url:
        result = world.run("sync", "web")
    assert result.exit_code == 2
    assert result.stderr == (f"error: diplo serve at {url} answered 502: Bad Gateway\n")
    assert world.engine.calls == []


def test_status_reports_an_error_answer_of_the_server(world: CliWorld):
    with bad_gateway(world.home) as url:
        result = world.run("status")
    assert result.exit_code != 0
    assert "internal error" not in result.stderr
    assert f"diplo serve at {url} answered 502" in result.stderr


# --- errors nobody planned for ---------------------------------------------------------------


def _explode(*_: Any, **__: Any) -> Any:
    raise RuntimeError("engine exploded")


def test_an_unexpected_error_is_a_short_report_and_the_context_is_closed(world, monkeypatch):
    monkeypatch.setattr(world.engine, "observe", _explode)
    ledger = Ledger(world.ledger_path)
    context = Context(_runtime=world.engine, _ledger=ledger)
    result = CliRunner().invoke(main, ["status"], obj={"context": context})
    assert result.exit_code == 1
    assert result.stderr == (
        "error: internal error: RuntimeError: engine exploded "
        "(set DIPLO_DEBUG=1 for the traceback, and please report it)\n"
    )
    assert "Traceback" not in result.output
    with pytest.raises(LedgerError, match="closed database"):
        ledger.snapshot()  # closed after the command


def test_diplo_debug_lets_the_traceback_through(world, monkeypatch):
    monkeypatch.setenv("DIPLO_DEBUG", "1")
    monkeypatch.setattr(world.engine, "observe", _explode)
    result = world.run("status")
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)
    assert "internal error" not in result.output


def test_an_interrupt_exits_130(world, monkeypatch):
    def interrupted(*_: Any, **__: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(world.engine, "observe", interrupted)
    result = world.run("down", "--all")
    assert result.exit_code == 130 and result.stderr == "error: interrupted\n"


# --- diplo serve's options -------------------------------------------------------------------


def test_serve_hands_its_options_to_the_server(world, monkeypatch, tmp_path):
    from diplo.controller.sources import FolderSource, GitSource

    given: dict[str, Any] = {}

    def run_server(ctx: Context, sources: list[Any], host: str, port: int, **kw: Any) -> None:
        given.update(ctx=ctx, sources=sources, host=host, port=port, **kw)

    monkeypatch.setattr("diplo.serve.run_server", run_server)
    args = ["serve", "--manifests", str(world.site), "--listen", "[::1]:7701"]
    args += ["--repo", "https://git.example/shop.git", "--branch", "prod", "--path", "deploy/"]
    args += ["--resync", "30s", "--interval", "2m", "--workers", "3"]
    result = world.run(*args)
    assert result.exit_code == 0, result.output
    assert (given["host"], given["port"]) == ("::1", 7701)
    assert (given["resync"], given["poll_every"], given["workers"]) == (30.0, 120.0, 3)
    folder, repo = given["sources"]
    assert isinstance(folder, FolderSource) and isinstance(repo, GitSource)
    assert (repo.url, repo.branch, repo.path) == ("https://git.example/shop.git", "prod", "deploy")
    assert world.engine.calls == []  # nothing started: run_server is the test's
    assert given["ctx"].runtime is world.engine


# --- the live table ---------------------------------------------------------------------------


def test_live_reporter_draws_one_row_per_changed_app(world, monkeypatch):
    world.write({"web": spec(OLD_IMAGE), "worker": spec()})
    assert world.apply().exit_code == 0
    world.write({"web": spec(), "worker": spec(), "api": spec()})
    context = Context(_runtime=world.engine, _ledger=Ledger(world.ledger_path))
    try:
        plan = prepare(context, [str(world.manifest)], prune=False).plan
    finally:
        context.close()
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)  # the reporter's console writes to stdout

    with LiveReporter(plan) as live:
        assert set(live.rows) == {"api", "web"}  # worker is unchanged: no row
        assert all(step == "waiting" for step, _, _ in live.rows.values())
        live.step("web", "pull", "busybox:latest")
        assert live.rows["web"][:2] == ("pull", "busybox:latest")
        live.done("web", True, "updated (image)")
        live.done("api", False, "api: start failed\n  panic: no config")
    out = ANSI.sub("", screen.getvalue())
    assert re.search(r"web\s+ok\s+updated \(image\)", out)
    assert re.search(r"api\s+FAILED\s+api: start failed", out)
    assert "panic: no config" not in out  # only a message's first line
    assert "worker" not in out


def test_watch_uses_plain_lines_when_stdout_is_not_a_terminal(world, monkeypatch):
    world.write({"web": spec()})
    context = Context(_runtime=world.engine, _ledger=Ledger(world.ledger_path))
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    try:
        report = apply(context, load_manifests([str(world.manifest)]), dry_run=True)
        with contextlib.ExitStack() as stack:
            reporter = stack.enter_context(watch(False)(report, DeployHandle()))
            reporter.step("web", "create", "shop-web-1")
            reporter.done("web", True, "created")
    finally:
        context.close()
    assert out.getvalue() == "web: create shop-web-1\nweb: ok: created\n"


def test_history_shows_a_hostile_commit_subject_as_text(world: CliWorld):
    """A subject like `Fix [/] route` once crashed history (rich markup), and escape
    sequences in it reached the terminal (security review L2)."""
    world.write({"web": spec()})

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-C", str(world.site), "-c", "user.name=T", "-c", "user.email=t@example",
             *args],
            check=True, capture_output=True, text=True,
        )  # fmt: skip

    git("init", "-q")
    git("add", "diplo.yaml")
    git("commit", "-qm", "Fix [/] [bold]route[/bold] \x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\")
    assert world.apply().exit_code == 0
    result = world.run("history", "web")
    assert result.exit_code == 0, result.output
    assert "Fix [/] [bold]route[/bold]" in result.stdout
    assert "\x1b" not in result.stdout and "8;;http://evil" in result.stdout
