"""Push webhook signatures and payloads (GitHub, Gitea/Forgejo, GitLab), with the header
sets and payload shapes the providers send."""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import urlencode

import pytest

from diplo.errors import WebhookError
from diplo.webhooks import Push, parse_push, verify

SECRET = "s3cret"
SHA = "a" * 40
BODY = json.dumps(
    {"ref": "refs/heads/main", "before": "b" * 40, "after": SHA, "commits": [], "pusher": {}}
).encode()


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def gitea_headers(body: bytes, event: str = "push") -> dict[str, str]:
    """What Gitea sends: its own headers, and GitHub's and Gogs' for compatibility."""
    return {
        "X-Gitea-Event": event,
        "X-Gitea-Signature": sign(body),
        "X-Gogs-Signature": sign(body),
        "X-GitHub-Event": event,
        "X-Hub-Signature-256": "sha256=" + sign(body),
    }


@pytest.mark.parametrize(
    ("headers", "provider"),
    [
        ({"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sign(BODY)}, "github"),
        ({"x-hub-signature-256": "sha256=" + sign(BODY).upper()}, "github"),  # any case
        (gitea_headers(BODY), "gitea"),  # not mistaken for GitHub
        ({"X-Gitea-Signature": sign(BODY)}, "gitea"),
        ({"X-FORGEJO-SIGNATURE": sign(BODY), "X-Forgejo-Event": "push"}, "gitea"),
        ({"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Push Hook"}, "gitlab"),
    ],
    ids=["github", "github-case", "gitea-full", "gitea", "forgejo", "gitlab"],
)
def test_valid_signatures_name_the_provider(headers, provider):
    assert verify(headers, BODY, SECRET) == provider


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Hub-Signature-256": "sha256=" + sign(BODY, "wrong")},
        {"X-Hub-Signature-256": sign(BODY)},  # no sha256= prefix
        {"X-Hub-Signature-256": "sha256=" + sign(BODY + b" ")},  # tampered body
        {"X-Gitea-Signature": sign(BODY, "wrong")},
        {"X-Gitea-Signature": sign(BODY + b" ")},
        {"X-Forgejo-Signature": ""},
        {"X-Gitlab-Token": "wrong"},
        {"X-Gitlab-Token": SECRET + "x"},
        {"X-GitHub-Event": "push"},  # no signature at all
        {},
    ],
    ids=[
        "github-secret",
        "github-prefix",
        "github-tampered",
        "gitea-secret",
        "gitea-tampered",
        "forgejo-empty",
        "gitlab-token",
        "gitlab-longer",
        "github-unsigned",
        "nothing",
    ],
)
def test_wrong_or_missing_signatures_are_rejected(headers):
    with pytest.raises(WebhookError) as err:
        verify(headers, BODY, SECRET)
    assert err.value.hint


def test_the_body_is_what_is_signed():
    headers = {"X-Hub-Signature-256": "sha256=" + sign(BODY)}
    with pytest.raises(WebhookError, match="invalid X-Hub-Signature-256"):
        verify(headers, BODY.replace(b"main", b"evil"), SECRET)
    gitea = {"X-Gitea-Signature": sign(BODY)}
    with pytest.raises(WebhookError, match="invalid X-Gitea-Signature"):
        verify(gitea, BODY.replace(b"main", b"evil"), SECRET)


def test_an_empty_secret_verifies_nothing():
    with pytest.raises(WebhookError, match="no webhook secret"):
        verify({"X-Hub-Signature-256": "sha256=" + sign(BODY, "")}, BODY, "")


def test_pushes_to_main_name_the_branch_and_head():
    assert parse_push("github", {"X-GitHub-Event": "push"}, BODY) == Push(
        "github", "push", "main", SHA
    )
    assert parse_push("gitea", gitea_headers(BODY), BODY) == Push("gitea", "push", "main", SHA)
    forgejo = parse_push("gitea", {"x-forgejo-event": "push"}, BODY)
    assert (forgejo.event, forgejo.branch) == ("push", "main")
    gitlab_body = json.dumps(
        {"object_kind": "push", "event_name": "push", "ref": "refs/heads/main", "after": SHA}
    ).encode()
    gitlab = parse_push("gitlab", {"X-Gitlab-Event": "Push Hook"}, gitlab_body)
    assert gitlab == Push("gitlab", "push", "main", SHA)


def test_a_push_to_another_branch():
    body = json.dumps({"ref": "refs/heads/feature/x", "after": SHA}).encode()
    push = parse_push("github", {"X-GitHub-Event": "push"}, body)
    assert (push.event, push.branch, push.after) == ("push", "feature/x", SHA)


def test_tag_pushes_carry_no_branch():
    tag = json.dumps({"ref": "refs/tags/v1", "after": "b" * 40}).encode()
    github = parse_push("github", {"X-GitHub-Event": "push"}, tag)
    assert (github.event, github.branch, github.after) == ("push", None, "b" * 40)
    gitlab_tag = json.dumps({"object_kind": "tag_push", "ref": "refs/tags/v1"}).encode()
    gitlab = parse_push("gitlab", {"X-Gitlab-Event": "Tag Push Hook"}, gitlab_tag)
    assert (gitlab.event, gitlab.branch) == ("tag_push", None)


def test_ping_and_other_events_carry_no_branch():
    ping = parse_push("github", {"X-GitHub-Event": "ping"}, b'{"zen": "x", "hook_id": 1}')
    assert ping == Push("github", "ping", None, None)
    pr = parse_push("gitea", {"X-Gitea-Event": "pull_request"}, BODY)
    assert (pr.event, pr.branch) == ("pull_request", None)
    mr = parse_push("gitlab", {"X-Gitlab-Event": "Merge Request Hook"}, b"{}")
    assert mr.event == "merge_request"
    assert parse_push("github", {}, BODY).event == "unknown"  # no event header: not a push


def test_a_deleted_branch_has_no_head():
    body = json.dumps({"ref": "refs/heads/old", "after": "0" * 40, "deleted": True}).encode()
    push = parse_push("github", {"X-GitHub-Event": "push"}, body)
    assert (push.branch, push.after) == ("old", None)


def test_form_encoded_deliveries():
    """GitHub's default content type: payload=<json>, the signature over the whole body."""
    form = urlencode({"payload": BODY.decode()}).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": "sha256=" + sign(form),
    }
    assert verify(headers, form, SECRET) == "github"
    assert parse_push("github", headers, form).branch == "main"
    # Gitea signs the JSON inside the form, not the form.
    gitea = {"Content-Type": "application/x-www-form-urlencoded", **gitea_headers(BODY)}
    assert verify(gitea, form, SECRET) == "gitea"
    assert parse_push("gitea", gitea, form).branch == "main"


@pytest.mark.parametrize("body", [b"ref=main", b"{not json", b"\xff\xfe", b"[" * 100_000])
def test_a_body_that_is_not_json_is_rejected(body: bytes):
    with pytest.raises(WebhookError, match="not JSON"):
        parse_push("github", {"X-GitHub-Event": "push"}, body)


def test_a_body_that_is_not_an_object_is_rejected():
    with pytest.raises(WebhookError, match="not a JSON object"):
        parse_push("github", {"X-GitHub-Event": "push"}, b"[1]")
    with pytest.raises(WebhookError, match="unknown webhook provider"):
        parse_push("bitbucket", {}, BODY)
