"""The host owner's policy (C1): what a manifest from a repository, a watched folder or
`diplo apply` may bind-mount, build, read from files and from Diplo's environment. A
refused manifest is a ManifestError at the offending line; nothing else changes."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from diplo.errors import InputError, ManifestError, ManifestIssue
from diplo.manifest.load import load_manifests
from diplo.model import DesiredState
from diplo.policy import Policy, load_policy, parse_policy, rules

ENV = {"DIPLO_TOKEN": "tok-SECRET", "AWS_KEY": "aws-SECRET", "TAG": "2.0"}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DIPLO_HOME", str(home))
    return home


@pytest.fixture
def checkout(tmp_path: Path, home: Path) -> Path:
    """A repository checkout: deploy/diplo.yaml, a site folder, an env file, a context."""
    root = tmp_path / "checkout"
    (root / "deploy" / "site").mkdir(parents=True)
    (root / "deploy" / "site" / "index.html").write_text("hi\n")
    (root / "deploy" / "app.env").write_text("MODE=prod\n")
    (root / "deploy" / "ctx").mkdir()
    (root / "deploy" / "ctx" / "Dockerfile").write_text("FROM busybox\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "creds.env").write_text("STOLEN=1\n")
    return root


def manifest(root: Path, body: str) -> Path:
    body = textwrap.indent(textwrap.dedent(body).strip("\n"), "    ")
    path = root / "deploy" / "diplo.yaml"
    path.write_text(f"apps:\n  web:\n    image: busybox\n{body}\n")
    return path


def load(root: Path, kind: str = "repository", policy: Policy | None = None) -> DesiredState:
    return load_manifests(
        [str(root / "deploy")], environ=ENV, policy=policy or Policy(), kind=kind, root=root
    )  # type: ignore[arg-type]


def refused(root: Path, kind: str = "repository", policy: Policy | None = None) -> ManifestIssue:
    with pytest.raises(ManifestError) as exc:
        load(root, kind, policy)
    [issue] = exc.value.issues
    assert issue.file.endswith("diplo.yaml")
    return issue


# --- a repository keeps to its checkout --------------------------------------------------


def test_a_repository_may_use_its_own_files(checkout: Path):
    manifest(
        checkout,
        """
        volumes: ["./site:/www:ro", "data:/data"]
        env_file: app.env
        build: ./ctx
        env: {IMAGE_TAG: "${TAG:-latest}"}
        """,
    )
    app = load(checkout).app("web")
    assert app is not None and ("MODE", "prod") in app.env
    assert ("IMAGE_TAG", "latest") in app.env  # Diplo's TAG is not given to a repository
    assert app.mounts[0].source == os.path.realpath(checkout / "deploy" / "site")


@pytest.mark.parametrize(
    "volume",
    [
        "/:/host",
        "/var/run/docker.sock:/var/run/docker.sock",
        "/run/docker.sock:/s",
        "../../outside:/o",
        "/etc:/e",
        "/proc:/p",
        "~/:/roothome",
    ],
)
def test_a_repository_may_not_bind_mount_host_paths(checkout: Path, volume: str):
    manifest(checkout, f'volumes: ["{volume}"]')
    issue = refused(checkout)
    assert issue.line == 4 and "refused" in issue.message and "policy.yaml" in (issue.hint or "")


def test_a_symlink_out_of_the_checkout_is_followed_before_judging(checkout: Path):
    (checkout / "deploy" / "escape").symlink_to("/etc")
    manifest(checkout, 'volumes: ["./escape:/e"]')
    assert "refused" in refused(checkout).message


@pytest.mark.parametrize(
    "body",
    [
        "env_file: /etc/hostname",
        "env_file: ../../outside/creds.env",
        "build: ../..",
        "build: {context: ./ctx, dockerfile: ../../../outside/creds.env}",
        "build: /dev",
    ],
)
def test_a_repository_reads_no_file_outside_its_checkout(checkout: Path, body: str):
    manifest(checkout, body)
    issue = refused(checkout)
    assert issue.line == 4 and "outside the repository source's own files" in issue.message


def test_diplo_variables_are_never_read(checkout: Path):
    for kind in ("repository", "folder", "apply"):
        manifest(checkout, 'labels: {leak: "${DIPLO_TOKEN}"}')
        issue = refused(checkout, kind)
        assert issue.line == 4 and "never given" in issue.message and "tok-SECRET" not in str(issue)
        manifest(checkout, "env: [DIPLO_TOKEN]")
        assert "never given" in refused(checkout, kind).message


def test_a_repository_reads_none_of_diplos_environment_by_default(checkout: Path):
    manifest(checkout, "env: [AWS_KEY]")
    assert "may not pass" in refused(checkout).message
    manifest(checkout, 'env: {STOLEN: "${AWS_KEY}"}')
    assert "not set" in refused(checkout).message  # as if unset: the value is not read
    (checkout / "deploy" / ".env").write_text("AWS_KEY=from-the-repo\n")
    app = load(checkout).app("web")
    assert app is not None and ("STOLEN", "from-the-repo") in app.env


def test_the_owner_can_allow_variables_and_paths(checkout: Path, tmp_path: Path):
    policy = parse_policy(
        f"repository:\n  env: [AWS_KEY]\n  bind_mounts: ['.', '{tmp_path / 'outside'}']\n"
    )
    manifest(checkout, 'env: [AWS_KEY]\nvolumes: ["../../outside:/o"]')
    app = load(checkout, policy=policy).app("web")
    assert app is not None and ("AWS_KEY", "aws-SECRET") in app.env
    assert policy.repository.confine_files  # a section's missing keys keep their defaults


def test_the_owner_can_restrict_images_builds_and_host_ports(checkout: Path):
    policy = parse_policy(
        "repository:\n  images: ['registry.example.com/shop/*', 'busybox:1.*']\n"
        "  builds: false\n  host_ports: ['8000-8999', '443']\n"
    )
    manifest(checkout, 'ports: ["8080:80", "443:443", "81"]')
    issue = refused(checkout, policy=policy)  # busybox = docker.io/library/busybox:latest
    assert (issue.line, issue.col) == (3, 12)
    assert "image 'busybox' refused: the policy lets a repository source run only images" in (
        issue.message
    )
    (checkout / "deploy" / "diplo.yaml").write_text(
        "apps:\n  web:\n    image: busybox:1.36\n    ports: ['8080:80', '443:443', '81']\n"
        "  api:\n    image: registry.example.com/shop/api:2\n    ports: ['22:22']\n"
        "  job:\n    build: ctx\n"
    )
    with pytest.raises(ManifestError) as exc:
        load(checkout, policy=policy)
    assert [(i.line, i.message.split(":")[0]) for i in exc.value.issues] == [
        (7, "host port 22 refused"),
        (9, "a repository source may not build images"),
    ]  # web's ports are inside the ranges, and "81" gets a port Diplo picks
    assert "['8000-8999', '443']" in exc.value.issues[0].message


@pytest.mark.parametrize("ranges", ["['0-80']", "['90-80']", "['http']"])
def test_a_bad_port_range_in_the_policy_is_an_input_error(ranges: str):
    with pytest.raises(InputError, match="policy"):
        parse_policy(f"repository:\n  host_ports: {ranges}\n")


def test_by_default_any_image_builds_and_host_ports_are_allowed(checkout: Path):
    manifest(checkout, 'ports: ["22:22"]')
    assert load(checkout).app("web") is not None


def test_a_folder_keeps_to_its_folder_but_reads_the_environment(checkout: Path):
    manifest(checkout, 'env: [AWS_KEY]\nvolumes: ["/:/host"]')
    assert "refused" in refused(checkout, "folder").message
    manifest(checkout, "env: [AWS_KEY]")
    app = load(checkout, "folder").app("web")
    assert app is not None and ("AWS_KEY", "aws-SECRET") in app.env


def test_apply_keeps_its_freedom_but_not_the_socket_or_diplo_home(checkout: Path, home: Path):
    manifest(
        checkout, 'volumes: ["../../outside:/o", "/etc:/e"]\nenv_file: ../../outside/creds.env'
    )
    assert load(checkout, "apply").app("web") is not None
    for guarded in ("/var/run/docker.sock", str(home), "/"):
        manifest(checkout, f'volumes: ["{guarded}:/x"]')
        assert "exposes" in refused(checkout, "apply").message


def test_a_guarded_path_named_by_the_owner_may_be_mounted():
    policy = parse_policy("repository:\n  bind_mounts: [/var/run/docker.sock, /etc/myapp]\n")
    allowed = rules(policy, "repository", "/srv/checkout", home=Path("/srv/home"), environ={})
    assert allowed.bind_refusal(os.path.realpath("/var/run/docker.sock")) is None
    assert allowed.bind_refusal("/etc/myapp/conf") is None
    assert allowed.bind_refusal("/etc/passwd") is not None
    assert allowed.bind_refusal("/") is not None


def test_the_docker_host_socket_is_guarded_too():
    allowed = rules(Policy(), "apply", None, environ={"DOCKER_HOST": "unix:///srv/d.sock"})
    assert "exposes" in (allowed.bind_refusal("/srv/d.sock") or "")


def test_the_policy_file_in_diplo_home_is_read(home: Path):
    assert load_policy() == Policy()
    (home / "policy.yaml").write_text("apply:\n  env: []\n  limits: {apps: 3}\n")
    policy = load_policy()
    assert policy.apply.env == [] and policy.apply.limits.apps == 3
    assert policy.apply.bind_mounts == ["/"]


@pytest.mark.parametrize("text", ["repository: {bind_mount: []}\n", "- a\n", "a: [\n"])
def test_a_broken_policy_is_an_input_error(text: str):
    with pytest.raises(InputError, match="policy"):
        parse_policy(text)


def test_apply_without_a_policy_argument_uses_the_host_policy(checkout: Path, home: Path):
    (home / "policy.yaml").write_text("apply:\n  limits: {apps: 1}\n")
    path = checkout / "deploy" / "diplo.yaml"
    path.write_text("apps:\n  a: {image: busybox}\n  b: {image: busybox}\n")
    with pytest.raises(ManifestError, match="more than 1 apps"):
        load_manifests([str(path)], environ={})


# --- diplo policy check ------------------------------------------------------------------


def test_policy_check_prints_what_would_be_refused(checkout: Path):
    from click.testing import CliRunner

    from diplo.cli.main import main

    manifest(checkout, 'volumes: ["/:/host"]')
    args = ["policy", "check", "-f", str(checkout / "deploy"), "--root", str(checkout)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "diplo.yaml:4:" in result.output and "refused" in result.output
    result = CliRunner().invoke(main, [*args, "--as", "apply", "--show"])
    assert result.exit_code == 2 and "exposes" in result.output  # / holds the Docker socket
    assert "bind_mounts" in result.output  # the policy in force
    manifest(checkout, 'volumes: ["./site:/www"]')
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "nothing would be refused" in result.output


def test_the_cli_names_the_kinds_of_the_policy():
    from diplo.cli.policy import KINDS as CLI_KINDS
    from diplo.policy import KINDS

    assert CLI_KINDS == KINDS
