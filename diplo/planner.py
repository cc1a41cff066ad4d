"""The planner: a pure function from (desired, observed, ledger, ports) to a Plan.

No Docker, no SQLite, no clock, no logging: everything it needs is passed in, so every
decision is unit-tested from plain fixtures. Pairing is by app name: desired without
observed is a create, observed without desired a remove (with prune), both with different
spec hashes an update."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from diplo.model import (
    LABEL_APP,
    Action,
    AppPlan,
    BuildImage,
    ChangeKind,
    DesiredApp,
    DesiredState,
    EnsureNetwork,
    EnsureVolume,
    FieldChange,
    LedgerSnapshot,
    Observed,
    ObservedContainer,
    Plan,
    PullImage,
    RecordApplied,
    RemoveContainers,
    ResolvedPort,
    RunContainer,
    StartContainer,
)

RUNNING = ("running", "restarting")


def container_name(project: str, app: str, replica: int = 1) -> str:
    return f"{project}-{app}-{replica}"


def network_name(project: str) -> str:
    return f"diplo-{project}"


def normalize_image(ref: str) -> str:
    """`busybox` -> `busybox:latest`; refs with a tag or digest are kept."""
    if "@" in ref:
        return ref
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last else f"{ref}:latest"


def plan(
    desired: DesiredState,
    observed: Observed,
    ledger: LedgerSnapshot,
    ports: Mapping[str, tuple[ResolvedPort, ...]],
    *,
    prune: bool = False,
    only: frozenset[str] | None = None,
    prunable: frozenset[str] | None = None,
) -> Plan:
    """`only` limits the plan to those apps (the others are left as they are); with
    `prune`, the apps of the desired projects that it no longer has are removed, of
    `prunable` only when given (the others belong to another source, and stay)."""
    problems: list[str] = []
    app_plans: list[AppPlan] = []
    for app in topological(desired.apps):
        if only is not None and app.name not in only:
            continue
        app_plan, app_problems = _plan_app(app, observed, ledger, ports.get(app.name, ()))
        app_plans.append(app_plan)
        problems.extend(app_problems)

    desired_names = {a.name for a in desired.apps}
    orphans: dict[str, list[ObservedContainer]] = {}
    for c in observed.containers:
        if c.project in desired.projects and c.app not in desired_names:
            orphans.setdefault(c.app, []).append(c)
    for name, record in ledger.apps.items():
        if record.project in desired.projects and name not in desired_names:
            orphans.setdefault(name, [])
    for name in sorted(orphans):
        if only is not None and name not in only:
            continue
        containers = tuple(orphans[name])
        project = containers[0].project if containers else ledger.apps[name].project
        action = RemoveContainers(name, containers, "no longer in the manifests")
        ours = prunable is None or name in prunable
        if not prune:
            why = "no longer in the manifests (apply --prune removes it)"
        elif not ours:
            why = "not deployed by this source (kept)"
        else:
            why = "no longer in the manifests"
        app_plans.append(
            AppPlan(
                name, project, "remove", reason=why, actions=(action,) if prune and ours else ()
            )
        )

    needs_network = {p.project for p in app_plans if p.kind in ("create", "update")}
    networks = tuple(
        EnsureNetwork(project, network_name(project))
        for project in sorted(needs_network)
        if network_name(project) not in observed.networks
    )
    return Plan(
        projects=desired.projects,
        networks=networks,
        apps=tuple(app_plans),
        problems=tuple(problems),
    )


def _plan_app(
    app: DesiredApp,
    observed: Observed,
    ledger: LedgerSnapshot,
    ports: tuple[ResolvedPort, ...],
) -> tuple[AppPlan, list[str]]:
    problems: list[str] = []
    containers = observed.of_app(app.name)
    strangers = [c for c in containers if c.project != app.project]
    if strangers:
        problems.append(
            f"{app.name}: the app name is taken by project {strangers[0].project!r} on this "
            f"host (container {strangers[0].name}); app names are unique per host, rename it"
        )
    name = container_name(app.project, app.name)
    if name in observed.foreign_names:
        problems.append(
            f"{app.name}: a container named {name!r} exists that Diplo does not own "
            f"(no {LABEL_APP} label); remove or rename it"
        )

    image = normalize_image(app.image)
    image_id = observed.images.get(image)
    if image.startswith("sha256:"):  # an image by ID: a rollback to a kept image
        image_id = image if image in observed.images.values() else None
    record = ledger.apps.get(app.name)
    matching = [c for c in containers if c.spec_hash == app.spec_hash]
    # A container is the app's release only once a deploy recorded its spec as applied.
    # One with the desired spec but another recorded spec comes from a deploy that never
    # finished (the process died before the health verdict): it was never verified, so
    # it is replaced through the gate, never adopted, and the recorded release (stopped
    # and renamed `-old-` by that deploy) is the one to come back to.
    unverified = record is not None and record.spec_hash != app.spec_hash and bool(matching)
    if unverified:
        matching = []
    live = next((c for c in matching if c.state in RUNNING), None)
    keep = live or (matching[0] if matching else None)
    extras = tuple(c for c in containers if c is not keep)
    image_moved = (
        keep is not None
        and image_id is not None
        and app.build is None
        and keep.image_id != image_id
    )

    base = partial(AppPlan, app.name, app.project, depends_on=app.depends_on, spec=app, ports=ports)
    if keep is not None and not image_moved:
        actions: list[Action] = []
        if extras:
            actions.append(RemoveContainers(app.name, extras, "superseded containers"))
        if keep.state not in RUNNING:  # e.g. a release stopped and renamed by a crashed deploy
            actions.append(StartContainer(app.name, keep, name if keep.name != name else None))
        if record is None or record.spec_hash != app.spec_hash or record.spec != app.public_spec():
            actions.append(RecordApplied(app.name, app))
        kind: ChangeKind
        if keep.state not in RUNNING:
            kind, reason = "start", f"container is {keep.state}"
        elif extras:
            kind, reason = "update", f"{len(extras)} superseded container(s) to remove"
        else:
            kind, reason = "unchanged", ""
        return base(kind, reason, actions=tuple(actions), current=keep), problems

    actions = []
    replaces = tuple(containers)
    previous = None
    if record is not None and record.spec_hash != app.spec_hash:
        # ...also when the deploy died before creating anything: the recorded release,
        # renamed aside, is the one to put back.
        candidate = _previous_release(containers, record.spec_hash)
        if candidate is not None and (unverified or candidate.name != name):
            previous = candidate
    if previous is not None:
        # Put the recorded release back first (its name, running), so the deploy below
        # replaces it, and a failed one restores it.
        others = tuple(c for c in containers if c is not previous)
        if others:
            actions.append(RemoveContainers(app.name, others, "unverified containers"))
        if previous.state not in RUNNING or previous.name != name:
            rename_to = name if previous.name != name else None
            actions.append(StartContainer(app.name, previous, rename_to))
        replaces = (replace(previous, name=name, state="running", status="running"),)
    if app.build is not None:
        built = ledger.builds.get(image)
        fresh = (
            built is not None
            and built.build_hash == app.build.build_hash
            and image_id is not None
            and built.image_id == image_id
        )
        if not fresh:
            actions.append(BuildImage(app.name, image, app.build))
    elif image_id is None:
        if app.pull_policy == "never":
            problems.append(
                f"{app.name}: image {app.image!r} is not on this host and pull_policy is never"
            )
        actions.append(PullImage(app.name, image))
    for mount in app.mounts:
        if mount.kind == "volume" and mount.source not in observed.volumes:
            actions.append(EnsureVolume(app.name, app.project, mount.source))
    actions.append(
        RunContainer(
            app.name,
            app,
            ports,
            network=network_name(app.project),
            name=name,
            replaces=replaces,
            image_id=image_id if app.build is None else None,
        )
    )
    changes: tuple[FieldChange, ...] = ()
    if not containers:
        kind, reason = "create", ""
    else:
        kind = "update"
        changes = diff_specs(record.spec if record else None, app.public_spec())
        if unverified or previous is not None:
            reason = (
                "a deploy of this spec never finished"
                + ("; its container is not adopted" if unverified else "")
                + ("; the previous release is restored first" if previous else "")
            )
        elif image_moved:
            reason = f"image {app.image} now points to another image"
        elif changes:
            reason = ", ".join(c.path for c in changes)
        else:
            reason = "the running container was made from another spec"
    return base(kind, reason, changes=changes, actions=tuple(actions)), problems


def _previous_release(
    containers: Sequence[ObservedContainer], spec_hash: str
) -> ObservedContainer | None:
    """The container of the recorded release: a running one, else the newest."""
    verified = [c for c in containers if c.spec_hash == spec_hash]
    running = [c for c in verified if c.state in RUNNING]
    pool = running or verified
    return max(pool, key=lambda c: c.created) if pool else None


def diff_specs(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> tuple[FieldChange, ...]:
    """Changed fields between two public specs, as dotted paths."""
    if old is None:
        return ()
    changes: list[FieldChange] = []

    def walk(path: str, a: Any, b: Any) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in sorted(set(a) | set(b)):
                walk(f"{path}.{key}" if path else str(key), a.get(key), b.get(key))
        elif a != b:
            changes.append(FieldChange(path, a, b))

    walk("", old, new)
    return tuple(changes)


def topological(apps: tuple[DesiredApp, ...]) -> list[DesiredApp]:
    """Apps ordered so that each comes after what it depends on (name order otherwise).
    Cycles were rejected when the manifest was loaded."""
    by_name = {a.name: a for a in apps}
    done: set[str] = set()
    out: list[DesiredApp] = []

    def visit(app: DesiredApp, seen: frozenset[str]) -> None:
        if app.name in done or app.name in seen:
            return
        for dep in app.depends_on:
            if dep in by_name:
                visit(by_name[dep], seen | {app.name})
        done.add(app.name)
        out.append(app)

    for app in sorted(apps, key=lambda a: a.name):
        visit(app, frozenset())
    return out
