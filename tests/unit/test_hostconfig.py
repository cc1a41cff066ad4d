"""The host's config file ($DIPLO_HOME/config.yaml): defaults, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from diplo.errors import InputError
from diplo.hostconfig import HostConfig, load_config, parse_config


def test_no_file_gives_the_defaults(tmp_path: Path):
    config = load_config(tmp_path)
    assert config == HostConfig()
    assert (config.proxy.http_port, config.proxy.https_port) == (80, 443)


def test_the_proxy_ports_move(tmp_path: Path):
    (tmp_path / "config.yaml").write_text("proxy:\n  http_port: 8080\n  https_port: 8443\n")
    proxy = load_config(tmp_path).proxy
    assert (proxy.http_port, proxy.https_port, proxy.email) == (8080, 8443, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("proxy: {http_port: 0}\n", "proxy.http_port: Input should be greater than or equal to 1"),
        ("proxy: {htp_port: 81}\n", "proxy.htp_port: Extra inputs are not permitted"),
        ("proxy: {http_port: 443}\n", "proxy.http_port and proxy.https_port are the same"),
        ("- a\n", "the host's config is a mapping"),
        ("proxy: [\n", "invalid YAML"),
    ],
)
def test_a_broken_config_is_a_clear_input_error(text: str, message: str):
    with pytest.raises(InputError, match=r"config\.yaml: ") as exc:
        parse_config(text)
    assert message in exc.value.message


def test_the_metrics_interval_and_retention_are_the_hosts(tmp_path: Path):
    assert load_config(tmp_path).metrics.interval == 10.0
    (tmp_path / "config.yaml").write_text(
        "metrics:\n  interval: 5\n  retention: {raw: 7200, ten_minutes: 2592000}\n"
    )
    metrics = load_config(tmp_path).metrics
    assert metrics.enabled and metrics.interval == 5.0
    assert metrics.retention.model_dump() == {"raw": 7200, "minute": 86400, "ten_minutes": 2592000}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "metrics: {interval: 0.1}\n",
            "metrics.interval: Input should be greater than or equal to 1",
        ),
        ("metrics: {retention: {raw: 10}}\n", "metrics.retention.raw: Input should be greater"),
        ("metrics: {retention: {hourly: 10}}\n", "metrics.retention.hourly: Extra inputs"),
    ],
)
def test_a_broken_metrics_section_is_a_clear_input_error(text: str, message: str):
    with pytest.raises(InputError) as exc:
        parse_config(text)
    assert message in exc.value.message
