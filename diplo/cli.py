"""The `diplo` command line: parse input, call the service layer, render the result.

Exit codes: 0 converged / in sync, 1 a deployment failed (or `diff` found differences),
2 invalid input or usage."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click

from diplo import __version__
from diplo.errors import DiploError, InputError
from diplo.ledger import MAX_ID
from diplo.logconfig import configure

P = ParamSpec("P")
R = TypeVar("R")

FILES_HELP = "Manifest file or folder (repeatable). Default: ./diplo.yaml"


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    """Diplo errors become a message and an exit code; anything else a short report
    (set DIPLO_DEBUG=1 for the traceback). Never a bare traceback."""

    @wraps(fn)
    def inner(*args: P.args, **kwargs: P.kwargs) -> R:
        from diplo.service import Context

        ctx = click.get_current_context()
        ctx.ensure_object(dict)
        service_ctx = ctx.obj.setdefault("service", Context())
        try:
            return fn(*args, **kwargs)
        except DiploError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except click.ClickException:
            raise  # usage errors: click prints them and exits 2
        except Exception as exc:
            if os.environ.get("DIPLO_DEBUG"):
                raise
            _fail(
                f"internal error: {type(exc).__name__}: {exc} "
                "(set DIPLO_DEBUG=1 for the traceback, and please report it)",
                1,
            )
        finally:
            service_ctx.close()
        raise AssertionError("unreachable")

    return inner


def _files(files: tuple[str, ...]) -> list[str]:
    return list(files) or ["diplo.yaml"]


def _service(ctx: click.Context) -> Any:
    return ctx.obj["service"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="diplo")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: structlog JSON lines on stdout instead of human output.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log what happens, step by step.")
@click.pass_context
def main(ctx: click.Context, log_format: str, verbose: bool) -> None:
    """Diplo: declarative deploys onto a Docker host, GitOps style."""
    ctx.ensure_object(dict)
    ctx.obj["log_format"] = log_format
    configure(log_format, "info" if verbose or log_format == "json" else "warning")


@main.command()
@click.option("-f", "--file", "files", multiple=True, type=str, help=FILES_HELP)
@click.option(
    "--prune", is_flag=True, help="Remove apps of these projects that are no longer in the files."
)
@click.option("--dry-run", is_flag=True, help="Show the plan; change nothing.")
@click.option("--no-wait", is_flag=True, help="Return once containers start; skip health gates.")
@click.option(
    "--parallel",
    default=8,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Engine operations in flight at once.",
)
@click.pass_context
@handled
def apply(
    ctx: click.Context,
    files: tuple[str, ...],
    prune: bool,
    dry_run: bool,
    no_wait: bool,
    parallel: int,
) -> None:
    """Converge the host onto the manifests; wait until changed apps are healthy."""
    from diplo import service
    from diplo.manifest.load import load_manifests

    svc = _service(ctx)
    json_mode = ctx.obj["log_format"] == "json"
    desired = load_manifests(_files(files))  # invalid input stops here, before any change
    names = service.apps_to_lock(svc, desired, prune=prune)
    with svc.locks.hold(names, waiting=_tell_waiting):
        _apply_locked(
            ctx, svc, desired, _files(files), prune, dry_run, no_wait, parallel, json_mode
        )


def _tell_waiting(app: str) -> None:
    click.echo(f"{app}: waiting for another Diplo process (diplo serve?) deploying it", err=True)


def _apply_locked(
    ctx: click.Context,
    svc: Any,
    desired: Any,
    paths: list[str],
    prune: bool,
    dry_run: bool,
    no_wait: bool,
    parallel: int,
    json_mode: bool,
    only: frozenset[str] | None = None,
) -> None:
    from diplo import revisions, service
    from diplo.output import JsonReporter, LiveReporter, PlainReporter, plan_as_json, render_plan

    pinned = revisions.apply_pins(svc, desired)
    if pinned.blocked:
        raise InputError("; ".join(pinned.blocked.values()))
    for name, dep_id in sorted(pinned.rollback_of.items()):
        if only is None or name in only:
            click.echo(
                f"{name}: pinned to deployment {dep_id} by a rollback; "
                f"`diplo sync {name} --resume` follows the manifest again",
                err=True,
            )
    plan = service.plan_state(svc, pinned.desired, prune=prune, only=only).plan
    if dry_run:
        click.echo(
            json.dumps(plan_as_json(plan)) if json_mode else render_plan(plan) or "nothing to do"
        )
        return
    from diplo.executor import Executor

    live = (
        LiveReporter(plan)
        if not json_mode and sys.stdout.isatty() and any(p.actions for p in plan.apps)
        else None
    )
    reporter = JsonReporter() if json_mode else live or PlainReporter()
    executor = Executor(
        svc.runtime,
        svc.ledger,
        reporter,
        workers=parallel,
        wait=not no_wait,
        revision=revisions.folder_revision(paths),
        rollback_of=pinned.rollback_of,
        revisions=pinned.revisions,
    )
    # Ctrl-C cancels the deploys in flight: new containers go, previous revisions stay.
    previous = signal.signal(signal.SIGINT, lambda *_: executor.cancel("Ctrl-C"))
    try:
        if live is not None:
            with live:
                result = executor.run(plan)
        else:
            result = executor.run(plan)
    finally:
        signal.signal(signal.SIGINT, previous)
    orphans = [p.app for p in plan.apps if p.kind == "remove" and not p.actions]
    if json_mode:
        outcomes = {
            name: {"change": o.kind, "ok": o.ok, "message": o.message, "step": o.step}
            for name, o in sorted(result.outcomes.items())
        }
        click.echo(json.dumps({"ok": result.ok, "apps": outcomes}))
    else:
        if orphans:
            click.echo(f"not in the manifests (kept; apply --prune removes): {', '.join(orphans)}")
        n = len(result.outcomes)
        changed = [o for o in result.outcomes.values() if o.kind != "unchanged"]
        if result.ok and changed:
            click.echo(f"converged: {n} app{'s' if n != 1 else ''}, {len(changed)} changed")
        elif result.ok:
            click.echo(f"in sync: {n} apps, nothing to do")
        for o in result.failed:
            click.echo(f"error: {o.message}", err=True)
    if executor.cancel_all.is_set():
        sys.exit(130)
    if not result.ok:
        sys.exit(1)


@main.command()
@click.option("-f", "--file", "files", multiple=True, type=str, help=FILES_HELP)
@click.option("--json", "as_json", is_flag=True, help="The plan as JSON.")
@click.pass_context
@handled
def diff(ctx: click.Context, files: tuple[str, ...], as_json: bool) -> None:
    """Show what apply would change. Exit 0 when in sync, 1 when there are differences."""
    from diplo import service
    from diplo.output import plan_as_json, render_plan

    prepared = service.prepare(_service(ctx), _files(files), prune=True)
    plan = prepared.plan
    if as_json or ctx.obj["log_format"] == "json":
        click.echo(json.dumps(plan_as_json(plan), indent=2))
    else:
        click.echo(render_plan(plan))
        click.echo("in sync" if plan.in_sync else "differences found")
    sys.exit(0 if plan.in_sync else 1)


@main.command()
@click.argument("app", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@handled
def status(ctx: click.Context, app: str | None, as_json: bool) -> None:
    """Apps on this host: desired vs running, state, image, ports, last deployment."""
    from diplo import service
    from diplo.serve import running_server

    manifest_error = None
    server = running_server()
    if server is not None:  # the controller's view: no engine calls of our own
        rows, manifest_error = server.status(app)
    else:
        rows = [r.as_dict() for r in service.status(_service(ctx), app)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in (
        "APP",
        "PROJECT",
        "STATE",
        "HEALTH",
        "READY",
        "IMAGE",
        "PORTS",
        "SPEC",
        "SYNC",
        "REVISION",
        "LAST DEPLOY",
    ):
        table.add_column(col, overflow="fold")
    for r in rows:
        d = r["last_deployment"]
        last = f"#{d['revision']} {d['result']} {d['finished_at'] or d['started_at']}" if d else "-"
        table.add_row(
            r["app"],
            r["project"],
            r["state"],
            r["health"],
            f"{r['running']}/{r['desired']}",
            r["image"],
            ", ".join(r["ports"]) or "-",
            r["spec_hash"] or "-",
            _sync_text(r),
            _revision_text(r),
            last,
        )
    if server is not None:
        click.echo(f"from diplo serve at {server.url}")
    if rows:
        Console(width=200 if not sys.stdout.isatty() else None).print(table)
    else:
        click.echo("no apps on this host")
    for r in rows:
        d = r["last_deployment"]
        if r["health"] != "healthy":
            extra = f", {r['restarts']} restarts" if r["restarts"] else ""
            click.echo(f"{r['app']}: {r['health']}: {r['health_detail']}{extra}")
        if d and d["result"] in ("failed", "cancelled", "interrupted"):
            click.echo(f"{r['app']}: last deployment {d['result']} at {d['step']}: {d['error']}")
        if r.get("last_error"):
            click.echo(f"{r['app']}: {r['last_error']}")
    if manifest_error:
        click.echo(f"manifest error (the last good manifest stays in force):\n{manifest_error}")


def _sync_text(row: dict[str, Any]) -> str:
    """Argo CD's sync column; only the controller knows the source's newest revision."""
    sync = row.get("sync")
    if not sync:
        return "-"
    pin = row.get("pinned")
    return sync["status"] + (f" (pinned to #{pin['deployment']})" if pin else "")


def _commit_text(sha: str | None, dirty: bool) -> str:
    return (sha or "-")[:10] + ("+dirty" if sha and dirty else "")


def _revision_text(row: dict[str, Any]) -> str:
    rev = row.get("revision") or row.get("last_deployment") or {}
    commit = rev.get("commit")
    if not commit:
        return "-"
    text = _commit_text(commit, bool(rev.get("dirty")))
    newest = row.get("source_revision")
    if newest and newest != commit:
        text += f" (source at {newest[:10]})"
    return text


@main.command()
@click.argument("apps", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every app Diplo runs on this host.")
@click.option("--volumes", is_flag=True, help="Also remove the apps' named volumes (data!).")
@click.pass_context
@handled
def down(ctx: click.Context, apps: tuple[str, ...], everything: bool, volumes: bool) -> None:
    """Stop and remove apps (named volumes are kept unless --volumes)."""
    from diplo import service

    if bool(apps) == everything:
        raise click.UsageError("name the apps to remove, or pass --all (not both)")
    removed = service.down(_service(ctx), list(apps), everything=everything, volumes=volumes)
    for item in removed:
        click.echo(f"removed {item}")
    if not removed:
        click.echo("nothing to remove")


@main.command()
@click.argument("app")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new lines.")
@click.option(
    "-n", "--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines."
)
@click.pass_context
@handled
def logs(ctx: click.Context, app: str, follow: bool, tail: int | None) -> None:
    """Print an app's container logs, like `docker logs`."""
    from diplo import service

    out = sys.stdout.buffer
    try:
        for chunk in service.logs(_service(ctx), app, follow=follow, tail=tail):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("app")
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to wait for the deploy to stop.",
)
@click.pass_context
@handled
def cancel(ctx: click.Context, app: str, wait_s: float) -> None:
    """Cancel APP's deploy in flight (from any terminal): the new containers are removed
    and the previous revision keeps running."""
    svc = _service(ctx)
    flagged = svc.ledger.request_cancel(app)
    if not flagged:
        raise InputError(f"no deploy of {app!r} is in flight; nothing to cancel")
    deadline = time.monotonic() + wait_s
    for dep in flagged:
        while True:
            now = svc.ledger.deployment(dep.id)
            if now is None or now.result != "running":
                click.echo(f"{app}: deployment #{dep.revision} {now.result if now else 'gone'}")
                break
            if time.monotonic() > deadline:
                click.echo(f"{app}: cancel requested; deployment #{dep.revision} still running")
                sys.exit(1)
            time.sleep(0.1)


@main.command()
@click.argument("app")
@click.option("-n", "--last", type=click.IntRange(1, 50), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handled
def health(ctx: click.Context, app: str, last: int, as_json: bool) -> None:
    """Probe APP now and print its recent probes."""
    from diplo import service

    svc = _service(ctx)
    (row,) = service.status(svc, app)  # probes once and records it
    probes = svc.ledger.probes(app, last)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "app": app,
                    "health": row.health,
                    "detail": row.health_detail,
                    "restarts": row.restarts,
                    "probes": [p.__dict__ for p in probes],
                },
                indent=2,
            )
        )
        return
    click.echo(f"{app}: {row.health} ({row.health_detail})")
    for p in probes:
        mark = "ok  " if p.ok else "FAIL"
        latency = f"{p.latency_ms:.0f}ms" if p.latency_ms is not None else "-"
        click.echo(f"  {p.at}  {mark}  {p.health:<9}  {latency:>6}  {p.detail}")
    if not probes:
        click.echo("  no probes recorded (the app has no http, tcp or cmd health check)")


@main.command()
@click.argument("app")
@click.option("-n", "--last", type=click.IntRange(1, 200), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handled
def history(ctx: click.Context, app: str, last: int, as_json: bool) -> None:
    """APP's deployments, newest first: revision, commit, result and why."""
    deps = _service(ctx).ledger.deployments(app, last)
    if as_json:
        click.echo(json.dumps([d.public() for d in deps], indent=2))
        return
    if not deps:
        raise InputError(f"no deployments of {app!r} recorded", hint="`diplo status` lists apps")
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("ID", "REV", "STARTED", "RESULT", "COMMIT", "MESSAGE", "NOTE"):
        table.add_column(col, overflow="fold")
    for d in deps:
        commit = _commit_text(d.commit_sha, bool(d.dirty))
        note = f"rollback to #{d.rollback_of}" if d.rollback_of else ""
        if d.error:
            note = (note + "; " if note else "") + f"{d.step}: {d.error}"
        table.add_row(
            str(d.id),
            str(d.revision),
            d.started_at[:19].replace("T", " "),
            d.result,
            commit,
            d.commit_subject or "",
            note,
        )
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


@main.command()
@click.argument("app")
@click.option(
    "--to",
    "to",
    type=click.IntRange(1, MAX_ID),
    default=None,
    help="Deployment ID (see diplo history).",
)
@click.option("-f", "--file", "files", multiple=True, type=str, help=FILES_HELP)
@click.pass_context
@handled
def rollback(ctx: click.Context, app: str, to: int | None, files: tuple[str, ...]) -> None:
    """Redeploy an earlier deployment's exact spec and image (default: the last good one
    before the current), health-gated, and pin APP there until `diplo sync APP --resume`."""
    from diplo.serve import running_server

    server = running_server()
    if server is not None:
        answer = server.post(f"/apps/{app}/rollback", {"to": to} if to is not None else {})
        click.echo(f"{app}: {answer['detail']}")
        sys.exit(0 if answer.get("accepted") else 1)
    from diplo import revisions
    from diplo.manifest.load import load_manifests

    svc = _service(ctx)
    paths = _files(files)
    desired = load_manifests(paths) if files or os.path.exists(paths[0]) else None
    from diplo.model import DesiredState

    desired = desired or DesiredState()
    with svc.locks.hold([app], waiting=_tell_waiting):
        dep = revisions.target(svc, app, to)
        restored = revisions.restore(svc, dep.id, desired.app(app))
        svc.ledger.pin(app, dep.id, f"rolled back to deployment {dep.id}")
        click.echo(f"{app}: rolling back to deployment {dep.id} (revision {dep.revision})")
        scope = DesiredState(
            (*(a for a in desired.apps if a.name != app), restored),
            desired.files,
            tuple(sorted({*desired.projects, restored.project})),
        )
        try:
            _apply_locked(ctx, svc, scope, paths, False, False, False, 8, False, frozenset({app}))
        except SystemExit as exc:
            if exc.code:  # the restored revision did not come up: follow the source again
                svc.ledger.unpin(app)
                click.echo(f"{app}: rollback failed; {app} is not pinned", err=True)
            raise


@main.command()
@click.argument("app")
@click.option("--resume", is_flag=True, help="Undo a rollback's pin: follow the source again.")
@click.option("-f", "--file", "files", multiple=True, type=str, help=FILES_HELP)
@click.pass_context
@handled
def sync(ctx: click.Context, app: str, resume: bool, files: tuple[str, ...]) -> None:
    """Reconcile APP now (through the running diplo serve, else from the manifest files)."""
    from diplo.serve import running_server

    server = running_server()
    if server is not None:
        answer = server.post(f"/apps/{app}/sync" + ("?resume=true" if resume else ""), None)
        click.echo(f"{app}: {answer['detail']}")
        return
    from diplo.manifest.load import load_manifests

    svc = _service(ctx)
    desired = load_manifests(_files(files))
    if desired.app(app) is None:
        raise InputError(f"no app named {app!r} in {', '.join(_files(files))}")
    with svc.locks.hold([app], waiting=_tell_waiting):
        if resume and svc.ledger.unpin(app):
            click.echo(f"{app}: following the manifest again")
        _apply_locked(
            ctx, svc, desired, _files(files), False, False, False, 8, False, frozenset({app})
        )


@main.command()
@click.option(
    "--manifests",
    "manifests",
    default=None,
    type=click.Path(file_okay=False, path_type=str),
    help="A folder of manifests to keep the host converged onto.",
)
@click.option("--repo", default=None, help="A git repository (path, file://, https://, ssh://).")
@click.option("--branch", default="main", show_default=True, help="The branch of --repo.")
@click.option("--path", "repo_path", default="", help="The manifests' folder in --repo.")
@click.option(
    "--interval",
    default="60s",
    show_default=True,
    help="How often --repo is polled (webhooks at POST /hooks/git come in between).",
)
@click.option(
    "--listen", default="127.0.0.1:7700", show_default=True, help="HOST:PORT of the REST API."
)
@click.option(
    "--resync",
    default="60s",
    show_default=True,
    help="Full resync period (also heals what events missed).",
)
@click.option(
    "--workers",
    default=4,
    show_default=True,
    type=click.IntRange(1, 32),
    help="Apps reconciled at once.",
)
@click.pass_context
@handled
def serve(
    ctx: click.Context,
    manifests: str | None,
    repo: str | None,
    branch: str,
    repo_path: str,
    interval: str,
    listen: str,
    resync: str,
    workers: int,
) -> None:
    """Run the controller: watch the folder and/or poll the repository, heal drift, serve
    the API. Stops cleanly on SIGTERM or Ctrl-C, leaving the apps running."""
    from pathlib import Path

    from diplo.controller.sources import FolderSource, GitSource, Source
    from diplo.ledger import default_home
    from diplo.serve import run_server
    from diplo.units import parse_duration

    if manifests is None and repo is None:
        raise click.UsageError("give --manifests DIR, --repo URL, or both")
    host, _, port_text = listen.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InputError(f"--listen {listen!r}: use HOST:PORT, e.g. 127.0.0.1:7700")
    periods = {}
    for name, text in (("--resync", resync), ("--interval", interval)):
        try:
            periods[name] = parse_duration(text)
        except ValueError as exc:
            raise InputError(f"{name}: {exc}") from exc
    if ".." in Path(repo_path).parts or Path(repo_path).is_absolute():
        raise InputError(f"--path {repo_path!r}: give a folder inside the repository")
    sources: list[Source] = []
    if manifests is not None:
        sources.append(FolderSource(Path(manifests)))
    if repo is not None:
        sources.append(GitSource(repo, branch, repo_path, default_home()))
    run_server(
        _service(ctx),
        sources,
        host.strip("[]"),
        int(port_text),
        periods["--resync"],
        workers,
        periods["--interval"],
    )


@main.command()
def schema() -> None:
    """Print the manifest's JSON Schema."""
    from diplo.manifest.spec import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


if __name__ == "__main__":
    main()
