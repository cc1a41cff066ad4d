"""Manifest keys for replicas, strategies, domains and TLS: values, defaults, and every
error at its file:line. Line numbers can be counted in the texts (line 1 is `apps:`)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from diplo.controller.sources import Loaded, merge
from diplo.errors import ManifestError, ManifestIssue
from diplo.manifest.load import load_manifests
from diplo.model import Revision
from diplo.policy import Policy


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "diplo.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load(path: Path, **kw):
    return load_manifests([str(path)], environ={}, **kw)


def issues(path: Path, **kw) -> list[ManifestIssue]:
    with pytest.raises(ManifestError) as exc:
        load(path, **kw)
    return exc.value.issues


def one(path: Path, **kw) -> ManifestIssue:
    found = issues(path, **kw)
    assert len(found) == 1, found
    return found[0]


def test_defaults_one_replica_recreate_no_domains(tmp_path):
    app = load(write(tmp_path, "apps:\n  web:\n    image: busybox\n")).apps[0]
    assert (app.replicas, app.strategy, app.domains, app.http_port) == (1, "recreate", (), None)
    assert app.tls == "auto" and app.drain == 30.0
    assert "replicas" not in app.public_spec() and "domains" not in app.public_spec()


def test_domains_default_to_start_first_and_the_only_port(tmp_path):
    app = load(
        write(
            tmp_path,
            """
            apps:
              web:
                image: busybox
                replicas: 3
                ports: ["8080"]
                domains: [Shop.Example.com, "*.shop.example.com"]
                deploy: {drain: 5s}
            """,
        )
    ).apps[0]
    assert app.domains == ("shop.example.com", "*.shop.example.com")
    assert (app.replicas, app.strategy, app.http_port, app.drain) == (3, "start-first", 8080, 5)
    spec = app.public_spec()
    assert spec["replicas"] == 3 and spec["tls"] == "auto" and spec["http_port"] == 8080


def test_a_domain_change_keeps_the_spec_hash(tmp_path):
    text = "project: p\napps:\n  web:\n    image: busybox\n    http_port: 80\n    domains: [{}]\n"
    a = load(write(tmp_path / "a", text.format("a.example.com"))).apps[0]
    b = load(write(tmp_path / "b", text.format("b.example.com"))).apps[0]
    c = load(write(tmp_path / "c", text.replace("http_port", "replicas: 4\n    http_port")
                   .format("a.example.com"))).apps[0]  # fmt: skip
    assert a.spec_hash == b.spec_hash == c.spec_hash
    assert a.public_spec() != b.public_spec()


@pytest.mark.parametrize(
    ("domain", "says"),
    [
        ("https://shop.example.com", "without scheme, port or path"),
        ("shop.example.com:8443", "without scheme, port or path"),
        ("shop.example.com/api", "without scheme, port or path"),
        ("shop.*.com", "wildcard is allowed only as the whole first label"),
        ("*shop.example.com", "wildcard is allowed only as the whole first label"),
        ("-shop.example.com", "each label is letters, digits and '-'"),
        ("shop_1.example.com", "each label is letters, digits and '-'"),
    ],
)
def test_a_bad_domain_is_reported_at_its_line(tmp_path, domain, says):
    path = write(
        tmp_path,
        f"""
        apps:
          web:
            image: busybox
            http_port: 80
            domains:
              - ok.example.com
              - "{domain}"
        """,
    )
    issue = one(path)
    assert (issue.line, issue.file) == (7, str(path))
    assert says in issue.message


def test_a_domain_without_an_http_port_says_so(tmp_path):
    path = write(
        tmp_path,
        """
        apps:
          web:
            image: busybox
            ports: ["8080", "9090"]
            domains: [shop.example.com]
        """,
    )
    issue = one(path)
    assert issue.line == 5
    assert "domains but no HTTP port" in issue.message and "8080, 9090" in issue.message
    assert "http_port" in (issue.hint or "")
    bare = write(tmp_path / "b", "apps:\n  web:\n    image: busybox\n    domains: [a.localhost]\n")
    issue = one(bare)
    assert issue.line == 4 and "publishes no TCP port" in issue.message


def test_replicas_with_a_fixed_host_port_says_why(tmp_path):
    path = write(
        tmp_path,
        """
        apps:
          web:
            image: busybox
            replicas: 2
            ports:
              - "18080:80"
        """,
    )
    issue = one(path)
    assert issue.line == 6
    assert "two containers cannot publish one host port" in issue.message
    assert "domains" in (issue.hint or "") and "ephemeral" in (issue.hint or "")


def test_replicas_are_bounded(tmp_path):
    issue = one(write(tmp_path, "apps:\n  web:\n    image: busybox\n    replicas: 101\n"))
    assert issue.line == 4 and "replicas" in issue.message
    issue = one(write(tmp_path / "z", "apps:\n  web:\n    image: busybox\n    replicas: 0\n"))
    assert issue.line == 4


def test_start_first_with_a_fixed_host_port_says_why(tmp_path):
    path = write(
        tmp_path,
        """
        apps:
          web:
            image: busybox
            ports: ["18080:80"]
            deploy:
              strategy: start-first
        """,
    )
    issue = one(path)
    assert issue.line == 6
    assert "host port 18080" in issue.message and "only one container can publish" in issue.message


def test_domains_with_a_fixed_host_port_default_to_recreate(tmp_path):
    path = write(
        tmp_path,
        "apps:\n  web:\n    image: busybox\n    ports: ['18080:80']\n    domains: [a.localhost]\n",
    )
    assert load(path).apps[0].strategy == "recreate"


def test_drain_is_a_bounded_duration(tmp_path):
    path = write(tmp_path, "apps:\n  web:\n    image: busybox\n    deploy:\n      drain: 2h\n")
    issue = one(path)
    assert issue.line == 5 and "between" in issue.message


def test_tls_modes_and_a_bad_one(tmp_path):
    base = "apps:\n  web:\n    image: busybox\n    http_port: 80\n    domains: [a.localhost]\n"
    for mode in ("auto", "internal", "off"):
        assert load(write(tmp_path / mode, base + f"    tls: {mode}\n")).apps[0].tls == mode
    issue = one(write(tmp_path / "bad", base + "    tls: acme\n"))
    assert issue.line == 6 and "not auto, internal, off or {cert: FILE, key: FILE}" in issue.message


def test_tls_files_are_read_and_hashed_outside_the_container_spec(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "c.pem").write_text("CERT")
    (tmp_path / "certs" / "k.pem").write_text("KEY")
    text = (
        "apps:\n  web:\n    image: busybox\n    http_port: 80\n    domains: [a.example.com]\n"
        "    tls: {cert: certs/c.pem, key: certs/k.pem}\n"
    )
    first = load(write(tmp_path, text)).apps[0]
    assert first.tls == "files" and first.tls_cert == str(tmp_path / "certs" / "c.pem")
    (tmp_path / "certs" / "c.pem").write_text("RENEWED")
    second = load(write(tmp_path, text)).apps[0]
    assert second.tls_digest != first.tls_digest and second.spec_hash == first.spec_hash
    assert second.public_spec()["tls"] != first.public_spec()["tls"]


def test_a_tls_file_outside_the_policy_is_refused_at_its_line(tmp_path):
    outside = tmp_path / "elsewhere.pem"
    outside.write_text("CERT")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "k.pem").write_text("KEY")
    path = write(
        tmp_path / "repo",
        """
        apps:
          web:
            image: busybox
            http_port: 80
            domains: [a.example.com]
            tls:
              cert: ../elsewhere.pem
              key: k.pem
        """,
    )
    issue = one(path, policy=Policy(), kind="repository", root=tmp_path / "repo")
    assert issue.line == 7 and "tls cert '../elsewhere.pem' refused" in issue.message
    assert "policy.yaml" in (issue.hint or "")
    missing = write(
        tmp_path / "m",
        "apps:\n  web:\n    image: busybox\n    http_port: 80\n"
        "    domains: [a.localhost]\n    tls: {cert: no.pem, key: no.pem}\n",
    )
    found = issues(missing)
    assert [i.line for i in found] == [6, 6]  # the cert and the key, each at its column
    assert all("does not exist" in i.message for i in found)


def test_two_apps_claiming_one_domain_name_both_places(tmp_path):
    path = write(
        tmp_path,
        """
        apps:
          shop:
            image: busybox
            http_port: 80
            domains: [shop.example.com]
          blog:
            image: busybox
            http_port: 80
            domains:
              - blog.example.com
              - shop.example.com
        """,
    )
    issue = one(path)
    assert issue.line == 11
    assert "'shop.example.com' is also claimed by app 'shop'" in issue.message
    assert f"{path}:5" in issue.message


def test_a_domain_listed_twice_by_one_app(tmp_path):
    path = write(
        tmp_path,
        "apps:\n  web:\n    image: busybox\n    http_port: 80\n"
        "    domains: [a.localhost, b.localhost, a.localhost]\n",
    )
    issue = one(path)
    assert issue.line == 5 and "listed twice" in issue.message


def test_two_sources_claiming_one_domain(tmp_path):
    def loaded(name: str, app: str) -> Loaded:
        path = write(
            tmp_path / name,
            f"project: {name}\napps:\n  {app}:\n    image: busybox\n    http_port: 80\n"
            "    domains: [shop.example.com]\n",
        )
        return Loaded(load(path), Revision(f"folder:{tmp_path / name}"))

    with pytest.raises(ManifestError) as exc:
        merge([loaded("a", "shop"), loaded("b", "blog")])
    (issue,) = exc.value.issues
    assert issue.file == str(tmp_path / "b" / "diplo.yaml") and issue.line == 3
    assert "also claimed by app 'shop'" in issue.message
    assert f"{tmp_path / 'a' / 'diplo.yaml'}:3" in issue.message


def test_load_balancing_is_a_proxy_setting_that_restarts_nothing(tmp_path):
    base = "apps:\n  web:\n    image: busybox\n    http_port: 80\n    domains: [a.localhost]\n"
    plain = load(write(tmp_path, base)).apps[0]
    least = load(write(tmp_path, base + "    load_balancing: least_conn\n")).apps[0]
    assert (plain.load_balancing, least.load_balancing) == ("round_robin", "least_conn")
    assert least.spec_hash == plain.spec_hash  # a proxy change, not a new container
    assert least.public_spec()["load_balancing"] == "least_conn"
    assert "load_balancing" not in plain.public_spec()  # specs recorded before stay equal
    issue = one(write(tmp_path, base + "    load_balancing: random\n"))
    assert issue.line == 6 and "round_robin" in issue.message
