"""The `alerts:` key of an app: its thresholds over the host's, errors at file:line, and
no part of the spec hash (changing it redeploys nothing)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from diplo.alertspec import HostRules, Threshold, app_alerts
from diplo.errors import ManifestError
from diplo.manifest.load import load_manifests


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "diplo.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load(path: Path):
    return load_manifests([str(path)], environ={}).apps[0]


APP = """
apps:
  web:
    image: busybox
    resources: {memory: 64m}
"""


def test_the_apps_rules_override_the_hosts_key_by_key(tmp_path):
    app = load(
        write(
            tmp_path,
            APP + "    alerts: {memory: {above: 80%}, cpu: false, latency: {above: 0.3s}}\n",
        )
    )
    host = HostRules.model_validate({"memory": {"for": "1m"}})
    rules = host.for_app(app_alerts(app.alerts))
    assert rules.memory.threshold() == Threshold("percent", 80.0) and rules.memory.for_ == 60.0
    assert not rules.cpu.enabled and rules.down.enabled
    assert rules.latency.threshold() == Threshold("seconds", 0.3)
    assert host.for_app(app_alerts("")) == host


def test_changing_alerts_keeps_the_spec_hash(tmp_path):
    plain = load(write(tmp_path, APP))
    alerted = load(write(tmp_path, APP + "    alerts: {memory: {above: 50%, for: 5s}}\n"))
    assert plain.alerts == "" and alerted.alerts
    assert plain.spec_hash == alerted.spec_hash
    assert plain.public_spec() == alerted.public_spec()  # no OutOfSync either


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("    alerts: {memory: {above: lots}}\n", "'lots' is not a percentage like 80% or a size"),
        ("    alerts: {cpu: {above: 2g}}\n", "is not a percentage"),
        ("    alerts: {latency: {above: 50%}}\n", "is not a duration like 500ms"),
        ("    alerts: {disk: {above: 50%}}\n", "disk"),  # a host-wide rule
        ("    alerts: {memory: {for: soon}}\n", "not a duration"),
    ],
)
def test_a_bad_rule_is_an_error_at_its_line(tmp_path, line, says):
    with pytest.raises(ManifestError) as exc:
        load(write(tmp_path, APP + line))
    (issue,) = exc.value.issues
    assert issue.line == 5 and says in issue.message, issue
