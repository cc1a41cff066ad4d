"""Revisions of apps: where a deployment's desired state came from (a folder, a git work
tree, a repository commit), and restoring an earlier deployment (a rollback).

A rollback redeploys the exact spec and image an earlier deployment ran: the spec from
the deployment's record in the ledger, the image from the tag that keeps it
(`diplo-kept/APP:dID`). Env values are not in the ledger (Diplo never stores a secret);
they come from the current manifest where their digest still matches. A rolled-back app
is pinned: every apply and the controller keep it on the restored deployment until
`diplo sync APP --resume`, like Argo CD pausing auto-sync after a rollback."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from diplo.errors import InputError
from diplo.ledger import Deployment
from diplo.model import DesiredApp, DesiredState, Revision, restore_app
from diplo.service import Context


def folder_source(folder: Path) -> str:
    """How deployments from manifests in `folder` record their source."""
    return f"folder:{folder}"


def folder_revision(paths: list[str]) -> Revision:
    """The revision of manifests read from files: their folder, and the git commit when
    the folder is in a work tree (dirty when it has uncommitted changes)."""
    from diplo.gitsource import worktree_revision

    first = Path(paths[0]).resolve() if paths else Path.cwd()
    folder = first if first.is_dir() else first.parent
    tree = worktree_revision(folder)
    if tree is None:
        return Revision(source=folder_source(folder))
    c = tree.commit
    return Revision(folder_source(folder), c.sha, c.subject, c.author, c.time, tree.dirty)


def deployment_revision(dep: Deployment) -> Revision:
    return Revision(
        dep.source or "",
        dep.commit_sha,
        dep.commit_subject,
        dep.commit_author,
        dep.commit_time,
        bool(dep.dirty),
    )


@dataclass
class Pinned:
    """A desired state with pinned apps replaced by their restored deployments."""

    desired: DesiredState
    rollback_of: dict[str, int] = field(default_factory=dict)  # app -> restored deployment
    revisions: dict[str, Revision] = field(default_factory=dict)  # the restored revisions
    blocked: dict[str, str] = field(default_factory=dict)  # pinned apps that cannot be restored


def apply_pins(ctx: Context, desired: DesiredState) -> Pinned:
    pins = ctx.ledger.pins()
    if not pins:
        return Pinned(desired)
    out = Pinned(desired)
    apps: list[DesiredApp] = []
    for app in desired.apps:
        pin = pins.get(app.name)
        if pin is None:
            apps.append(app)
            continue
        try:
            apps.append(restore(ctx, pin.deployment_id, app))
            out.rollback_of[app.name] = pin.deployment_id
            dep = ctx.ledger.deployment(pin.deployment_id)
            if dep is not None:
                out.revisions[app.name] = deployment_revision(dep)
        except InputError as exc:
            out.blocked[app.name] = exc.message
            apps.append(app)  # kept in the state so that nothing prunes it
    out.desired = replace(desired, apps=tuple(apps))
    return out


def target(ctx: Context, app: str, to: int | None) -> Deployment:
    """The deployment a rollback restores: `to`, or the newest successful deployment
    that ran another spec than the one applied now."""
    if to is not None:
        dep = ctx.ledger.deployment(to)
        if dep is None or dep.app != app:
            raise InputError(
                f"no deployment {to} of app {app!r}",
                hint=f"`diplo history {app}` lists its deployments",
            )
        if dep.result != "succeeded":
            raise InputError(
                f"deployment {to} of {app!r} {dep.result}; only a successful one can be restored",
                hint=f"`diplo history {app}` lists its deployments",
            )
        return dep
    applied = ctx.ledger.snapshot().apps.get(app)
    current = applied.spec_hash if applied else None
    for dep in ctx.ledger.deployments(app, limit=200):
        if dep.result == "succeeded" and dep.spec_hash != current and dep.record_json:
            return dep
    raise InputError(
        f"{app}: no earlier successful deployment with another spec to roll back to",
        hint=f"`diplo history {app}` lists its deployments; pick one with --to",
    )


def restore(ctx: Context, dep_id: int, current: DesiredApp | None) -> DesiredApp:
    """The app exactly as deployment `dep_id` ran it (env values from `current`)."""
    dep = ctx.ledger.deployment(dep_id)
    if dep is None or dep.record_json is None:
        raise InputError(
            f"deployment {dep_id} has no record to restore (made by an older Diplo)",
            hint="pick a newer deployment with --to",
        )
    image_id = ctx.runtime.image_id(dep.kept_image) if dep.kept_image else None
    if image_id is None:
        raise InputError(
            f"{dep.app}: the image of deployment {dep_id} is no longer kept "
            "(deploy.keep_images sets how many recent deployments keep theirs)",
            hint="roll back to a more recent deployment, or deploy a commit again",
        )
    values = dict(current.env) if current is not None else {}
    app, missing = restore_app(json.loads(dep.record_json), values, image_id)
    if app is None:
        raise InputError(
            f"{dep.app}: deployment {dep_id} ran with env {', '.join(missing)} whose value "
            "is not in the current manifest any more (Diplo never stores env values)",
            hint="set those values again (environment or .env) and retry",
        )
    return app
