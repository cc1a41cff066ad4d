"""Rollback: restore an earlier deployment, pin the app there, resume following the source.

A rollback redeploys the exact spec and image an earlier deployment ran: the spec from
the deployment's record in the ledger, the image from the tag that keeps it
(`diplo-kept/APP:dID-LEDGER`). Env values are not in the ledger (Diplo never stores a secret);
they come from the current manifest where their digest still matches. A rolled-back app
is pinned: every apply and the controller keep it on the restored deployment until
`resume` (`diplo sync APP --resume`), like Argo CD pausing auto-sync after a rollback.
A pinned deploy that fails drops its pin (`ops.apply`), so that a broken restore never
holds an app away from its source."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from diplo.errors import InputError
from diplo.hostkey import unseal
from diplo.model import Deployment, DesiredApp, DesiredState, Revision, restore_app
from diplo.ops.context import Context
from diplo.ops.provenance import deployment_revision


@dataclass
class Pinned:
    """A desired state with pinned apps replaced by their restored deployments."""

    desired: DesiredState
    rollback_of: dict[str, int] = field(default_factory=dict)  # app -> restored deployment
    revisions: dict[str, Revision] = field(default_factory=dict)  # the restored revisions
    blocked: dict[str, str] = field(default_factory=dict)  # pinned apps that cannot be restored


def apply_pins(ctx: Context, desired: DesiredState, only: frozenset[str] | None = None) -> Pinned:
    """`desired` with each pinned app (of `only`, when given) replaced by its restored
    deployment."""
    pins = ctx.ledger.pins()
    if not pins:
        return Pinned(desired)
    out = Pinned(desired)
    apps: list[DesiredApp] = []
    for app in desired.apps:
        pin = pins.get(app.name)
        if pin is None or (only is not None and app.name not in only):
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
    if dep.image_id and image_id != dep.image_id:  # retagged since, outside this Diplo
        raise InputError(
            f"{dep.app}: the tag {dep.kept_image} that kept the image of deployment "
            f"{dep_id} now names another image ({image_id[:19]}, not {dep.image_id[:19]}); "
            "nothing was changed",
            hint="roll back to another deployment, or deploy a commit again",
        )
    values = dict(current.env) if current is not None else {}
    blob = ctx.ledger.sealed_env(dep_id)
    opened = unseal(ctx.key, blob) if blob is not None else None
    kept = json.loads(opened) if opened is not None else {}
    if isinstance(kept, list):  # sealed by an older Diplo: the env pairs alone
        kept = {"env": kept}
    values.update((k, v) for k, v in kept.get("env", []))  # the values that deployment ran with
    app, missing = restore_app(json.loads(dep.record_json), values, image_id, kept)
    if app is None:
        raise InputError(
            f"{dep.app}: deployment {dep_id} ran with env {', '.join(missing)} whose value "
            "is neither in the current manifest nor kept (only deployments that keep their "
            "image keep their env values, sealed)",
            hint="set those values again (environment or .env) and retry",
        )
    return app


def pin(
    ctx: Context, app: str, to: int | None, current: DesiredApp | None, *, lock_wait: float
) -> tuple[Deployment, DesiredApp]:
    """Pin `app` to the deployment a rollback restores (see `target`), under the app's
    lock; returns it and the app as it restores it. Fails before the pin, changing
    nothing, when it cannot be restored."""
    with ctx.locks.hold([app], timeout=lock_wait):
        dep = target(ctx, app, to)
        restored = restore(ctx, dep.id, current)
        ctx.ledger.pin(app, dep.id, f"rolled back to deployment {dep.id}")
    return dep, restored


def resume(ctx: Context, app: str, *, lock_wait: float) -> bool:
    """Drop a rollback's pin: the app follows its source again. Returns whether it was
    pinned."""
    with ctx.locks.hold([app], timeout=lock_wait):
        return ctx.ledger.unpin(app)


def with_app(desired: DesiredState, app: DesiredApp) -> DesiredState:
    """`desired` with `app` in it (replacing one of the same name)."""
    return replace(
        desired,
        apps=(*(a for a in desired.apps if a.name != app.name), app),
        projects=tuple(sorted({*desired.projects, app.project})),
    )
