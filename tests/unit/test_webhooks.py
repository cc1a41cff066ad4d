"""Push webhook signatures and payloads (GitHub, Gitea/Forgejo, GitLab)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from diplo.errors import WebhookError
from diplo.webhooks import parse_push, verify

SECRET = "s3cret"
BODY = json.dumps({"ref": "refs/heads/main", "after": "a" * 40}).encode()


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("headers", "provider"),
    [
        ({"X-Hub-Signature-256": "sha256=" + sign(BODY)}, "github"),
        ({"x-hub-signature-256": "sha256=" + sign(BODY)}, "github"),  # any header case
        ({"X-Gitea-Signature": sign(BODY)}, "gitea"),
        ({"X-Forgejo-Signature": sign(BODY)}, "gitea"),
        ({"X-Gitlab-Token": SECRET}, "gitlab"),
    ],
)
def test_valid_signatures_name_the_provider(headers, provider):
    assert verify(headers, BODY, SECRET) == provider


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Hub-Signature-256": "sha256=" + sign(BODY, "wrong")},
        {"X-Hub-Signature-256": sign(BODY)},  # no sha256= prefix
        {"X-Gitea-Signature": sign(BODY + b" ")},  # tampered body
        {"X-Gitlab-Token": "wrong"},
        {},
    ],
)
def test_wrong_or_missing_signatures_are_rejected(headers):
    with pytest.raises(WebhookError):
        verify(headers, BODY, SECRET)


def test_a_push_names_its_branch_and_head():
    push = parse_push("github", {"X-GitHub-Event": "push"}, BODY)
    assert (push.event, push.branch, push.after) == ("push", "main", "a" * 40)
    gitlab = parse_push("gitlab", {"X-Gitlab-Event": "Push Hook"}, BODY)
    assert (gitlab.event, gitlab.branch) == ("push", "main")
    gitea = parse_push("gitea", {"X-Gitea-Event": "push"}, BODY)
    assert gitea.branch == "main"


def test_tags_other_branches_and_pings_carry_no_watched_branch():
    tag = json.dumps({"ref": "refs/tags/v1", "after": "b" * 40}).encode()
    assert parse_push("github", {"X-GitHub-Event": "push"}, tag).branch is None
    other = json.dumps({"ref": "refs/heads/dev"}).encode()
    assert parse_push("github", {"X-GitHub-Event": "push"}, other).branch == "dev"
    ping = parse_push("github", {"X-GitHub-Event": "ping"}, b'{"zen": "x"}')
    assert (ping.event, ping.branch) == ("ping", None)


def test_a_body_that_is_not_json_is_rejected():
    with pytest.raises(WebhookError, match="not JSON"):
        parse_push("github", {"X-GitHub-Event": "push"}, b"ref=main")
    with pytest.raises(WebhookError, match="not a JSON object"):
        parse_push("github", {"X-GitHub-Event": "push"}, b"[1]")
