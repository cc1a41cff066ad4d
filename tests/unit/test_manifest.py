"""Manifest files in, DesiredApp values (or a ManifestError with file:line:col) out.

Every manifest is written into tmp_path; YAML texts start at line 1 with their first
line, so the line numbers asserted below can be counted in the text."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from diplo.errors import InputError, ManifestError, ManifestIssue
from diplo.manifest.files import find_manifest_files
from diplo.manifest.load import load_manifests
from diplo.model import DesiredApp, Mount, PortSpec

# --- helpers -----------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    """Write `text` (dedented, leading newline dropped: its first line is line 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load(*paths: Path, environ: dict[str, str] | None = None):
    return load_manifests([str(p) for p in paths], environ={} if environ is None else environ)


def load_app(folder: Path, body: str, environ: dict[str, str] | None = None) -> DesiredApp:
    """Load a manifest in `folder` holding the single app `web` described by `body`."""
    body = textwrap.indent(textwrap.dedent(body).strip("\n"), "    ")
    path = write(folder / "diplo.yaml", f"apps:\n  web:\n{body}\n")
    app = load(path, environ=environ).app("web")
    assert app is not None
    return app


def issues_of(*paths: Path, environ: dict[str, str] | None = None) -> list[ManifestIssue]:
    with pytest.raises(ManifestError) as exc:
        load(*paths, environ=environ)
    return exc.value.issues


def only_issue(*paths: Path, environ: dict[str, str] | None = None) -> ManifestIssue:
    issues = issues_of(*paths, environ=environ)
    assert len(issues) == 1, issues
    return issues[0]


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    folder = tmp_path / "shop"
    folder.mkdir()
    return folder


# --- a valid manifest resolves -----------------------------------------------------------


def test_image_is_taken_as_written(shop):
    app = load_app(shop, "image: shop/web:1.2")
    assert app.image == "shop/web:1.2"
    assert app.name == "web"


def test_command_short_form_is_split_like_a_shell(shop):
    app = load_app(shop, """image: busybox\ncommand: httpd -f -h "/var/www html" --name='a b'""")
    assert app.command == ("httpd", "-f", "-h", "/var/www html", "--name=a b")


def test_command_list_form_is_kept(shop):
    app = load_app(shop, 'image: busybox\ncommand: ["sh", "-c", "echo a b"]')
    assert app.command == ("sh", "-c", "echo a b")


def test_entrypoint_short_form_is_split(shop):
    app = load_app(shop, "image: busybox\nentrypoint: /bin/sh -c")
    assert app.entrypoint == ("/bin/sh", "-c")


def test_command_and_entrypoint_default_to_the_image(shop):
    app = load_app(shop, "image: busybox")
    assert app.command is None
    assert app.entrypoint is None


def test_env_file_is_merged_under_env(shop):
    write(shop / "web.env", "FROM_FILE=file\nBOTH=file\n")
    app = load_app(
        shop,
        """
        image: busybox
        env_file: web.env
        env:
          BOTH: manifest
          FROM_MANIFEST: manifest
        """,
    )
    assert dict(app.env) == {"FROM_FILE": "file", "BOTH": "manifest", "FROM_MANIFEST": "manifest"}


def test_later_env_file_wins_over_earlier(shop):
    write(shop / "a.env", "X=a\nONLY_A=1\n")
    write(shop / "b.env", "X=b\n")
    app = load_app(shop, "image: busybox\nenv_file: [a.env, b.env]")
    assert dict(app.env) == {"X": "b", "ONLY_A": "1"}


def test_env_key_without_value_is_passed_through_from_environ(shop):
    app = load_app(
        shop,
        """
        image: busybox
        env:
          TOKEN:
          NOT_EXPORTED:
        """,
        environ={"TOKEN": "from-environ", "OTHER": "x"},
    )
    assert dict(app.env) == {"TOKEN": "from-environ"}


def test_env_list_form(shop):
    app = load_app(shop, "image: busybox\nenv: [A=1, B=x=y, PASS]", environ={"PASS": "through"})
    assert dict(app.env) == {"A": "1", "B": "x=y", "PASS": "through"}


def test_env_yaml_scalars_become_strings(shop):
    app = load_app(shop, "image: busybox\nenv: {DEBUG: true, WORKERS: 4, RATIO: 0.5}")
    assert dict(app.env) == {"DEBUG": "true", "WORKERS": "4", "RATIO": "0.5"}


def test_env_values_are_interpolated(shop):
    app = load_app(shop, "image: busybox\nenv: {URL: 'http://${HOST:-db}:5432'}")
    assert dict(app.env) == {"URL": "http://db:5432"}


def test_ports_are_parsed(shop):
    app = load_app(
        shop,
        """
        image: busybox
        ports: ["8080", "18081:8081", "127.0.0.1:18082:8082/udp", 9090, "[::1]:18083:8083"]
        """,
    )
    assert app.ports == (
        PortSpec(8080),
        PortSpec(8081, host_port=18081),
        PortSpec(8082, protocol="udp", host_ip="127.0.0.1", host_port=18082),
        PortSpec(9090),
        PortSpec(8083, host_ip="::1", host_port=18083),
    )


def test_named_volume_is_prefixed_with_the_project(shop):
    app = load_app(shop, "image: busybox\nvolumes: [data:/data, cache:/cache:ro]")
    assert app.mounts == (
        Mount("volume", "shop_data", "/data"),
        Mount("volume", "shop_cache", "/cache", read_only=True),
    )


def test_bind_mount_source_is_made_absolute(shop):
    (shop / "site").mkdir()
    app = load_app(shop, "image: busybox\nvolumes: ['./site:/www:ro', './site/../site:/w2']")
    site = str((shop / "site").resolve())
    assert app.mounts == (
        Mount("bind", site, "/www", read_only=True),
        Mount("bind", site, "/w2", read_only=False),
    )


def test_bare_restart_no_is_the_no_policy(shop):
    # YAML 1.1 reads a bare `no` as false.
    assert load_app(shop, "image: busybox\nrestart: no").restart == "no"


def test_restart_defaults_to_unless_stopped(shop):
    assert load_app(shop, "image: busybox").restart == "unless-stopped"


def test_resources_memory_and_cpus(shop):
    app = load_app(shop, "image: busybox\nresources: {memory: 256m, cpus: 0.5}")
    assert app.memory == 256 * 1024**2
    assert app.nano_cpus == 500_000_000


def test_resources_default_to_unlimited(shop):
    app = load_app(shop, "image: busybox")
    assert app.memory is None
    assert app.nano_cpus is None


def test_stop_grace_period_takes_a_duration(shop):
    assert load_app(shop, "image: busybox\nstop_grace_period: 1m30s").stop_grace_period == 90.0


def test_labels_become_strings(shop):
    app = load_app(shop, "image: busybox\nlabels: {team: shop, tier: 1}")
    assert app.labels == (("team", "shop"), ("tier", "1"))


def test_default_project_is_the_folder_name(shop):
    assert load_app(shop, "image: busybox").project == "shop"


def test_default_project_is_the_folder_name_made_valid(tmp_path):
    app = load_app(tmp_path / "My Shop!", "image: busybox\nvolumes: [data:/data]")
    assert app.project == "my-shop"
    assert app.mounts[0].source == "my-shop_data"


def test_explicit_project_wins_over_the_folder_name(shop):
    path = write(shop / "diplo.yaml", "project: store\napps:\n  web: {image: busybox}\n")
    state = load(path)
    assert state.app("web").project == "store"
    assert state.projects == ("store",)


def test_state_lists_files_and_sorted_apps(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          web: {image: busybox}
          api: {image: busybox}
        """,
    )
    state = load(path)
    assert [a.name for a in state.apps] == ["api", "web"]
    assert state.files == (str(path.resolve()),)


def test_source_names_the_file_and_line_of_the_app(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          api:
            image: busybox
          web:
            image: busybox
        """,
    )
    assert load(path).app("web").source == f"{path.resolve()}:4"


def test_extension_keys_and_merge_keys(shop):
    path = write(
        shop / "diplo.yaml",
        """
        x-base: &base
          image: busybox
          init: true
        apps:
          web:
            <<: *base
            init: false
        """,
    )
    app = load(path).app("web")
    assert app.image == "busybox"
    assert app.init is False


def test_empty_manifest_has_no_apps(shop):
    path = write(shop / "diplo.yaml", "# nothing yet\n")
    assert load(path).apps == ()


# --- .env beside the manifest ------------------------------------------------------------


def test_dotenv_beside_the_manifest_is_used_for_interpolation(shop):
    write(shop / ".env", "TAG=1.4\n")
    assert load_app(shop, "image: shop/web:${TAG}").image == "shop/web:1.4"


def test_environment_wins_over_dotenv(shop):
    write(shop / ".env", "TAG=1.4\n")
    app = load_app(shop, "image: shop/web:${TAG}", environ={"TAG": "2.0"})
    assert app.image == "shop/web:2.0"


def test_dotenv_is_not_injected_into_the_container_env(shop):
    write(shop / ".env", "TAG=1.4\n")
    assert load_app(shop, "image: shop/web:${TAG}").env == ()


def test_bad_dotenv_line_is_reported_with_its_line(shop):
    env = write(shop / ".env", "A=1\nnot valid\n")
    path = write(shop / "diplo.yaml", "apps:\n  web: {image: busybox}\n")
    issue = only_issue(path)
    assert (issue.file, issue.line) == (str(env.resolve()), 2)
    assert "expected KEY=value" in issue.message


# --- errors ------------------------------------------------------------------------------


def test_manifest_error_is_an_input_error_that_changes_nothing(shop):
    path = write(shop / "diplo.yaml", "apps:\n  web: {}\n")
    with pytest.raises(InputError) as exc:
        load(path)
    assert isinstance(exc.value, ManifestError)
    assert exc.value.exit_code == 2
    assert "nothing was changed" in str(exc.value)


def test_manifest_error_text_shows_file_line_col_and_hint(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          web:
            image: busybox
            comand: httpd
        """,
    )
    with pytest.raises(ManifestError) as exc:
        load(path)
    text = str(exc.value)
    assert f"{path.resolve()}:4:5: unknown key 'comand'" in text
    assert "hint: did you mean 'command'?" in text


def test_unknown_key_has_a_near_miss_hint(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          web:
            image: busybox
            comand: httpd
        """,
    )
    issue = only_issue(path)
    assert (issue.file, issue.line, issue.col) == (str(path.resolve()), 4, 5)
    assert issue.message == "unknown key 'comand'"
    assert issue.hint == "did you mean 'command'?"


def test_unknown_key_without_near_miss_lists_known_keys(shop):
    path = write(shop / "diplo.yaml", "apps:\n  web:\n    image: busybox\n    zzzzzz: 1\n")
    issue = only_issue(path)
    assert (issue.line, issue.col) == (4, 5)
    assert issue.hint.startswith("known keys: image, build, command")


def test_unknown_top_level_key_has_a_hint(shop):
    path = write(shop / "diplo.yaml", "project: shop\naps:\n  web: {image: busybox}\n")
    issue = only_issue(path)
    assert (issue.line, issue.col) == (2, 1)
    assert issue.hint == "did you mean 'apps'?"


def test_unknown_nested_key_has_a_hint(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          web:
            image: busybox
            resources:
              memroy: 1g
        """,
    )
    issue = only_issue(path)
    assert (issue.line, issue.col) == (5, 7)
    assert issue.hint == "did you mean 'memory'?"


def test_invalid_yaml_syntax_is_reported_where_it_is(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          web:
            image: busybox
           command: x
        """,
    )
    issue = only_issue(path)
    assert issue.file == str(path.resolve())
    assert (issue.line, issue.col) == (4, 4)  # the mis-indented key
    assert issue.message.startswith("invalid YAML:")
    assert issue.hint == "check indentation and quoting"


def test_tab_indentation_is_invalid_yaml(shop):
    path = write(shop / "diplo.yaml", "apps:\n  web:\n    image: x\n\tcommand: y\n")
    issue = only_issue(path)
    assert (issue.line, issue.col) == (4, 1)
    assert "invalid YAML" in issue.message


def test_duplicate_key_is_reported_at_the_second_one(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          web:
            image: busybox
            init: true
            image: nginx
        """,
    )
    issue = only_issue(path)
    assert (issue.line, issue.col) == (5, 5)
    assert issue.message == "duplicate key 'image': each key may appear once"


def test_duplicate_app_is_reported(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          web: {image: busybox}
          web: {image: nginx}
        """,
    )
    issue = only_issue(path)
    assert (issue.line, issue.col) == (3, 3)
    assert "duplicate key 'web'" in issue.message


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ("99999", "port numbers run from 1 to 65535"),
        ("0", "port numbers run from 1 to 65535"),
        ("70000:80", "port numbers run from 1 to 65535"),
        ("http", "is not a port"),
        ("8080/sctp", "is not a port"),
        ("1.2.3.4:80", "is not a port"),
    ],
)
def test_bad_port_is_reported_at_the_port(shop, port, message):
    path = write(
        shop / "diplo.yaml",
        f"""
        apps:
          web:
            image: busybox
            ports:
              - "8080"
              - "{port}"
        """,
    )
    issue = only_issue(path)
    assert (issue.line, issue.col) == (6, 9)
    assert message in issue.message
    assert issue.message.startswith("apps.web.ports.1:")


def test_port_published_twice_is_reported(shop):
    path = write(
        shop / "diplo.yaml", "apps:\n  web:\n    image: busybox\n    ports: [80, '81:80']\n"
    )
    issue = only_issue(path)
    assert (issue.line, issue.col) == (4, 17)
    assert issue.message == "container port 80/tcp is published twice"


@pytest.mark.parametrize("name", ["Web", "web_1", "-web", "web-", "a" * 64])
def test_app_name_must_be_a_dns_label(shop, name):
    path = write(shop / "diplo.yaml", f"apps:\n  ok: {{image: busybox}}\n  {name}:\n    image: x\n")
    issue = only_issue(path)
    assert (issue.line, issue.col) == (3, 3)
    assert issue.message == f"app name {name!r} is not a DNS label"
    assert "lowercase letters, digits and '-'" in issue.hint


def test_app_without_image_or_build_is_reported(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          web:
            image: busybox
          api:
            command: serve
        """,
    )
    issue = only_issue(path)
    assert (issue.line, issue.col) == (4, 3)
    assert issue.message == "app 'api' needs `image:` or `build:`"


def test_unknown_depends_on_suggests_a_near_name(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          store: {image: busybox}
          web:
            image: busybox
            depends_on: [stroe]
        """,
    )
    issue = only_issue(path)
    assert (issue.line, issue.col) == (5, 18)
    assert issue.message == "depends_on names 'stroe', which no manifest defines"
    assert issue.hint == "did you mean 'store'?"


def test_depends_on_may_name_an_app_of_another_file(tmp_path):
    write(tmp_path / "store" / "diplo.yaml", "apps:\n  store: {image: busybox}\n")
    write(tmp_path / "web" / "diplo.yaml", "apps:\n  web: {image: x, depends_on: [store]}\n")
    state = load(tmp_path)
    assert state.app("web").depends_on == ("store",)
    assert state.projects == ("store", "web")


def test_app_cannot_depend_on_itself(shop):
    path = write(shop / "diplo.yaml", "apps:\n  web:\n    image: x\n    depends_on: [web]\n")
    issue = only_issue(path)
    assert (issue.line, issue.col) == (4, 18)
    assert issue.message == "an app cannot depend on itself"


def test_depends_on_cycle_is_reported_once_with_its_path(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          a:
            image: x
            depends_on: [b]
          b:
            image: x
            depends_on: [c]
          c:
            image: x
            depends_on: [a]
        """,
    )
    issue = only_issue(path)
    assert (issue.line, issue.col) == (10, 17)
    assert issue.message == "depends_on forms a cycle: a -> b -> c -> a"


def test_app_defined_in_two_files_is_reported_in_the_second(tmp_path):
    first = write(tmp_path / "one" / "diplo.yaml", "apps:\n  web: {image: busybox}\n")
    second = write(tmp_path / "two" / "diplo.yaml", "apps:\n  api: {image: x}\n  web:\n")
    issue = only_issue(first, second)
    assert (issue.file, issue.line, issue.col) == (str(second.resolve()), 3, 3)
    assert issue.message == f"app 'web' is already defined in {first.resolve()}"


def test_missing_env_file_is_reported(shop):
    path = write(shop / "diplo.yaml", "apps:\n  web:\n    image: x\n    env_file: [nope.env]\n")
    issue = only_issue(path)
    assert (issue.line, issue.col) == (4, 16)
    assert issue.message.startswith("env_file 'nope.env' does not exist")
    assert str((shop / "nope.env").resolve()) in issue.message


def test_missing_env_file_in_short_form_is_reported_at_the_value(shop):
    path = write(shop / "diplo.yaml", "apps:\n  web:\n    image: x\n    env_file: nope.env\n")
    issue = only_issue(path)
    assert (issue.line, issue.col) == (4, 15)


def test_bad_env_file_line_is_reported_in_that_file(shop):
    env = write(shop / "web.env", "A=1\n\nthis is wrong\n")
    path = write(shop / "diplo.yaml", "apps:\n  web:\n    image: x\n    env_file: web.env\n")
    issue = only_issue(path)
    assert (issue.file, issue.line) == (str(env.resolve()), 3)


def test_missing_bind_source_is_reported(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          web:
            image: busybox
            volumes:
              - data:/data
              - ./site:/www:ro
        """,
    )
    issue = only_issue(path)
    assert (issue.line, issue.col) == (6, 9)
    assert issue.message.startswith("bind mount source './site' does not exist")
    assert issue.hint == "create it, or use a named volume"


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        ("data", "is not a volume"),
        ("data:/d:rx", "volume mode 'rx' is not ro or rw"),
        ("data:relative", "must be an absolute path in the container"),
        ("bad name!:/d", "is not a volume name"),
    ],
)
def test_bad_volume_is_reported(shop, volume, message):
    path = write(shop / "diplo.yaml", f"apps:\n  web:\n    image: x\n    volumes: ['{volume}']\n")
    issue = only_issue(path)
    assert (issue.line, issue.col) == (4, 15)
    assert message in issue.message


def test_unset_variable_is_reported_at_its_value(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          web:
            image: busybox
            env:
              TOKEN: ${TOKEN}
        """,
    )
    issue = only_issue(path)
    assert (issue.line, issue.col) == (5, 14)
    assert issue.message.startswith("${TOKEN} is not set")


def test_required_variable_message_is_surfaced(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          web:
            image: busybox
            env:
              DB_URL: "${DB_URL:?set DB_URL to the database address}"
        """,
    )
    issue = only_issue(path)
    assert (issue.line, issue.col) == (5, 15)
    assert issue.message == "${DB_URL}: set DB_URL to the database address"


def test_unset_variable_in_image_gives_one_error(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          web:
            image: "shop/web:${TAG:?set TAG to the release to deploy}"
        """,
    )
    issue = only_issue(path)
    assert (issue.line, issue.col) == (3, 12)
    assert issue.message == "${TAG}: set TAG to the release to deploy"


def test_invalid_project_is_reported(shop):
    path = write(shop / "diplo.yaml", "project: My Shop\napps:\n  web: {image: x}\n")
    issue = only_issue(path)
    assert (issue.line, issue.col) == (1, 10)
    assert "a project is lowercase letters" in issue.message


def test_bad_restart_policy_is_reported(shop):
    path = write(shop / "diplo.yaml", "apps:\n  web:\n    image: x\n    restart: sometimes\n")
    issue = only_issue(path)
    assert (issue.line, issue.col) == (4, 14)
    assert issue.message.startswith("apps.web.restart:")
    assert "'sometimes'" in issue.message


def test_bad_memory_size_is_reported(shop):
    path = write(
        shop / "diplo.yaml", "apps:\n  web:\n    image: x\n    resources: {memory: lots}\n"
    )
    issue = only_issue(path)
    assert (issue.line, issue.col) == (4, 25)
    assert "'lots' is not a size" in issue.message


def test_unsplittable_command_is_reported(shop):
    path = write(shop / "diplo.yaml", "apps:\n  web:\n    image: x\n    command: echo 'oops\n")
    issue = only_issue(path)
    assert (issue.line, issue.col) == (4, 14)
    assert "cannot split command" in issue.message


def test_manifest_that_is_not_a_mapping_is_reported(shop):
    path = write(shop / "diplo.yaml", "- web\n- api\n")
    issue = only_issue(path)
    assert (issue.line, issue.col) == (1, 1)
    assert "a manifest is a mapping" in issue.message


def test_all_errors_of_a_file_are_reported_at_once_sorted_by_line(shop):
    path = write(
        shop / "diplo.yaml",
        """
        apps:
          a:
            image: x
            depends_on: [b]
          b:
            image: x
            depends_on: [a]
          web:
            image: busybox
            comand: httpd
          api:
            ports: ["99999"]
          worker:
            image: busybox
            env: {TOKEN: "${TOKEN}"}
          Bad:
            image: x
        """,
    )
    issues = issues_of(path)
    assert [(i.line, i.col) for i in issues] == [(7, 17), (10, 5), (12, 13), (15, 18), (16, 3)]
    assert "cycle" in issues[0].message
    assert "unknown key 'comand'" in issues[1].message
    assert "port numbers" in issues[2].message
    assert "${TOKEN} is not set" in issues[3].message
    assert "not a DNS label" in issues[4].message
    assert all(i.file == str(path.resolve()) for i in issues)


def test_errors_of_several_files_are_reported_together(tmp_path):
    a = write(tmp_path / "a" / "diplo.yaml", "apps:\n  one:\n    imag: x\n")
    b = write(tmp_path / "b" / "diplo.yaml", "apps:\n  two: {}\n")
    issues = issues_of(a, b)
    assert [(i.file, i.line) for i in issues] == [(str(a.resolve()), 3), (str(b.resolve()), 2)]


# --- find_manifest_files -----------------------------------------------------------------


def test_find_a_single_file(tmp_path):
    path = write(tmp_path / "anything.yml", "apps: {}\n")
    assert find_manifest_files([str(path)]) == [path.resolve()]


def test_find_the_yaml_files_of_a_folder(tmp_path):
    b = write(tmp_path / "b.yaml", "apps: {}\n")
    a = write(tmp_path / "a.yml", "apps: {}\n")
    write(tmp_path / "notes.txt", "not a manifest")
    write(tmp_path / ".hidden.yaml", "apps: {}\n")
    assert find_manifest_files([str(tmp_path)]) == [a.resolve(), b.resolve()]


def test_find_diplo_yaml_in_sub_folders(tmp_path):
    shop = write(tmp_path / "shop" / "diplo.yaml", "apps: {}\n")
    blog = write(tmp_path / "blog" / "deep" / "diplo.yml", "apps: {}\n")
    write(tmp_path / "shop" / "other.yaml", "not: a manifest\n")
    write(tmp_path / ".git" / "diplo.yaml", "apps: {}\n")
    found = find_manifest_files([str(tmp_path)])
    assert sorted(found) == sorted([shop.resolve(), blog.resolve()])


def test_find_the_same_file_twice_gives_it_once(tmp_path):
    path = write(tmp_path / "diplo.yaml", "apps: {}\n")
    assert find_manifest_files([str(path), str(tmp_path)]) == [path.resolve()]


def test_find_a_missing_path_is_an_input_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(InputError, match="no such file or folder") as exc:
        find_manifest_files([str(missing)])
    assert str(missing) in str(exc.value)
    assert exc.value.hint


def test_find_in_a_folder_without_manifests_is_an_input_error(tmp_path):
    write(tmp_path / "readme.txt", "hi")
    with pytest.raises(InputError, match="no manifest files"):
        find_manifest_files([str(tmp_path)])


def test_load_of_a_missing_path_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        load(tmp_path / "nope")


# --- spec hash ---------------------------------------------------------------------------

WEB = """
apps:
  store: {image: busybox}
  web:
    image: busybox
    env_file: web.env
    env: {MODE: prod}
    volumes: ["./httpd.conf:/etc/httpd.conf:ro", "./site:/www:ro"]
"""


@pytest.fixture
def web_dir(shop: Path) -> Path:
    write(shop / "web.env", "A=1\n")
    write(shop / "httpd.conf", "H:/www\n")
    write(shop / "site" / "index.html", "<p>hi</p>\n")
    write(shop / "diplo.yaml", WEB)
    return shop


def web_hash(folder: Path, environ: dict[str, str] | None = None) -> str:
    app = load(folder / "diplo.yaml", environ=environ).app("web")
    assert app is not None
    assert len(app.spec_hash) == 64
    return app.spec_hash


def test_same_input_gives_the_same_hash(web_dir):
    assert web_hash(web_dir) == web_hash(web_dir)


def test_hash_does_not_depend_on_the_environ_when_unused(web_dir):
    assert web_hash(web_dir, {"UNRELATED": "1"}) == web_hash(web_dir)


def test_changing_an_env_value_changes_the_hash(web_dir):
    before = web_hash(web_dir)
    write(web_dir / "diplo.yaml", WEB.replace("MODE: prod", "MODE: dev"))
    assert web_hash(web_dir) != before


def test_changing_an_interpolated_variable_changes_the_hash(web_dir):
    write(web_dir / "diplo.yaml", WEB.replace("MODE: prod", 'MODE: "${MODE}"'))
    assert web_hash(web_dir, {"MODE": "a"}) != web_hash(web_dir, {"MODE": "b"})


def test_changing_the_env_file_changes_the_hash(web_dir):
    before = web_hash(web_dir)
    write(web_dir / "web.env", "A=2\n")
    assert web_hash(web_dir) != before


def test_changing_a_bind_mounted_file_changes_the_hash(web_dir):
    before = web_hash(web_dir)
    write(web_dir / "httpd.conf", "H:/www\nA:*\n")
    assert web_hash(web_dir) != before


def test_changing_a_file_in_a_bind_mounted_folder_keeps_the_hash(web_dir):
    # By design: a folder is mounted live, the container sees the edit without redeploy.
    before = web_hash(web_dir)
    write(web_dir / "site" / "index.html", "<p>changed</p>\n")
    write(web_dir / "site" / "new.html", "<p>new</p>\n")
    assert web_hash(web_dir) == before


def test_changing_depends_on_alone_keeps_the_hash(web_dir):
    before = web_hash(web_dir)
    write(
        web_dir / "diplo.yaml",
        WEB.replace("env: {MODE: prod}", "env: {MODE: prod}\n    depends_on: [store]"),
    )
    assert load(web_dir / "diplo.yaml").app("web").depends_on == ("store",)
    assert web_hash(web_dir) == before


def test_changing_the_image_changes_the_hash(web_dir):
    before = web_hash(web_dir)
    write(
        web_dir / "diplo.yaml",
        WEB.replace("image: busybox\n    env_file", "image: nginx\n    env_file"),
    )
    assert web_hash(web_dir) != before


BUILD = """
apps:
  web:
    image: shop/web:dev
    build:
      context: ./app
      args: {VERSION: "1"}
"""


@pytest.fixture
def build_dir(shop: Path) -> Path:
    write(shop / "app" / "Dockerfile", "FROM busybox\nCOPY . /srv\n")
    write(shop / "app" / "src" / "main.sh", "echo hi\n")
    write(shop / "app" / ".dockerignore", "# not sent\nsecret.txt\nnode_modules/\n")
    write(shop / "app" / "secret.txt", "one\n")
    write(shop / "app" / "node_modules" / "dep.js", "1\n")
    write(shop / "diplo.yaml", BUILD)
    return shop


def build_of(folder: Path):
    app = load(folder / "diplo.yaml").app("web")
    assert app is not None and app.build is not None
    return app


def test_build_is_resolved(build_dir):
    app = build_of(build_dir)
    assert app.image == "shop/web:dev"
    assert app.build.context == str((build_dir / "app").resolve())
    assert app.build.dockerfile == "Dockerfile"
    assert app.build.args == (("VERSION", "1"),)


def test_build_short_form_without_image_gets_a_local_tag(shop):
    write(shop / "app" / "Dockerfile", "FROM busybox\n")
    app = load_app(shop, "build: ./app")
    assert app.image == "diplo/shop-web:latest"
    assert app.build.context == str((shop / "app").resolve())


def test_build_context_must_exist(shop):
    path = write(shop / "diplo.yaml", "apps:\n  web:\n    build: ./nope\n")
    issue = only_issue(path)
    assert (issue.line, issue.col) == (3, 12)
    assert "build context './nope' is not a folder" in issue.message


def test_build_needs_a_dockerfile(shop):
    (shop / "app").mkdir()
    path = write(shop / "diplo.yaml", "apps:\n  web:\n    build: ./app\n")
    issue = only_issue(path)
    assert "no Dockerfile at" in issue.message
    assert issue.hint == "add one or set build.dockerfile"


def test_changing_a_file_in_the_build_context_changes_the_hash(build_dir):
    before = build_of(build_dir)
    write(build_dir / "app" / "src" / "main.sh", "echo bye\n")
    after = build_of(build_dir)
    assert after.build.build_hash != before.build.build_hash
    assert after.spec_hash != before.spec_hash


def test_adding_a_file_to_the_build_context_changes_the_hash(build_dir):
    before = build_of(build_dir).spec_hash
    write(build_dir / "app" / "src" / "extra.sh", "")
    assert build_of(build_dir).spec_hash != before


def test_changing_the_dockerfile_changes_the_hash(build_dir):
    before = build_of(build_dir).spec_hash
    write(build_dir / "app" / "Dockerfile", "FROM alpine\nCOPY . /srv\n")
    assert build_of(build_dir).spec_hash != before


def test_changing_a_build_arg_changes_the_hash(build_dir):
    before = build_of(build_dir).spec_hash
    write(build_dir / "diplo.yaml", BUILD.replace('VERSION: "1"', 'VERSION: "2"'))
    assert build_of(build_dir).spec_hash != before


def test_dockerignored_file_does_not_change_the_hash(build_dir):
    before = build_of(build_dir)
    write(build_dir / "app" / "secret.txt", "two\n")
    write(build_dir / "app" / "node_modules" / "dep.js", "2\n")
    write(build_dir / "app" / "node_modules" / "more.js", "3\n")
    after = build_of(build_dir)
    assert after.build.build_hash == before.build.build_hash
    assert after.spec_hash == before.spec_hash


def test_dockerignore_exception_is_hashed(build_dir):
    write(build_dir / "app" / ".dockerignore", "*.txt\n!keep.txt\n")
    write(build_dir / "app" / "keep.txt", "one\n")
    before = build_of(build_dir).spec_hash
    write(build_dir / "app" / "keep.txt", "two\n")
    assert build_of(build_dir).spec_hash != before


def test_root_only_dockerignore_pattern_does_not_hide_files_in_sub_folders(build_dir):
    write(build_dir / "app" / ".dockerignore", "*.log\n")
    write(build_dir / "app" / "src" / "a.log", "one\n")
    before = build_of(build_dir).spec_hash
    write(build_dir / "app" / "src" / "a.log", "two\n")
    assert build_of(build_dir).spec_hash != before


# --- public spec -------------------------------------------------------------------------


def test_public_spec_never_contains_a_raw_env_value(shop):
    write(shop / "web.env", "FILE_SECRET=file-s3cret-value\n")
    app = load_app(
        shop,
        """
        image: busybox
        env_file: web.env
        env: {TOKEN: s3cret-value, PASSED: }
        """,
        environ={"PASSED": "environ-s3cret-value"},
    )
    assert dict(app.env)["TOKEN"] == "s3cret-value"
    text = json.dumps(app.public_spec())
    assert "s3cret-value" not in text
    assert set(app.public_spec()["env"]) == {"FILE_SECRET", "TOKEN", "PASSED"}


def test_public_spec_never_contains_a_raw_build_arg(shop):
    write(shop / "app" / "Dockerfile", "FROM busybox\n")
    app = load_app(shop, "build: {context: ./app, args: {NPM_TOKEN: s3cret-value}}")
    assert "s3cret-value" not in json.dumps(app.public_spec())


def test_public_spec_shows_that_an_env_value_changed(shop):
    one = load_app(shop, "image: busybox\nenv: {TOKEN: s3cret-value}").public_spec()
    two = load_app(shop, "image: busybox\nenv: {TOKEN: other-value}").public_spec()
    assert one["env"]["TOKEN"] != two["env"]["TOKEN"]


def test_a_load_leaves_no_garbage_that_only_the_cyclic_collector_frees(tmp_path: Path):
    """`diplo serve` reloads every resync: garbage in reference cycles (the YAML loader's
    own, a recursive closure's) made it run a full collection every few seconds at 500
    apps, every API request waiting meanwhile."""
    import gc

    import yaml

    apps = {
        f"a{i}": {"image": "busybox", "depends_on": [f"a{i - 1}"] if i else []} for i in range(20)
    }
    (tmp_path / "diplo.yaml").write_text(yaml.safe_dump({"project": "p", "apps": apps}))
    gc.collect()
    gc.disable()
    try:
        desired = load_manifests([str(tmp_path)])
        assert len(desired.apps) == 20
        del desired
        assert gc.collect() == 0
    finally:
        gc.enable()


def _hash_as_before(app: DesiredApp) -> str:
    """The spec hash as it was defined (dataclasses.asdict, then the unhashed keys
    dropped): hashes on every host were made so, and a different one redeploys the app."""
    import dataclasses

    from diplo.manifest.hashing import UNHASHED, spec_digest

    data = dataclasses.asdict(app)
    for key in UNHASHED:
        data.pop(key)
    return spec_digest(data)


def test_spec_hashes_are_those_of_earlier_versions(tmp_path: Path):
    """Every kind of field (nested specs, tuples of pairs, mounts, ports, build args, file
    hashes, None and numbers) hashes as it did before the hash stopped using asdict."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\n")
    (tmp_path / "app.env").write_text("FROM_FILE=1\n")
    (tmp_path / "conf.txt").write_text("x\n")
    manifest = write(
        tmp_path / "diplo.yaml",
        """
        project: shop
        apps:
          web:
            build: {context: ./ctx, args: {V: "1"}}
            command: ["httpd", "-f"]
            entrypoint: ["/bin/sh", "-c"]
            env: {A: "1", B: "two"}
            env_file: app.env
            ports: ["8080", "127.0.0.1:18081:81/udp"]
            volumes: ["data:/data", "./conf.txt:/etc/conf.txt:ro"]
            labels: {team: a}
            init: true
            resources: {memory: 64m, cpus: 0.5}
            user: "1000"
            working_dir: /srv
            stop_signal: SIGINT
            stop_grace_period: 3s
            health: {http: {port: 8080, path: /up}}
            depends_on: [db]
            domains: [web.example.test]
          db:
            image: busybox:latest
        """,
    )
    desired = load(manifest)
    assert {a.name for a in desired.apps} == {"web", "db"}
    web = desired.app("web")
    assert web is not None and web.build and web.mounts and web.file_hashes and web.env
    for app in desired.apps:
        assert app.spec_hash == _hash_as_before(app), app.name
