"""The host's own settings, `$DIPLO_HOME/config.yaml`: what belongs to the machine and
its owner rather than to any manifest (the proxy's ports and ACME account, and later
metrics and alert channels). Like the policy, a manifest never sets any of it."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from diplo.errors import InputError
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


class HostConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    proxy: ProxyConfig = Field(default_factory=ProxyConfig)  # type: ignore[arg-type]


def parse_config(text: str, where: str = CONFIG_FILE) -> HostConfig:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{where}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{where}: the host's config is a mapping (proxy: ...)")
    try:
        config = HostConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(p) for p in first["loc"])
        raise InputError(
            f"{where}: {at}: {first['msg']}", hint="see the README's host config"
        ) from exc
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
