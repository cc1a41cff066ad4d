"""The planner: a pure function from (desired, observed, ledger, ports) to a Plan.

No Docker, no SQLite, no clock, no logging: everything it needs is passed in, so every
decision is unit-tested from plain fixtures. Pairing is by app name: desired without
observed is a create, observed without desired a remove (with prune), both with different
spec hashes an update."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    container_name,
)

__all__ = ["container_name", "network_name", "normalize_image", "plan", "topological"]

RUNNING = ("running", "restarting")


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
    # A plan of a few apps (a reconcile's) looks at those and what they depend on only:
    # at 500 apps, a pass over all of them was most of a heal's planning.
    scope = desired.apps if only is None else _with_dependencies(desired, only)
    for app in topological(scope):
        if only is not None and app.name not in only:
            continue
        app_plan, app_problems = _plan_app(app, observed, ledger, ports.get(app.name, ()))
        app_plans.append(app_plan)
        problems.extend(app_problems)

    listed = observed.containers if only is None else [c for n in only for c in observed.of_app(n)]
    orphans: dict[str, list[ObservedContainer]] = {}
    for c in listed:
        if c.project in desired.projects and desired.app(c.app) is None:
            orphans.setdefault(c.app, []).append(c)
    for name, record in ledger.records(only).items():
        if record.project in desired.projects and desired.app(name) is None:
            orphans.setdefault(name, [])
    for name in sorted(orphans):
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
    wanted = range(1, app.replicas + 1)
    names = {k: container_name(app.project, app.name, k) for k in wanted}
    for name in names.values():
        if name in observed.foreign_names:
            problems.append(
                f"{app.name}: a container named {name!r} exists that Diplo does not own "
                f"(no {LABEL_APP} label); remove or rename it"
            )
            break

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
    keeps = _by_replica(matching)
    image_moved = (
        app.build is None
        and image_id is not None
        and any(c.image_id != image_id for c in keeps.values())
    )

    base = partial(AppPlan, app.name, app.project, depends_on=app.depends_on, spec=app, ports=ports)
    if keeps and not image_moved:
        return _plan_release(app, containers, keeps, ledger, image_id, ports, observed, base)

    actions: list[Action] = []
    replaces = tuple(containers)
    previous: dict[int, ObservedContainer] = {}
    if record is not None and record.spec_hash != app.spec_hash:
        # ...also when the deploy died before creating anything: the recorded release,
        # renamed aside, is the one to put back.
        verified = _by_replica([c for c in containers if c.spec_hash == record.spec_hash])
        aside = any(c.name != _settled(app, k) for k, c in verified.items())
        if verified and (unverified or aside):
            previous = verified
    if previous:
        # Put the recorded release back first (its names, running), so the deploy below
        # replaces it, and a failed one restores it.
        others = tuple(c for c in containers if c not in previous.values())
        if others:
            actions.append(RemoveContainers(app.name, others, "unverified containers"))
        restored = []
        for k, c in sorted(previous.items()):
            settled = _settled(app, k)
            if c.state not in RUNNING or c.name != settled:
                actions.append(StartContainer(app.name, c, settled if c.name != settled else None))
            restored.append(replace(c, name=settled, state="running", status="running"))
        replaces = tuple(restored)
    actions += _image_actions(app, image, image_id, observed, ledger, problems)
    actions.append(
        RunContainer(
            app.name,
            app,
            ports,
            network=network_name(app.project),
            name=names[1],
            replaces=replaces,
            image_id=image_id if app.build is None else None,
            replicas=tuple(wanted),
        )
    )
    changes: tuple[FieldChange, ...] = ()
    kind: ChangeKind
    if not containers:
        kind, reason = "create", ""
    else:
        kind = "update"
        changes = diff_specs(record.spec if record else None, app.public_spec())
        if unverified or previous:
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


# The keys of a public spec that only the proxy serves: a change of them alone is
# recorded (and routed), never a container restart.
ROUTE_KEYS = ("domains", "http_port", "tls", "load_balancing")


def _plan_release(
    app: DesiredApp,
    containers: tuple[ObservedContainer, ...],
    keeps: dict[int, ObservedContainer],
    ledger: LedgerSnapshot,
    image_id: str | None,
    ports: tuple[ResolvedPort, ...],
    observed: Observed,
    base: Callable[..., AppPlan],
) -> tuple[AppPlan, list[str]]:
    """The app runs the desired release (in some replicas at least): only replicas that
    are stopped, missing or beyond `replicas` are touched; the others stay as they are."""
    problems: list[str] = []
    record = ledger.apps.get(app.name)
    present = {k: c for k, c in keeps.items() if k <= app.replicas}
    surplus = tuple(c for k, c in sorted(keeps.items()) if k > app.replicas)
    superseded = tuple(c for c in containers if c not in keeps.values())
    missing = tuple(k for k in range(1, app.replicas + 1) if k not in present)
    stopped = [(k, c) for k, c in sorted(present.items()) if c.state not in RUNNING]
    stay = tuple(c for _, c in sorted(present.items()))
    actions: list[Action] = []
    reasons: list[str] = []
    if superseded:
        actions.append(RemoveContainers(app.name, superseded, "superseded containers"))
        reasons.append(f"{len(superseded)} superseded container(s) to remove")
    for k, c in stopped:
        settled = _settled(app, k)
        actions.append(StartContainer(app.name, c, settled if c.name != settled else None))
    recorded = int((record.spec.get("replicas") if record else None) or 1)
    if missing:
        image = normalize_image(app.image)
        actions += _image_actions(app, image, image_id, observed, ledger, problems)
        actions.append(
            RunContainer(
                app.name,
                app,
                ports,
                network=network_name(app.project),
                name=_settled(app, missing[0]),
                image_id=image_id if app.build is None else None,
                replicas=missing,
                keeps=stay,
            )
        )
        which = ", ".join(str(k) for k in missing)
        reasons.append(
            f"replicas {recorded} -> {app.replicas} (start {which})"
            if recorded != app.replicas
            and len(missing) == app.replicas - len(present)
            and record is not None
            else f"replica(s) {which} missing"
        )
    if surplus:
        actions.append(
            RemoveContainers(app.name, surplus, f"replicas {len(keeps)} -> {app.replicas}", stay)
        )
        which = ", ".join(str(c.replica) for c in surplus)
        reasons.append(f"replicas {len(keeps)} -> {app.replicas} (remove {which})")
    rerouted = record is not None and any(
        c.path.split(".")[0] in ROUTE_KEYS for c in diff_specs(record.spec, app.public_spec())
    )
    if rerouted:
        reasons.append("routes (proxy only)")
    if not missing and (
        record is None or record.spec_hash != app.spec_hash or record.spec != app.public_spec()
    ):
        actions.append(RecordApplied(app.name, app, reroute=rerouted or record is None))
    kind: ChangeKind
    if stopped and not (missing or surplus or superseded):
        k, c = stopped[0]
        kind = "start"
        reasons = [f"container is {c.state}" if app.replicas == 1 else f"replica {k} is {c.state}"]
    elif reasons or stopped:
        kind = "update"
        reasons += [f"replica {k} is {c.state}" for k, c in stopped]
    else:
        kind = "unchanged"
    current = stay[0] if stay else next(iter(keeps.values()))
    ready = sum(1 for c in stay if c.state in RUNNING)
    out = base(kind, "; ".join(reasons), actions=tuple(actions), current=current, ready=ready)
    return out, problems


def _image_actions(
    app: DesiredApp,
    image: str,
    image_id: str | None,
    observed: Observed,
    ledger: LedgerSnapshot,
    problems: list[str],
) -> list[Action]:
    """What a new container of `app` needs first: its image, its named volumes."""
    actions: list[Action] = []
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
    return actions


def _settled(app: DesiredApp, replica: int) -> str:
    return container_name(app.project, app.name, replica)


def _by_replica(containers: Sequence[ObservedContainer]) -> dict[int, ObservedContainer]:
    """One container per replica number: a running one, else the newest."""
    out: dict[int, ObservedContainer] = {}
    for c in sorted(containers, key=lambda c: (c.state in RUNNING, c.created)):
        out[c.replica] = c
    return dict(sorted(out.items()))


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


def _with_dependencies(desired: DesiredState, names: frozenset[str]) -> tuple[DesiredApp, ...]:
    """The apps named and, transitively, those they depend on: all that their order in a
    plan depends on."""
    out: dict[str, DesiredApp] = {}
    todo = list(names)
    while todo:
        app = desired.app(todo.pop())
        if app is not None and app.name not in out:
            out[app.name] = app
            todo.extend(app.depends_on)
    return tuple(out.values())


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
