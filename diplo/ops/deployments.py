"""Two deployments of an app side by side: what the dashboard's history and rollback
confirmation show (the spec fields that differ, env values as their digests only)."""

from __future__ import annotations

import json
from typing import Any

from diplo.errors import InputError
from diplo.model import Deployment
from diplo.ops.context import Context
from diplo.planner import diff_specs

# What a deployment's record holds beside its spec: bookkeeping, not a difference.
NOT_SPEC = ("masked",)


def _record(ctx: Context, app: str, dep_id: int) -> tuple[Deployment, dict[str, Any]]:
    dep = ctx.ledger.deployment(dep_id)
    if dep is None or dep.app != app:
        raise InputError(f"no deployment {dep_id} of app {app!r}")
    if dep.record_json is None:
        raise InputError(f"deployment {dep_id} of {app!r} kept no record of its spec")
    data = json.loads(dep.record_json)
    return dep, {k: v for k, v in data.items() if k not in NOT_SPEC}


def spec_diff(ctx: Context, app: str, old: int, new: int) -> list[dict[str, Any]]:
    """The fields of `app`'s spec that differ from deployment `old` to deployment `new`:
    `{"path", "old", "new"}` each, in path order."""
    _, before = _record(ctx, app, old)
    _, after = _record(ctx, app, new)
    return [{"path": c.path, "old": c.old, "new": c.new} for c in diff_specs(before, after)]


def current(ctx: Context, app: str) -> int | None:
    """The deployment that runs now: the newest successful one."""
    dep = ctx.ledger.deployed().get(app)
    return dep.id if dep is not None else None
