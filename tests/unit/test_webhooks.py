"""Push webhook signatures and payloads (GitHub, Gitea/Forgejo, GitLab), with the header
sets and payload shapes the providers send."""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import urlencode

import pytest

from diplo.errors import InputError, WebhookError
from diplo.webhooks import Push, WebhookSecrets, parse_push, secrets_from_env, verify

SECRET = "s3cret"
SHARED = WebhookSecrets.shared(SECRET)
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
    assert verify(headers, BODY, SHARED) == provider


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
        verify(headers, BODY, SHARED)
    assert err.value.hint


def test_the_body_is_what_is_signed():
    headers = {"X-Hub-Signature-256": "sha256=" + sign(BODY)}
    with pytest.raises(WebhookError, match="invalid X-Hub-Signature-256"):
        verify(headers, BODY.replace(b"main", b"evil"), SHARED)
    gitea = {"X-Gitea-Signature": sign(BODY)}
    with pytest.raises(WebhookError, match="invalid X-Gitea-Signature"):
        verify(gitea, BODY.replace(b"main", b"evil"), SHARED)


def test_an_empty_secret_verifies_nothing():
    with pytest.raises(WebhookError, match="no webhook secret"):
        verify({"X-Hub-Signature-256": "sha256=" + sign(BODY, "")}, BODY, WebhookSecrets.shared(""))


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
    assert verify(headers, form, SHARED) == "github"
    assert parse_push("github", headers, form).branch == "main"
    # Gitea signs the JSON inside the form, not the form.
    gitea = {"Content-Type": "application/x-www-form-urlencoded", **gitea_headers(BODY)}
    assert verify(gitea, form, SHARED) == "gitea"
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


# --- a secret per provider ------------------------------------------------------------------

SHARED_SECRET = "one-secret-for-every-provider-3e9a"  # a secret is 24 characters or more
OWN = {
    "github": "github-own-secret-5f0c2a9e",
    "gitea": "gitea-own-secret-71b3d4e6",
    "gitlab": "gitlab-own-token-c08a91f2",
}
PER_PROVIDER = {
    "DIPLO_WEBHOOK_SECRET_GITHUB": OWN["github"],
    "DIPLO_WEBHOOK_SECRET_GITEA": OWN["gitea"],
    "DIPLO_WEBHOOK_SECRET_GITLAB": OWN["gitlab"],
}
KINDS = {"github": "github", "gitea": "gitea", "forgejo": "gitea", "gitlab": "gitlab"}


def delivery(kind: str, secret: str) -> dict[str, str]:
    """The signature headers a provider sends, made with `secret`."""
    return {
        "github": {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sign(BODY, secret)},
        "gitea": {
            "X-Gitea-Event": "push",
            "X-Gitea-Signature": sign(BODY, secret),
            "X-Hub-Signature-256": "sha256=" + sign(BODY, secret),
        },
        "forgejo": {"X-Forgejo-Event": "push", "X-Forgejo-Signature": sign(BODY, secret)},
        "gitlab": {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret},
    }[kind]


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_provider_is_verified_with_its_own_secret_only(kind: str):
    secrets = secrets_from_env(PER_PROVIDER)
    provider = KINDS[kind]
    assert verify(delivery(kind, OWN[provider]), BODY, secrets) == provider
    for other in set(OWN.values()) - {OWN[provider]}:  # another provider's secret
        with pytest.raises(WebhookError, match="invalid"):
            verify(delivery(kind, other), BODY, secrets)


def test_the_shared_secret_serves_the_providers_without_their_own():
    secrets = secrets_from_env(
        {"DIPLO_WEBHOOK_SECRET": SHARED_SECRET, "DIPLO_WEBHOOK_SECRET_GITLAB": OWN["gitlab"]}
    )
    assert verify(delivery("github", SHARED_SECRET), BODY, secrets) == "github"
    assert verify(delivery("forgejo", SHARED_SECRET), BODY, secrets) == "gitea"
    assert verify(delivery("gitlab", OWN["gitlab"]), BODY, secrets) == "gitlab"
    with pytest.raises(WebhookError, match="invalid X-Gitlab-Token"):  # its own one wins
        verify(delivery("gitlab", SHARED_SECRET), BODY, secrets)


@pytest.mark.parametrize(
    ("kind", "variable"),
    [("gitea", "DIPLO_WEBHOOK_SECRET_GITEA"), ("gitlab", "DIPLO_WEBHOOK_SECRET_GITLAB")],
)
def test_a_provider_without_a_secret_is_refused_naming_its_variable(kind: str, variable: str):
    secrets = secrets_from_env({"DIPLO_WEBHOOK_SECRET_GITHUB": OWN["github"]})
    with pytest.raises(WebhookError, match="no webhook secret is configured for") as err:
        verify(delivery(kind, OWN["github"]), BODY, secrets)  # not with GitHub's key either
    assert err.value.hint is not None and variable in err.value.hint
    with pytest.raises(WebhookError, match="no webhook secret"):  # nor with an empty key
        verify(delivery(kind, ""), BODY, secrets)


def test_empty_variables_are_no_secret():
    assert not secrets_from_env({"DIPLO_WEBHOOK_SECRET": "", "DIPLO_WEBHOOK_SECRET_GITHUB": ""})
    assert not secrets_from_env({})


def test_secrets_from_files(tmp_path):
    (tmp_path / "shared").write_text(SHARED_SECRET + "\n")  # as `echo` writes it
    (tmp_path / "gitlab").write_text(OWN["gitlab"])
    secrets = secrets_from_env(
        {
            "DIPLO_WEBHOOK_SECRET_FILE": str(tmp_path / "shared"),
            "DIPLO_WEBHOOK_SECRET_GITLAB_FILE": str(tmp_path / "gitlab"),
        }
    )
    assert verify(delivery("github", SHARED_SECRET), BODY, secrets) == "github"
    assert verify(delivery("gitlab", OWN["gitlab"]), BODY, secrets) == "gitlab"
    assert secrets.gitlab_exposes() is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"DIPLO_WEBHOOK_SECRET_GITHUB": "x" * 30, "DIPLO_WEBHOOK_SECRET_GITHUB_FILE": "F"},
            "both DIPLO_WEBHOOK_SECRET_GITHUB and DIPLO_WEBHOOK_SECRET_GITHUB_FILE are set",
        ),
        ({"DIPLO_WEBHOOK_SECRET_FILE": "missing"}, "cannot read DIPLO_WEBHOOK_SECRET_FILE"),
        ({"DIPLO_WEBHOOK_SECRET_GITEA_FILE": "empty"}, "names an empty file"),
        ({"DIPLO_WEBHOOK_SECRET_GITLAB_FILE": "binary"}, "it is not text"),
        ({"DIPLO_WEBHOOK_SECRET_GITLAB_FILE": "."}, "cannot read"),  # a folder
    ],
    ids=["both", "missing", "empty", "binary", "folder"],
)
def test_a_bad_secret_variable_is_an_input_error(tmp_path, env, message):
    (tmp_path / "empty").write_text(" \n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe" + b"s3cret-in-a-file")
    env = {k: str(tmp_path / v) if k.endswith("_FILE") else v for k, v in env.items()}
    with pytest.raises(InputError, match=message) as err:
        secrets_from_env(env)
    assert err.value.hint
    assert "x" * 30 not in str(err.value) and "s3cret" not in str(err.value)


@pytest.mark.parametrize(
    ("env", "names", "hint"),
    [
        ({"DIPLO_WEBHOOK_SECRET": SHARED_SECRET}, "GitHub and Gitea/Forgejo", "not DIPLO_"),
        (
            {
                "DIPLO_WEBHOOK_SECRET_GITEA": SHARED_SECRET,
                "DIPLO_WEBHOOK_SECRET_GITLAB": SHARED_SECRET,
            },
            "Gitea/Forgejo",
            "DIPLO_WEBHOOK_SECRET_GITLAB",
        ),
    ],
    ids=["shared", "copied"],
)
def test_gitlab_sharing_its_secret_with_an_hmac_provider_is_unsafe(env, names, hint):
    unsafe = secrets_from_env(env).gitlab_exposes()
    assert unsafe is not None
    message, advice = unsafe
    assert f"also verifies {names} deliveries" in message and "in clear" in message
    assert "DIPLO_WEBHOOK_SECRET_GITLAB" in advice and hint in advice
    assert all(value not in message + advice for value in env.values())


@pytest.mark.parametrize(
    "env",
    [
        PER_PROVIDER,
        {"DIPLO_WEBHOOK_SECRET": SHARED_SECRET, "DIPLO_WEBHOOK_SECRET_GITLAB": OWN["gitlab"]},
        {"DIPLO_WEBHOOK_SECRET_GITHUB": SHARED_SECRET, "DIPLO_WEBHOOK_SECRET_GITEA": SHARED_SECRET},
        {"DIPLO_WEBHOOK_SECRET_GITLAB": OWN["gitlab"]},
    ],
    ids=["own", "gitlab-own", "hmac-shared", "gitlab-only"],
)
def test_secrets_gitlab_does_not_share_are_safe(env):
    assert secrets_from_env(env).gitlab_exposes() is None


def test_secrets_are_not_in_their_repr():
    secrets = secrets_from_env(PER_PROVIDER)
    shown = repr(secrets) + str(secrets) + repr(WebhookSecrets.shared(SECRET))
    assert "DIPLO_WEBHOOK_SECRET_GITLAB" in shown
    assert all(value not in shown for value in [*OWN.values(), SECRET])


@pytest.mark.parametrize("variable", ["DIPLO_WEBHOOK_SECRET", "DIPLO_WEBHOOK_SECRET_GITLAB"])
@pytest.mark.parametrize("how", ["value", "file"])
def test_a_short_secret_is_refused_without_showing_it(tmp_path, variable: str, how: str):
    """Whoever guesses a webhook secret makes serve fetch at will (GitLab's travels in
    clear): one shorter than an API token is refused, before anything is served."""
    short = "guessable-secret"  # 16 characters
    env = {variable: short}
    if how == "file":
        (tmp_path / "secret").write_text(short + "\n")
        env = {variable + "_FILE": str(tmp_path / "secret")}
    with pytest.raises(InputError, match=f"{variable}(_FILE)? is too weak: it has 16") as err:
        secrets_from_env(env)
    assert err.value.hint and "24" in err.value.hint
    assert short not in str(err.value) + err.value.hint
    assert secrets_from_env({variable: short + "-8f2c1a9d"})  # 25 characters: fine
