"""Push webhooks from GitHub, Gitea/Forgejo and GitLab: verified with the secret of their
provider (HMAC-SHA256 of the body, or GitLab's token header), then read for the pushed
branch.

Each provider has a secret of its own: GitLab sends its token in clear, so a key it shares
with GitHub or Gitea would let whoever sees one GitLab delivery sign theirs too."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast
from urllib.parse import parse_qs

from diplo.errors import InputError, WebhookError
from diplo.tokens import MIN_LENGTH

Provider = Literal["github", "gitea", "gitlab"]

SHARED = "DIPLO_WEBHOOK_SECRET"  # every provider's, unless it has its own
VARIABLES: dict[Provider, str] = {
    "github": "DIPLO_WEBHOOK_SECRET_GITHUB",
    "gitea": "DIPLO_WEBHOOK_SECRET_GITEA",  # Forgejo's too
    "gitlab": "DIPLO_WEBHOOK_SECRET_GITLAB",
}
NAMES: dict[Provider, str] = {"github": "GitHub", "gitea": "Gitea/Forgejo", "gitlab": "GitLab"}

_FORM = "application/x-www-form-urlencoded"
_HOW = "send X-Hub-Signature-256, X-Gitea-Signature, X-Forgejo-Signature or X-Gitlab-Token"


@dataclass(frozen=True)
class Push:
    provider: Provider
    event: str  # "push", "ping", "tag_push", ...; "unknown" without an event header
    branch: str | None  # "main" from "refs/heads/main"; None for tags and other events
    after: str | None  # the new head SHA when given; None when the branch was deleted


@dataclass(frozen=True)
class Secret:
    variable: str  # where it came from: named in hints and warnings, unlike the value
    value: str = field(repr=False)


@dataclass(frozen=True)
class WebhookSecrets:
    """The secret of each provider that has one; a provider without one is refused."""

    by_provider: Mapping[Provider, Secret] = field(default_factory=dict)

    @classmethod
    def shared(cls, value: str) -> WebhookSecrets:
        """One secret for every provider, as DIPLO_WEBHOOK_SECRET alone gives."""
        return cls({p: Secret(SHARED, value) for p in VARIABLES})

    def __bool__(self) -> bool:
        return bool(self.by_provider)

    def of(self, provider: Provider) -> str:
        secret = self.by_provider.get(provider)
        if secret is None or not secret.value:  # an HMAC with an empty key anyone can make
            raise WebhookError(
                f"no webhook secret is configured for {NAMES[provider]}",
                hint=f"set {VARIABLES[provider]} on the Diplo host to this webhook's secret",
            )
        return secret.value

    def gitlab_exposes(self) -> tuple[str, str] | None:
        """Why GitLab's secret is unsafe, and what to do, when it also verifies an HMAC
        provider; else None."""
        gitlab = self.by_provider.get("gitlab")
        if gitlab is None:
            return None
        hmac_providers: tuple[Provider, ...] = ("github", "gitea")
        same = [
            p
            for p in hmac_providers
            if (s := self.by_provider.get(p)) is not None
            and hmac.compare_digest(s.value.encode(), gitlab.value.encode())
        ]
        if not same:
            return None
        names = " and ".join(NAMES[p] for p in same)
        where = sorted({gitlab.variable} | {self.by_provider[p].variable for p in same})
        return (
            f"the webhook secret of GitLab ({', '.join(where)}) also verifies {names}"
            f" deliveries: GitLab sends it in clear in X-Gitlab-Token, so whoever sees one"
            f" GitLab delivery (a proxy log, a GitLab admin) can sign {names} deliveries",
            f"give GitLab a secret of its own in {VARIABLES['gitlab']}"
            + (f", or set only the providers you use, not {SHARED}" if SHARED in where else ""),
        )


def secrets_from_env(environ: Mapping[str, str] | None = None) -> WebhookSecrets:
    """Each provider's secret: its own variable, else DIPLO_WEBHOOK_SECRET. Each variable
    may instead name a file with `..._FILE` (as Docker mounts secrets)."""
    env = os.environ if environ is None else environ
    shared = _read(SHARED, env)
    found: dict[Provider, Secret] = {}
    for provider, variable in VARIABLES.items():
        if (own := _read(variable, env)) is not None:
            found[provider] = Secret(variable, own)
        elif shared is not None:
            found[provider] = Secret(SHARED, shared)
    return WebhookSecrets(found)


def _read(variable: str, env: Mapping[str, str]) -> str | None:
    """The variable's value, or the content of the file its `_FILE` names; None when
    neither is set. Errors name the variable and file, never the value."""
    value, path = env.get(variable) or None, env.get(variable + "_FILE") or None
    if path is None:
        return None if value is None else _strong(variable, value)
    if value is not None:
        raise InputError(
            f"both {variable} and {variable}_FILE are set", hint="set only one of them"
        )
    try:
        text = Path(path).read_text().strip()  # the newline `echo` leaves
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not text"
        raise InputError(
            f"cannot read {variable}_FILE {path}: {why}",
            hint="name a readable file that holds the secret",
        ) from None
    if not text:
        raise InputError(
            f"{variable}_FILE names an empty file: {path}",
            hint="put the secret in it, or unset the variable",
        )
    return _strong(variable + "_FILE", text)


def _strong(variable: str, secret: str) -> str:
    """A webhook secret long enough not to be guessed: whoever can guess it can make serve
    fetch its repository at will (and, for GitLab, it travels in clear)."""
    if len(secret) < MIN_LENGTH:
        raise InputError(
            f"{variable} is too weak: it has {len(secret)} characters",
            hint=f"use at least {MIN_LENGTH} random characters, e.g. `openssl rand -hex 24`, "
            "in the repository's webhook settings and here",
        )
    return secret


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def _hmac(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def _form_payload(h: Mapping[str, str], body: bytes) -> bytes | None:
    """The JSON in a form-encoded delivery (GitHub's default content type), else None."""
    if _FORM not in h.get("content-type", "") and not body.startswith(b"payload="):
        return None
    try:
        values = parse_qs(body.decode("ascii"), strict_parsing=True).get("payload")
    except (UnicodeDecodeError, ValueError):
        return None
    return values[0].encode() if values else None


def verify(headers: Mapping[str, str], body: bytes, secrets: WebhookSecrets) -> Provider:
    """The provider whose signature is valid with its own secret; WebhookError when the
    signature is missing or wrong, or that provider has no secret. Header names are
    matched in any case; comparisons take constant time."""
    h = _lower(headers)
    # Gitea and Forgejo also send X-Hub-Signature-256 (and X-GitHub-Event), so their own
    # headers are looked at first to name the provider right.
    for name in ("x-forgejo-signature", "x-gitea-signature"):
        if name in h:
            secret = secrets.of("gitea")
            given = h[name].strip().lower()
            # In a form-encoded delivery Gitea signs the JSON payload, not the body.
            form = _form_payload(h, body)
            signed = [body] if form is None else [body, form]
            # Both are computed and compared, so timing does not tell which matched.
            if sum(_same(given, _hmac(secret, data)) for data in signed):
                return "gitea"
            raise WebhookError(f"invalid {_title(name)}", hint="check the webhook's secret")
    if "x-hub-signature-256" in h:
        secret = secrets.of("github")
        given = h["x-hub-signature-256"].strip().lower()  # hex in either case
        if _same(given, "sha256=" + _hmac(secret, body)):
            return "github"
        raise WebhookError("invalid X-Hub-Signature-256", hint="check the webhook's secret")
    if "x-gitlab-token" in h:
        if _same(h["x-gitlab-token"], secrets.of("gitlab")):
            return "gitlab"
        raise WebhookError("invalid X-Gitlab-Token", hint="check the webhook's secret token")
    raise WebhookError("the webhook carries no signature", hint=_HOW)


def _title(header: str) -> str:
    return "-".join(part.capitalize() for part in header.split("-"))


def _event(provider: str, h: Mapping[str, str], payload: dict[str, object]) -> str:
    if provider == "gitlab":
        # "Push Hook" -> "push", "Tag Push Hook" -> "tag_push": GitLab's object_kind names.
        raw = h.get("x-gitlab-event", "").strip().lower().removesuffix(" hook")
        event = raw.replace(" ", "_")
        kind = payload.get("object_kind")
        if event in ("", "system") and isinstance(kind, str):  # system hooks carry pushes too
            event = kind
        return event or "unknown"
    names: tuple[str, ...] = ("x-github-event",)
    if provider == "gitea":
        names = ("x-forgejo-event", "x-gitea-event", "x-github-event")
    return next((h[n].strip().lower() for n in names if h.get(n, "").strip()), "unknown")


def parse_push(provider: str, headers: Mapping[str, str], body: bytes) -> Push:
    """The event, and for a push to a branch its name and new head. Call after verify."""
    if provider not in ("github", "gitea", "gitlab"):
        raise WebhookError(f"unknown webhook provider {provider!r}")
    h = _lower(headers)
    data = _form_payload(h, body)
    try:
        payload = json.loads(data if data is not None else body or b"{}")
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise WebhookError(
            "the webhook body is not JSON", hint="set the webhook's content type to JSON"
        ) from exc
    if not isinstance(payload, dict):
        raise WebhookError("the webhook body is not a JSON object")
    event = _event(provider, h, payload)
    ref = payload.get("ref")
    branch = None
    if event == "push" and isinstance(ref, str) and ref.startswith("refs/heads/"):
        branch = ref.removeprefix("refs/heads/") or None
    after = payload.get("after")
    if not isinstance(after, str) or not after.strip("0"):  # all zeros: a deleted branch
        after = None
    return Push(cast(Provider, provider), event, branch, after)
