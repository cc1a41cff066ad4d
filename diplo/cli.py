"""The `diplo` command line: parse input, call the service layer, render the result.

Exit codes: 0 converged / in sync, 1 a deployment failed (or `diff` found differences),
2 invalid input or usage."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click

from diplo import __version__
from diplo.errors import DiploError
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
@click.option(
    "--parallel",
    default=8,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Apps deployed at once.",
)
@click.pass_context
@handled
def apply(
    ctx: click.Context, files: tuple[str, ...], prune: bool, dry_run: bool, parallel: int
) -> None:
    """Converge the host onto the manifests."""
    from diplo import service
    from diplo.output import JsonReporter, LiveReporter, PlainReporter, plan_as_json, render_plan

    svc = _service(ctx)
    json_mode = ctx.obj["log_format"] == "json"
    prepared = service.prepare(svc, _files(files), prune=prune)
    plan = prepared.plan
    if dry_run:
        if json_mode:
            click.echo(json.dumps(plan_as_json(plan)))
        else:
            click.echo(render_plan(plan) or "nothing to do")
        return
    from diplo.executor import Executor

    orphans = [p.app for p in plan.apps if p.kind == "remove" and not p.actions]
    if json_mode:
        result = Executor(svc.runtime, svc.ledger, JsonReporter(), workers=parallel).run(plan)
    elif sys.stdout.isatty() and any(p.actions for p in plan.apps):
        with LiveReporter(plan) as live:
            result = Executor(svc.runtime, svc.ledger, live, workers=parallel).run(plan)
    else:
        result = Executor(svc.runtime, svc.ledger, PlainReporter(), workers=parallel).run(plan)
    if json_mode:
        click.echo(
            json.dumps(
                {
                    "ok": result.ok,
                    "apps": {
                        name: {"change": o.kind, "ok": o.ok, "message": o.message, "step": o.step}
                        for name, o in sorted(result.outcomes.items())
                    },
                }
            )
        )
    else:
        changed = [o for o in result.outcomes.values() if o.kind != "unchanged"]
        if orphans:
            click.echo(f"not in the manifests (kept; apply --prune removes): {', '.join(orphans)}")
        if result.ok:
            n = len(result.outcomes)
            click.echo(
                f"converged: {n} app{'s' if n != 1 else ''}, {len(changed)} changed"
                if changed
                else f"in sync: {n} apps, nothing to do"
            )
        else:
            for o in result.failed:
                click.echo(f"error: {o.message}", err=True)
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

    rows = service.status(_service(ctx), app)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("APP", "PROJECT", "STATE", "READY", "IMAGE", "PORTS", "SPEC", "LAST DEPLOY"):
        table.add_column(col, overflow="fold")
    for r in rows:
        d = r.last_deployment
        last = f"#{d['revision']} {d['result']} {d['finished_at'] or d['started_at']}" if d else "-"
        table.add_row(
            r.app,
            r.project,
            r.state,
            f"{r.running}/{r.desired}",
            r.image,
            ", ".join(r.ports) or "-",
            r.spec_hash or "-",
            last,
        )
    if not rows:
        click.echo("no apps on this host")
        return
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    for r in rows:
        d = r.last_deployment
        if d and d["result"] == "failed":
            click.echo(f"{r.app}: last deployment failed at {d['step']}: {d['error']}")


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
def schema() -> None:
    """Print the manifest's JSON Schema."""
    from diplo.manifest.spec import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


if __name__ == "__main__":
    main()
