"""Secrets interpolated into fields other than env (M5): a command, a label, a health
command, a user or a volume show `${VAR}` wherever Diplo stores or serves the spec, and
a rollback still runs the values that deployment ran with (sealed)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from diplo.manifest.load import load_manifests
from diplo.model import DesiredApp, app_record, restore_app

from .cliworld import CliWorld, spec

SECRET, OTHER = "hunter2-s3cret", "correct-horse-9"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


MANIFEST = """
project: shop
apps:
  web:
    image: busybox:latest
    command: ["sh", "-c", "httpd -f --password=${DB_PASS}"]
    labels:
      token: "tok-${API_TOKEN}"
      plain: "${MODE:-literal-default}"
    user: "${RUNAS}"
    volumes: ["data-${DB_PASS}:/data"]
    env:
      DB_URL: "postgres://app:${DB_PASS}@db"
    health:
      cmd: ["sh", "-c", "test ${DB_PASS}"]
"""


def load(tmp_path: Path, **env: str) -> DesiredApp:
    environ = {"DB_PASS": SECRET, "API_TOKEN": "abc-123", "RUNAS": "nobody", **env}
    (app,) = load_manifests([str(write(tmp_path / "diplo.yaml", MANIFEST))], environ).apps
    return app


def test_interpolated_values_outside_env_are_masked_by_field(tmp_path: Path):
    web = load(tmp_path)
    assert {(f, var) for f, var, _ in web.masked} == {
        ("command", "DB_PASS"),
        ("labels", "API_TOKEN"),
        ("user", "RUNAS"),
        ("mounts", "DB_PASS"),
        ("health", "DB_PASS"),
    }  # not env (always a digest) and not a default written in the manifest
    # The container still gets the real values.
    assert web.command == ("sh", "-c", f"httpd -f --password={SECRET}")
    assert dict(web.labels)["plain"] == "literal-default"


def test_the_public_spec_and_the_record_show_the_template_never_the_value(tmp_path: Path):
    web = load(tmp_path)
    public, record = web.public_spec(), app_record(web)
    for shown in (json.dumps(public), json.dumps(record)):
        assert SECRET not in shown and "abc-123" not in shown and "nobody" not in shown
    assert public["command"][-1] == "httpd -f --password=${DB_PASS}"
    assert public["labels"] == {"token": "tok-${API_TOKEN}", "plain": "literal-default"}
    assert public["user"] == "${RUNAS}" and public["volumes"] == ["shop_data-${DB_PASS}:/data"]
    assert public["health"]["cmd"] == ["sh", "-c", "test ${DB_PASS}"]
    assert set(public["interpolated"]) == {"DB_PASS", "API_TOKEN", "RUNAS"}


def test_a_changed_secret_still_shows_as_a_change(tmp_path: Path):
    before, after = load(tmp_path).public_spec(), load(tmp_path, DB_PASS=OTHER).public_spec()
    assert before != after
    assert {k for k in before if before[k] != after[k]} == {"interpolated", "env"}
    assert load(tmp_path).spec_hash != load(tmp_path, DB_PASS=OTHER).spec_hash


def test_an_app_without_interpolation_keeps_its_spec_as_before(tmp_path: Path):
    text = "apps:\n  web:\n    image: busybox:latest\n    command: [httpd, -f]\n"
    (web,) = load_manifests([str(write(tmp_path / "diplo.yaml", text))], {}).apps
    assert web.masked == () and "interpolated" not in web.public_spec()


def test_restore_puts_the_sealed_values_back_or_names_what_is_missing(tmp_path: Path):
    web = load(tmp_path)
    record = json.loads(json.dumps(app_record(web)))
    sealed = json.loads(
        json.dumps({"env": web.env, "masked": web.masked, "fields": web.masked_fields()})
    )
    back, missing = restore_app(record, dict(web.env), "sha256:x", sealed)
    assert missing == [] and back is not None
    assert back.command == web.command and back.labels == web.labels
    assert back.user == "nobody" and back.health == web.health and back.mounts == web.mounts
    assert back.masked == web.masked  # and so it is masked again where it is shown
    nothing, missing = restore_app(record, dict(web.env), "sha256:x", None)
    assert nothing is None and set(missing) == {"${DB_PASS}", "${API_TOKEN}", "${RUNAS}"}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliWorld]:
    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DIPLO_TOKEN", raising=False)
    config = structlog.get_config()
    yield CliWorld(tmp_path)
    structlog.configure(**config)


def test_rollback_runs_the_secret_the_old_deployment_ran_with(world, monkeypatch):
    command = ["sh", "-c", "httpd -f --password=${DB_PASS}"]
    world.write({"web": spec(command=command)})
    monkeypatch.setenv("DB_PASS", SECRET)
    assert world.apply().exit_code == 0
    monkeypatch.setenv("DB_PASS", OTHER)
    assert world.apply().exit_code == 0
    (c,) = world.containers("web")
    assert c.spec.command[-1] == f"httpd -f --password={OTHER}"

    rolled = world.run("rollback", "web", "-f", str(world.manifest))
    assert rolled.exit_code == 0, rolled.output
    (c,) = world.containers("web")
    assert c.spec.command[-1] == f"httpd -f --password={SECRET}"
    shown = world.run("status", "--json").stdout + world.run("history", "web").stdout
    assert SECRET not in shown and OTHER not in shown
    with sqlite3.connect(world.ledger_path) as db:  # the file, as anyone who reads it
        rows = db.execute(
            "SELECT spec_json FROM apps UNION ALL SELECT record_json FROM deployments"
        )
        dumped = json.dumps(rows.fetchall())
    assert "${DB_PASS}" in dumped and SECRET not in dumped and OTHER not in dumped


def test_spec_hashes_are_shown_keyed_and_alike_everywhere(world):
    world.write({"web": spec()})
    assert world.apply().exit_code == 0
    (c,) = world.containers("web")
    raw = c.spec.labels["diplo.spec-hash"]  # what the container carries, unchanged
    (view,) = json.loads(world.run("status", "--json").stdout)
    (dep,) = json.loads(world.run("history", "web", "--json").stdout)
    shown = {view["spec_hash"], view["containers"][0]["spec_hash"], dep["spec_hash"]}
    assert len(shown) == 1 and len(next(iter(shown))) == 12
    assert next(iter(shown)) not in raw  # not the bare SHA-256 a guess can be checked against


def test_interpolated_domains_and_certificate_paths_are_masked_and_restored(tmp_path: Path):
    (tmp_path / "certs-s3cret-dir").mkdir()
    for name in ("c.pem", "k.pem"):
        (tmp_path / "certs-s3cret-dir" / name).write_text(name)
    text = (
        "apps:\n  web:\n    image: busybox\n    http_port: 80\n    domains: ['${DOM}']\n"
        "    tls: {cert: '${CERTS}/c.pem', key: '${CERTS}/k.pem'}\n"
    )
    environ = {"DOM": "hidden-shop.example.com", "CERTS": "certs-s3cret-dir"}
    (web,) = load_manifests([str(write(tmp_path / "diplo.yaml", text))], environ).apps
    assert web.domains == ("hidden-shop.example.com",) and "certs-s3cret-dir" in web.tls_cert
    shown = json.dumps([web.public_spec(), app_record(web)])
    assert "hidden-shop" not in shown and "certs-s3cret-dir" not in shown
    sealed = json.loads(
        json.dumps({"env": web.env, "masked": web.masked, "fields": web.masked_fields()})
    )
    back, missing = restore_app(json.loads(json.dumps(app_record(web))), {}, "sha256:x", sealed)
    assert missing == [] and back is not None
    assert (back.domains, back.tls_cert, back.tls_key) == (web.domains, web.tls_cert, web.tls_key)
