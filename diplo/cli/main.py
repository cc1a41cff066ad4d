"""The `diplo` commands: parse input, call the operations layer, render the result.

Exit codes: 0 converged / in sync, 1 a deployment failed or was cancelled by `diplo
cancel` (or `diff` found differences), 2 invalid input or usage, 130 interrupted (Ctrl-C)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from diplo import __version__
from diplo.cli.handled import handled
from diplo.cli.policy import policy
from diplo.cli.proxy import proxy
from diplo.cli.serve import serve
from diplo.errors import InputError
from diplo.logconfig import configure
from diplo.model import MAX_ID
from diplo.ops.context import Context

if TYPE_CHECKING:  # the operations are imported by the commands that run them
    from diplo.ops.commands import Operations, Outcome

FILES_HELP = "Manifest file or folder (repeatable). Default: ./diplo.yaml"


def _files(files: tuple[str, ...]) -> list[str]:
    return list(files) or ["diplo.yaml"]


def _context(ctx: click.Context) -> Context:
    context: Context = ctx.obj["context"]
    return context


def _json(ctx: click.Context) -> bool:
    return bool(ctx.obj["log_format"] == "json")


def _tell_waiting(app: str) -> None:
    click.echo(f"{app}: waiting for another Diplo process (diplo serve?) deploying it", err=True)


def _operations(ctx: click.Context, files: tuple[str, ...]) -> Operations:
    """The running `diplo serve` of this host when there is one, else this process."""
    from diplo.cli.client import running_server
    from diplo.cli.render import watch
    from diplo.ops.commands import LocalOps

    server = running_server()
    if server is not None:
        return server
    return LocalOps(
        _context(ctx),
        _files(files),
        watch=watch(_json(ctx)),
        say=click.echo,
        waiting=_tell_waiting,
        files_optional=not files,
    )


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
    from diplo.cli.render import apply_outcome, plan_as_json, render_plan, say_pins, watch
    from diplo.manifest.load import load_manifests
    from diplo.ops.apply import apply as apply_desired
    from diplo.ops.provenance import folder_revision

    desired = load_manifests(_files(files))  # invalid input stops here, before any change
    if not desired.apps and not (prune and desired.allow_empty):
        raise InputError(
            f"{', '.join(desired.files or _files(files))}: no apps; nothing was changed",
            hint="`diplo down APP` removes apps; `apply --prune` of a manifest that says "
            "`allow_empty: true` removes every app of its project",
        )
    report = apply_desired(
        _context(ctx),
        desired,
        prune=prune,
        wait=not no_wait,
        parallel=parallel,
        dry_run=dry_run,
        revision=folder_revision(_files(files)),
        watch=watch(_json(ctx)),
        waiting=_tell_waiting,
    )
    if dry_run:
        say_pins(report)
        plan = report.plan
        click.echo(
            json.dumps(plan_as_json(plan)) if _json(ctx) else render_plan(plan) or "nothing to do"
        )
        return
    sys.exit(apply_outcome(report, _json(ctx)))


@main.command()
@click.option("-f", "--file", "files", multiple=True, type=str, help=FILES_HELP)
@click.option("--json", "as_json", is_flag=True, help="The plan as JSON.")
@click.pass_context
@handled
def diff(ctx: click.Context, files: tuple[str, ...], as_json: bool) -> None:
    """Show what apply would change. Exit 0 when in sync, 1 when there are differences."""
    from diplo.cli.render import plan_as_json, render_plan
    from diplo.ops.plan import prepare

    plan = prepare(_context(ctx), _files(files), prune=True).plan
    if as_json or _json(ctx):
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
    from diplo.cli.render import status_table

    statuses = _operations(ctx, ()).status(app)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in statuses.apps], indent=2))
        return
    status_table(statuses)


@main.command()
@click.option("--once", is_flag=True, help="Print one table and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document and exit.")
@click.option(
    "--every",
    type=click.FloatRange(0.5, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes of the live table.",
)
@click.pass_context
@handled
def top(ctx: click.Context, once: bool, as_json: bool, every: float) -> None:
    """Live CPU, memory, network and restarts of each app (from diplo serve's collector)."""
    import time

    from diplo.cli.usage import print_top, top_table

    ops = _operations(ctx, ())
    if as_json:
        click.echo(json.dumps(ops.top().as_dict(), indent=2))
        return
    if once or not sys.stdout.isatty():
        print_top(ops.top())
        return
    from rich.live import Live

    try:
        with Live(top_table(ops.top()), auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(every)
                live.update(top_table(ops.top()), refresh=True)
    except KeyboardInterrupt:
        return  # Ctrl-C is how a live table ends


@main.command()
@click.option("--json", "as_json", is_flag=True, help="As GET /alerts answers.")
@click.pass_context
@handled
def alerts(ctx: click.Context, as_json: bool) -> None:
    """Alerts firing and recently resolved (from diplo serve, else from the ledger)."""
    from diplo.cli.usage import print_alerts

    answer = _operations(ctx, ()).alerts()
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    print_alerts(answer)


@main.command()
@click.argument("app")
@click.option("--since", default="1h", show_default=True, help="How far back: 30m, 1h, 7d.")
@click.option("--step", default=None, help="Seconds per value (default: 30 rows, or raw).")
@click.option("--json", "as_json", is_flag=True, help="The series as one JSON document.")
@click.pass_context
@handled
def metrics(ctx: click.Context, app: str, since: str, step: str | None, as_json: bool) -> None:
    """An app's CPU, memory, network and probe latency over time."""
    import math

    from diplo.cli.usage import ROWS, series_table
    from diplo.ops.commands import duration

    seconds = duration(since, "--since")
    if step is None and not as_json:
        step = f"{math.ceil(seconds / ROWS)}s"
    series = _operations(ctx, ()).metrics(app, since, step)
    if as_json:
        click.echo(json.dumps(series, indent=2))
        return
    series_table(series)


@main.command()
@click.argument("apps", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every app Diplo runs on this host.")
@click.option("--volumes", is_flag=True, help="Also remove the apps' named volumes (data!).")
@click.pass_context
@handled
def down(ctx: click.Context, apps: tuple[str, ...], everything: bool, volumes: bool) -> None:
    """Stop and remove apps (named volumes are kept unless --volumes)."""
    from diplo.ops.lifecycle import down as take_down

    if bool(apps) == everything:
        raise click.UsageError("name the apps to remove, or pass --all (not both)")
    removed = take_down(_context(ctx), list(apps), everything=everything, volumes=volumes)
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
    from diplo.ops.lifecycle import logs as app_logs

    out = sys.stdout.buffer
    try:
        for chunk in app_logs(_context(ctx), app, follow=follow, tail=tail):
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
    from diplo.ops.lifecycle import cancel as cancel_deploys

    still_running = False
    for c in cancel_deploys(_context(ctx), app, wait=wait_s):
        if c.result is None:
            click.echo(
                f"{app}: cancel requested; deployment #{c.deployment.revision} still running"
            )
            still_running = True
        else:
            click.echo(f"{app}: deployment #{c.deployment.revision} {c.result}")
    sys.exit(1 if still_running else 0)


@main.command()
@click.argument("app")
@click.option("-n", "--last", type=click.IntRange(1, 50), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handled
def health(ctx: click.Context, app: str, last: int, as_json: bool) -> None:
    """Probe APP now and print its recent probes."""
    from diplo.ops.status import probes, status

    (row,) = status(_context(ctx), app)  # probes once and records it
    recent = probes(_context(ctx), app, last)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "app": app,
                    "health": row.health,
                    "detail": row.health_detail,
                    "restarts": row.restarts,
                    "probes": [p.__dict__ for p in recent],
                },
                indent=2,
            )
        )
        return
    click.echo(f"{app}: {row.health} ({row.health_detail})")
    for p in recent:
        mark = "ok  " if p.ok else "FAIL"
        latency = f"{p.latency_ms:.0f}ms" if p.latency_ms is not None else "-"
        click.echo(f"  {p.at}  {mark}  {p.health:<9}  {latency:>6}  {p.detail}")
    if not recent:
        click.echo("  no probes recorded (the app has no http, tcp or cmd health check)")


@main.command()
@click.argument("app")
@click.option("-n", "--last", type=click.IntRange(1, 200), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handled
def history(ctx: click.Context, app: str, last: int, as_json: bool) -> None:
    """APP's deployments, newest first: revision, commit, result and why."""
    from diplo.cli.render import history_table
    from diplo.ops.status import history as deployments

    deps = deployments(_context(ctx), app, last)
    if as_json:
        click.echo(json.dumps([d.public() for d in deps], indent=2))
        return
    if not deps:
        raise InputError(f"no deployments of {app!r} recorded", hint="`diplo status` lists apps")
    history_table(deps)


def _finish(ctx: click.Context, app: str, outcome: Outcome) -> None:
    """Exit with what a rollback or sync came to: run here, like an apply; through
    `diplo serve`, its answer."""
    from diplo.cli.render import apply_outcome

    if outcome.report is None:
        click.echo(f"{app}: {outcome.detail}")
        sys.exit(0 if outcome.ok else 1)
    code = apply_outcome(outcome.report, _json(ctx))
    if code:
        sys.exit(code)


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
    _finish(ctx, app, _operations(ctx, files).rollback(app, to))


@main.command()
@click.argument("app")
@click.option("--resume", is_flag=True, help="Undo a rollback's pin: follow the source again.")
@click.option("-f", "--file", "files", multiple=True, type=str, help=FILES_HELP)
@click.pass_context
@handled
def sync(ctx: click.Context, app: str, resume: bool, files: tuple[str, ...]) -> None:
    """Reconcile APP now (through the running diplo serve, else from the manifest files)."""
    _finish(ctx, app, _operations(ctx, files).sync(app, resume=resume))


@main.command()
def schema() -> None:
    """Print the manifest's JSON Schema."""
    from diplo.manifest.spec import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


main.add_command(serve)
main.add_command(policy)
main.add_command(proxy)
