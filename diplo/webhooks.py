"""Push webhooks from GitHub, Gitea/Forgejo and GitLab: verified with a shared secret
(HMAC-SHA256 of the body, or GitLab's token header), then read for the pushed branch."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from diplo.errors import WebhookError

Provider = Literal["github", "gitea", "gitlab"]


@dataclass(frozen=True)
class Push:
    provider: Provider
    event: str  # "push", "ping", ...
    branch: str | None  # "main" from "refs/heads/main"; None for tags and other events
    after: str | None  # the new head SHA when given


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def verify(headers: Mapping[str, str], body: bytes, secret: str) -> Provider:
    """The provider whose signature is valid; WebhookError when missing or wrong."""
    h = _lower(headers)
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if "x-hub-signature-256" in h:
        if _same(h["x-hub-signature-256"], "sha256=" + digest):
            return "github"
        raise WebhookError("invalid X-Hub-Signature-256")
    for name in ("x-gitea-signature", "x-forgejo-signature"):
        if name in h:
            if _same(h[name], digest):
                return "gitea"
            raise WebhookError(f"invalid {name.title()}")
    if "x-gitlab-token" in h:
        if _same(h["x-gitlab-token"], secret):
            return "gitlab"
        raise WebhookError("invalid X-Gitlab-Token")
    raise WebhookError(
        "no signature: send X-Hub-Signature-256, X-Gitea-Signature, X-Forgejo-Signature "
        "or X-Gitlab-Token"
    )


def parse_push(provider: Provider, headers: Mapping[str, str], body: bytes) -> Push:
    h = _lower(headers)
    if provider == "gitlab":
        event = h.get("x-gitlab-event", "")
        event = "push" if event == "Push Hook" else event.lower().replace(" hook", "")
    else:
        gitea = ("x-gitea-event", "x-forgejo-event")
        names = ("x-github-event",) if provider == "github" else gitea
        event = next((h[n] for n in names if n in h), "push")
    try:
        payload = json.loads(body or b"{}")
    except ValueError as exc:
        raise WebhookError("the body is not JSON") from exc
    if not isinstance(payload, dict):
        raise WebhookError("the body is not a JSON object")
    ref = payload.get("ref")
    branch = (
        ref.removeprefix("refs/heads/")
        if event == "push" and isinstance(ref, str) and ref.startswith("refs/heads/")
        else None
    )
    after = payload.get("after") if isinstance(payload.get("after"), str) else None
    return Push(provider, event, branch, after)
