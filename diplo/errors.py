"""Diplo's error tree. Library errors (docker, sqlite, yaml) are mapped to these at the
boundary that meets them, so callers handle one family and users see one shape:
what went wrong, where, and what to do about it."""

from __future__ import annotations

from dataclasses import dataclass


class DiploError(Exception):
    """Base of every error Diplo raises on purpose. `exit_code` is what the CLI exits with.

    Retryability, after kopf's temporary and permanent errors: a `retryable` error may go
    away by itself (the engine restarting, a lock held by another process), so the
    controller tries again with backoff, or after `retry_after` seconds when the error
    knows better. A permanent one (bad input) is not retried until the input changes."""

    exit_code = 1
    retryable = True

    def __init__(
        self, message: str, *, hint: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class InputError(DiploError):
    """Bad input (manifest, flags, arguments): nothing was changed. Permanent: trying
    again gives the same answer until the input changes."""

    exit_code = 2
    retryable = False


@dataclass(frozen=True)
class ManifestIssue:
    file: str
    line: int
    col: int
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.col}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class ManifestError(InputError):
    """One or more problems in manifest files, all reported at once."""

    def __init__(self, issues: list[ManifestIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line, i.col))
        n = len(self.issues)
        head = f"invalid manifest ({n} error{'s' if n != 1 else ''}); nothing was changed"
        super().__init__(head + "\n" + "\n".join(f"  {i}" for i in self.issues))


class PlanError(InputError):
    """The desired state cannot be reached as written (port clash, name taken...).
    Found before anything starts, so nothing was changed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        n = len(problems)
        head = f"cannot apply ({n} problem{'s' if n != 1 else ''}); nothing was changed"
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in problems))


class RuntimeFailure(DiploError):
    """The container engine refused or failed an operation."""


class EngineUnavailable(RuntimeFailure):
    def __init__(self, detail: str) -> None:
        super().__init__(
            f"cannot reach the Docker engine: {detail}",
            hint="start Docker (or run `make engine` as root) and check DOCKER_HOST",
        )


class NotFound(RuntimeFailure):
    pass


class ImageUnavailable(RuntimeFailure):
    pass


class BuildFailed(RuntimeFailure):
    pass


class BuildStopped(RuntimeFailure):
    """A build was stopped on request (cancel or deadline)."""


class LedgerError(DiploError):
    pass


class LockTimeout(DiploError):
    """Another Diplo process held an app's lock for longer than the caller would wait."""


class DeployFailed(DiploError):
    """An app's deployment failed at `step`; the message names app, step and cause."""

    def __init__(self, app: str, step: str, cause: str) -> None:
        super().__init__(f"{app}: {step} failed: {cause}")
        self.app = app
        self.step = step
        self.cause = cause


class GitError(DiploError):
    """A git repository could not be fetched or read."""


class WebhookError(DiploError):
    """A push webhook with a missing or wrong signature, or an unreadable body."""


class ProxyError(DiploError):
    """The reverse proxy (Caddy) could not be set up, reached or configured."""


class ProxyUnavailable(ProxyError):
    """Caddy's admin API did not answer (its container is down or still starting)."""


class ProxyRejected(ProxyError):
    """Caddy refused a request or a config; its own message says why. The config it
    serves is unchanged (its loads are atomic). Permanent until the input changes."""

    retryable = False
