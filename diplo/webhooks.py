"""Push webhooks from GitHub, Gitea/Forgejo and GitLab: verified with a shared secret
(HMAC-SHA256 of the body, or GitLab's token header), then read for the pushed branch."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast
from urllib.parse import parse_qs

from diplo.errors import WebhookError

Provider = Literal["github", "gitea", "gitlab"]

_FORM = "application/x-www-form-urlencoded"
_HOW = "send X-Hub-Signature-256, X-Gitea-Signature, X-Forgejo-Signature or X-Gitlab-Token"


@dataclass(frozen=True)
class Push:
    provider: Provider
    event: str  # "push", "ping", "tag_push", ...; "unknown" without an event header
    branch: str | None  # "main" from "refs/heads/main"; None for tags and other events
    after: str | None  # the new head SHA when given; None when the branch was deleted


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


def verify(headers: Mapping[str, str], body: bytes, secret: str) -> Provider:
    """The provider whose signature is valid; WebhookError when missing or wrong.
    Header names are matched in any case; comparisons take constant time."""
    if not secret:  # an HMAC with an empty key is one anyone can make
        raise WebhookError("no webhook secret is configured", hint="set DIPLO_WEBHOOK_SECRET")
    h = _lower(headers)
    # Gitea and Forgejo also send X-Hub-Signature-256 (and X-GitHub-Event), so their own
    # headers are looked at first to name the provider right.
    for name in ("x-forgejo-signature", "x-gitea-signature"):
        if name in h:
            given = h[name].strip().lower()
            # In a form-encoded delivery Gitea signs the JSON payload, not the body.
            form = _form_payload(h, body)
            signed = [body] if form is None else [body, form]
            # Both are computed and compared, so timing does not tell which matched.
            if sum(_same(given, _hmac(secret, data)) for data in signed):
                return "gitea"
            raise WebhookError(f"invalid {_title(name)}", hint="check the webhook's secret")
    if "x-hub-signature-256" in h:
        given = h["x-hub-signature-256"].strip().lower()  # hex in either case
        if _same(given, "sha256=" + _hmac(secret, body)):
            return "github"
        raise WebhookError("invalid X-Hub-Signature-256", hint="check the webhook's secret")
    if "x-gitlab-token" in h:
        if _same(h["x-gitlab-token"], secret):
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
