"""The controller's desired state: what its sources ask for, and what it deploys once
rollback pins are applied. Reloads run one at a time, so that a slow, older load can
never be assigned after a newer one. An invalid manifest or a source out of reach leaves
the last good state in force."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from diplo.controller.bus import Bus
from diplo.controller.sources import Loaded, Source, merge
from diplo.errors import DiploError, InputError, ManifestError, ManifestIssue
from diplo.model import DesiredApp, DesiredState, Revision
from diplo.ops.context import Context
from diplo.ops.rollback import apply_pins
from diplo.ops.status import project_sources

log = structlog.get_logger("diplo.controller")


@dataclass
class ManifestState:
    ok: bool = True
    error: str | None = None
    issues: list[dict[str, Any]] = field(default_factory=list)
    loaded_at: float | None = None
    files: list[str] = field(default_factory=list)


class DesiredStore:
    def __init__(
        self,
        sources: list[Source],
        ctx: Context,
        bus: Bus,
        on_change: Callable[[set[str] | None], None],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.sources = sources
        self.ctx = ctx
        self.bus = bus
        self.on_change = on_change  # apps whose sync status may have changed (None: all)
        self._wall = wall
        self.loaded = Loaded(DesiredState(), Revision(""))
        self.source_desired = DesiredState()  # what the sources ask for
        self.desired = DesiredState()  # what is deployed: the sources', with pins applied
        self.rollback_of: dict[str, int] = {}  # pinned app -> the deployment it restores
        self.known: dict[str, DesiredApp] = {}  # every app seen in a source, last spec
        self.projects: set[str] = set()  # projects seen in the sources during this run
        # Apps whose last good deployment came from one of our sources: when they are not
        # there any more (deleted while serve was down, say), they are ours to prune.
        self.deployed_from_us: dict[str, str] = {}  # app -> project
        self.manifest = ManifestState()
        self.last_resync: float | None = None
        self._lock = threading.Lock()

    def remember_deployed(self) -> None:
        names = {s.name for s in self.sources}
        self.deployed_from_us = {
            app: dep.project
            for app, dep in self.ctx.ledger.deployed().items()
            if dep.source in names and json.loads(dep.record_json or "{}").get("prune", True)
        }

    def reload(self) -> set[str]:
        """Load the sources; returns the apps whose desired state changed."""
        with self._lock:
            return self._reload()

    def _reload(self) -> set[str]:
        try:
            loaded = merge([s.load() for s in self.sources])
        except ManifestError as exc:
            self._failed(exc.message, [i.__dict__ for i in exc.issues])
            return set()
        except InputError as exc:
            self._failed(exc.message, [])
            return set()
        except DiploError as exc:  # a repository out of reach: the last good state stays
            if self.manifest.error != exc.message:
                log.warning("source.unreachable", error=exc.message)
                self.bus.publish("source.unreachable", error=exc.message)
            m = self.manifest
            self.manifest = ManifestState(m.ok, exc.message, [], m.loaded_at, m.files)
            self.on_change(set())
            return set()
        if issues := self._foreign_projects(loaded):
            self._failed(ManifestError(issues).message, [i.__dict__ for i in issues])
            return set()
        if not loaded.desired.apps and not loaded.desired.allow_empty and (ours := self._ours()):
            # A truncated file (an editor's truncate-then-write) or a bad checkout must not
            # prune everything, as Argo CD refuses to auto-sync an empty app.
            self._failed(
                f"the sources have no apps any more; refusing to prune the {len(ours)} "
                f"app(s) they deployed ({', '.join(sorted(ours))})\n  hint: to remove them "
                "all, write `allow_empty: true` in a manifest (or use `diplo down`)",
                [],
            )
            return set()
        was_ok = self.manifest.ok and not self.manifest.error
        if not was_ok:
            log.info("manifest.valid_again")
            self.bus.publish("manifest.valid")
        now = self._wall()
        self.manifest = ManifestState(True, None, [], now, list(loaded.desired.files))
        self.loaded, self.source_desired = loaded, loaded.desired
        self.projects |= set(loaded.desired.projects)
        for app in loaded.desired.apps:
            self.known[app.name] = app
        self.last_resync = now
        return self._repin(everything=not was_ok)

    def _foreign_projects(self, loaded: Loaded) -> list[ManifestIssue]:
        """A source may deploy, replace and prune only the projects it deployed (or new
        ones): naming another source's project would prune that source's apps."""
        owners = project_sources(self.ctx)
        issues: dict[str, ManifestIssue] = {}
        for app in loaded.desired.apps:
            source = loaded.of(app.name).source
            others = owners.get(app.project, set()) - {source}
            if others and source not in owners[app.project] and app.project not in issues:
                file, _, line = app.source.rpartition(":")
                issues[app.project] = ManifestIssue(
                    file or app.name,
                    int(line) if line.isdigit() else 0,
                    1,
                    f"project {app.project!r} belongs to another source "
                    f"({', '.join(sorted(others))}), which deployed its apps; "
                    "this source may not deploy, replace or prune them",
                    hint="choose another project name, or remove that source's apps first "
                    "(`diplo down APP`)",
                )
        return list(issues.values())

    def _ours(self) -> set[str]:
        """The apps an empty load would prune: the last good load's, and those deployed
        from these sources before this run."""
        names = {a.name for a in self.source_desired.apps} | set(self.deployed_from_us)
        return names & set(self.ctx.ledger.snapshot().apps) if names else names

    def repin(self) -> set[str]:
        """Apply the ledger's rollback pins again (after a rollback or a resume)."""
        with self._lock:
            return self._repin()

    def _repin(self, everything: bool = True) -> set[str]:
        pinned = apply_pins(self.ctx, self.source_desired)
        before = {a.name: a for a in self.desired.apps}
        after = {a.name: a for a in pinned.desired.apps}
        changed = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
        self.desired, self.rollback_of = pinned.desired, pinned.rollback_of
        self.on_change(None if everything else changed)
        return changed

    def _failed(self, message: str, issues: list[dict[str, Any]]) -> None:
        if message != self.manifest.error:  # logged once per distinct error, not in a loop
            log.error("manifest.invalid", error=message)
            self.bus.publish("manifest.invalid", error=message, issues=issues)
        m = self.manifest
        self.manifest = ManifestState(False, message, issues, m.loaded_at, m.files)
        self.on_change(None)

    def scope_for(self, app: str) -> DesiredState | None:
        """What a reconcile of `app` converges onto (the sources' apps, and the projects
        whose recorded apps it may prune), or None when the app is to be left alone: it
        left a source that says `prune: false`."""
        if self.source_desired.app(app) is None:
            last = self.known.get(app)
            if last is not None and not last.prune:
                return None
        projects = set(self.projects)
        loaded = self.manifest.ok and self.manifest.loaded_at is not None
        if self.source_desired.app(app) is None and app in self.deployed_from_us and loaded:
            projects.add(self.deployed_from_us[app])
        s = self.source_desired
        return DesiredState(s.apps, s.files, tuple(sorted(projects)))
