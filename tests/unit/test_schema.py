"""The committed JSON Schema matches the code, and the examples are valid manifests."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from diplo.manifest.load import load_manifests
from diplo.manifest.spec import APP_NAME, AppConfig, ManifestConfig, json_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schemas" / "diplo.schema.json"
EXAMPLES = sorted(ROOT.glob("examples/**/diplo.yaml"))

SAMPLE = """
project: sample
x-common: &common
  image: busybox:latest
  init: true
apps:
  db:
    <<: *common
    volumes: ["data:/var/lib/data"]
    restart: no
  web:
    image: busybox:latest
    command: httpd -f -p 8080
    ports: ["8080", "127.0.0.1:18081:8081/udp"]
    env: {MODE: "${MODE:-prod}", DEBUG: false, WORKERS: 4}
    depends_on: [db]
    resources: {memory: 64m, cpus: 0.5}
    labels: {team: web}
    stop_grace_period: 5s
    pull_policy: never
"""


def test_committed_schema_is_up_to_date():
    committed = json.loads(SCHEMA_FILE.read_text())
    current = json.loads(json.dumps(json_schema(), indent=2))
    assert committed == current, (
        f"{SCHEMA_FILE.relative_to(ROOT)} is out of date with diplo/manifest/spec.py: "
        "run `make schema` and commit the result"
    )


def test_schema_lists_every_key_the_loader_accepts():
    schema = json_schema()
    assert set(schema["properties"]) == set(ManifestConfig.model_fields)
    assert set(schema["$defs"]["AppConfig"]["properties"]) == set(AppConfig.model_fields)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["apps"]["propertyNames"] == {"pattern": APP_NAME.pattern}


def test_every_example_loads():
    failures = []
    for path in EXAMPLES:
        try:
            state = load_manifests([str(path)], environ={})
        except Exception as exc:
            failures.append(f"{path.relative_to(ROOT)}: {exc}")
            continue
        assert state.apps, f"{path} defines no app"
    assert not failures, "\n".join(failures)


def test_sample_manifest_loads(tmp_path):
    path = tmp_path / "sample" / "diplo.yaml"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(SAMPLE).lstrip())
    state = load_manifests([str(path)], environ={})
    assert [a.name for a in state.apps] == ["db", "web"]
    assert state.app("db").restart == "no"
    assert state.app("db").image == "busybox:latest"


def _validator():
    jsonschema = pytest.importorskip("jsonschema")
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))


def test_sample_manifest_matches_the_schema():
    validator = _validator()
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(SAMPLE))]
    assert errors == []


def test_schema_rejects_an_unknown_key():
    validator = _validator()
    bad = {"apps": {"web": {"image": "busybox", "comand": "x"}}}
    assert not validator.is_valid(bad)


def test_every_example_matches_the_schema():
    validator = _validator()
    for path in EXAMPLES:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], f"{path.relative_to(ROOT)}: {errors}"
