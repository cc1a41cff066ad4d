"""The operations a person asks for by name (status, rollback, sync) behind one interface
with two implementations: `LocalOps` runs them on this host, and the CLI's `RemoteOps`
(diplo/cli/client.py) asks the `diplo serve` of this host, whose controller then owns
them. The CLI picks one and renders what comes back; it has no second code path."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from diplo.errors import InputError
from diplo.hostconfig import load_config
from diplo.manifest.load import load_manifests
from diplo.metricstore import Retention
from diplo.model import DesiredState
from diplo.ops import rollback as rollbacks
from diplo.ops.alerts import local_alerts
from diplo.ops.apply import LOCK_WAIT, ApplyReport, Watch, apply
from diplo.ops.context import Context
from diplo.ops.metrics import Top, local_series, local_top
from diplo.ops.provenance import folder_revision
from diplo.ops.proxy import certificates
from diplo.ops.status import AppView, status
from diplo.units import parse_duration


@dataclass(frozen=True)
class Statuses:
    apps: list[AppView]
    manifest_error: str | None = None  # the controller's: its source's newest is refused
    served_by: str | None = None  # the URL of the `diplo serve` that answered
    domains: list[dict[str, Any]] = field(default_factory=list)  # ops/proxy.certificates


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str
    report: ApplyReport | None = None  # when the operation ran here, what it did


class Operations(Protocol):
    def status(self, app: str | None) -> Statuses: ...

    def rollback(self, app: str, to: int | None) -> Outcome: ...

    def sync(self, app: str, *, resume: bool) -> Outcome: ...

    def top(self) -> Top: ...

    def metrics(self, app: str, since: str, step: str | None) -> dict[str, Any]:
        """An app's series, as GET /apps/{app}/metrics answers it."""
        ...

    def alerts(self) -> dict[str, Any]:
        """Firing and recently resolved alerts, as GET /alerts answers."""
        ...


class LocalOps:
    """The operations run here, from the manifest files `files`."""

    def __init__(
        self,
        ctx: Context,
        files: list[str],
        *,
        watch: Watch,
        say: Callable[[str], None],
        waiting: Callable[[str], None] | None = None,
        files_optional: bool = False,
    ) -> None:
        self.ctx, self.files, self.watch, self.say, self.waiting = ctx, files, watch, say, waiting
        # A rollback needs no manifest: with the default file absent, nothing is desired.
        self.files_optional = files_optional

    def status(self, app: str | None) -> Statuses:
        rows = status(self.ctx, app)
        domains = [d for d in certificates(self.ctx) if app is None or d["app"] == app]
        return Statuses(rows, domains=domains)

    def _desired(self, *, optional: bool = False) -> DesiredState:
        if optional and self.files_optional and not any(map(os.path.exists, self.files)):
            return DesiredState()
        return load_manifests(self.files)

    def _apply(self, desired: DesiredState, app: str) -> ApplyReport:
        return apply(
            self.ctx,
            desired,
            only=frozenset({app}),
            revision=folder_revision(self.files),
            watch=self.watch,
            waiting=self.waiting,
        )

    def rollback(self, app: str, to: int | None) -> Outcome:
        """Pin `app` to an earlier deployment and deploy it there, health-gated."""
        desired = self._desired(optional=True)
        current = desired.app(app)
        dep, restored = rollbacks.pin(self.ctx, app, to, current, lock_wait=LOCK_WAIT)
        self.say(f"{app}: rolling back to deployment {dep.id} (revision {dep.revision})")
        # The app may not be in the files at all: the restored record is its desired state.
        report = self._apply(rollbacks.with_app(desired, restored), app)
        if app in report.unpinned:
            return Outcome(False, f"rollback failed; {app} is not pinned", report)
        return Outcome(report.ok, f"rolled back to deployment {dep.id}", report)

    def sync(self, app: str, *, resume: bool) -> Outcome:
        """Deploy `app` from the files now; `resume` drops a rollback's pin first."""
        desired = self._desired()
        if desired.app(app) is None:
            raise InputError(f"no app named {app!r} in {', '.join(self.files)}")
        if resume and rollbacks.resume(self.ctx, app, lock_wait=LOCK_WAIT):
            self.say(f"{app}: following the manifest again")
        report = self._apply(desired, app)
        return Outcome(report.ok, "synced" if report.ok else "sync failed", report)

    def top(self) -> Top:
        """From the metrics history the last `diplo serve` wrote."""
        config = load_config().metrics
        return local_top(config.interval, _retention(config.retention.model_dump()))

    def alerts(self) -> dict[str, Any]:
        """From the ledger the last `diplo serve` wrote."""
        return local_alerts(self.ctx)

    def metrics(self, app: str, since: str, step: str | None) -> dict[str, Any]:
        config = load_config().metrics
        status(self.ctx, app)  # an unknown app is an error, not an empty series
        return local_series(
            app,
            duration(since, "--since"),
            duration(step, "--step") if step else None,
            config.interval,
            _retention(config.retention.model_dump()),
        )


def duration(text: str, option: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise InputError(f"{option}: {exc}") from exc
    if seconds < 1:
        raise InputError(f"{option}: {text!r} is under a second")
    return seconds


def _retention(values: dict[str, int]) -> Retention:
    return Retention(**values)
