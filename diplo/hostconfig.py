"""The host's own settings, `$DIPLO_HOME/config.yaml`: what belongs to the machine and
its owner rather than to any manifest (the proxy's ports and ACME account, the metrics
collector's interval and retention, and later alert channels). Like the policy, a
manifest never sets any of it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from diplo.errors import InputError
from diplo.hostfiles import problems, yaml_mapping
from diplo.paths import default_home

CONFIG_FILE = "config.yaml"


class ProxyConfig(BaseModel):
    """The reverse proxy Diplo runs when some app has `domains:`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    http_port: int = Field(80, ge=1, le=65535, description="Host port for HTTP (redirects).")
    https_port: int = Field(443, ge=1, le=65535, description="Host port for HTTPS.")
    email: str | None = Field(None, description="The ACME account's e-mail, for `tls: auto`.")
    image: str | None = Field(
        None,
        description="The proxy's image; by default caddy:2, or one Diplo builds from the "
        "host's caddy binary when no registry answers.",
    )
    name: str = Field(
        "diplo-proxy",
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$",
        description="The proxy's container (its data volume is NAME-data).",
    )


class RetentionConfig(BaseModel):
    """How long each tier of the metrics history is kept, in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    raw: int = Field(3600, ge=60, le=7 * 86400, description="Every sample (default 1 hour).")
    minute: int = Field(
        86400, ge=3600, le=90 * 86400, description="1-minute averages (default 1 day)."
    )
    ten_minutes: int = Field(
        14 * 86400, ge=86400, le=366 * 86400, description="10-minute averages (default 14 days)."
    )


class MetricsConfig(BaseModel):
    """The metrics collector of `diplo serve`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Collect metrics at all.")
    interval: float = Field(10.0, ge=1.0, le=300.0, description="Seconds between samples.")
    retention: RetentionConfig = Field(default_factory=RetentionConfig)  # type: ignore[arg-type]


class HostConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    proxy: ProxyConfig = Field(default_factory=ProxyConfig)  # type: ignore[arg-type]
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)  # type: ignore[arg-type]


def parse_config(text: str, where: str = CONFIG_FILE) -> HostConfig:
    data = yaml_mapping(text, where, "the host's config is a mapping (proxy: ...)")
    try:
        config = HostConfig.model_validate(data)
    except ValidationError as exc:
        hint = "see the README's host config"
        raise InputError(f"{where}: {problems(exc)}", hint=hint) from exc
    if config.proxy.http_port == config.proxy.https_port:
        raise InputError(f"{where}: proxy.http_port and proxy.https_port are the same port")
    return config


def load_config(home: Path | None = None) -> HostConfig:
    """`$DIPLO_HOME/config.yaml` when present; else the defaults."""
    path = (home or default_home()) / CONFIG_FILE
    if not path.is_file():
        return HostConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the host's config: {exc.strerror}") from exc
    return parse_config(text, str(path))
