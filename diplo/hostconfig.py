"""The host's own settings, `$DIPLO_HOME/config.yaml`: what belongs to the machine and
its owner rather than to any manifest (the proxy's ports and ACME account, the metrics
collector's interval and retention, the alert rules' defaults and channels). Like the policy, a
manifest never sets any of it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from diplo.alertspec import HostRules
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


class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str | None = Field(
        None,
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$",
        description="How GET /alerts names the channel (default: its type, numbered).",
    )


class _UrlChannel(_Channel):
    """A URL that may hold a token (Slack's and Discord's do): written here, or read from
    a file or an environment variable; shown masked everywhere."""

    url: str | None = None
    url_file: str | None = None
    url_env: str | None = None

    @model_validator(mode="after")
    def _one_url(self) -> _UrlChannel:
        given = [k for k in ("url", "url_file", "url_env") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of url, url_file, url_env")
        return self


class WebhookChannel(_UrlChannel):
    """A JSON POST per notification, signed (X-Diplo-Signature: sha256=HMAC of the body)
    when a secret is given."""

    type: Literal["webhook"]
    secret_file: str | None = None
    secret_env: str | None = None


class SlackChannel(_UrlChannel):
    type: Literal["slack"]


class DiscordChannel(_UrlChannel):
    type: Literal["discord"]


class EmailChannel(_Channel):
    type: Literal["email"]
    host: str
    port: int | None = Field(None, ge=1, le=65535, description="Default 587, 465 with ssl.")
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)


class AppriseChannel(_Channel):
    """Any service apprise knows (https://github.com/caronc/apprise/wiki)."""

    type: Literal["apprise"]
    urls: list[str] = Field(default_factory=list)
    urls_file: str | None = Field(None, description="One apprise URL a line.")
    urls_env: str | None = Field(None, description="Apprise URLs, space-separated.")

    @model_validator(mode="after")
    def _some_url(self) -> AppriseChannel:
        if not (self.urls or self.urls_file or self.urls_env):
            raise ValueError("give urls, urls_file or urls_env")
        return self


Channel = Annotated[
    WebhookChannel | SlackChannel | DiscordChannel | EmailChannel | AppriseChannel,
    Field(discriminator="type"),
]


class AlertsConfig(BaseModel):
    """The alerts of `diplo serve`: rules (every app's defaults, overridden by an app's
    `alerts:`) and where notifications go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    rules: HostRules = Field(default_factory=HostRules)
    channels: list[Channel] = Field(default_factory=list)
    max_per_hour: int = Field(
        6, ge=1, le=3600, description="Notifications per alert per hour (a flapping alert)."
    )
    retries: int = Field(5, ge=0, le=20, description="Retries of a failing delivery.")
    history: int = Field(500, ge=10, le=100_000, description="Resolved alerts kept.")
    evaluate_every: float = Field(
        5.0, ge=0.5, le=300, description="Seconds between checks of health and sources."
    )

    def channel_names(self) -> list[str]:
        seen: dict[str, int] = {}
        names = []
        for ch in self.channels:
            if ch.name:
                names.append(ch.name)
                continue
            seen[ch.type] = seen.get(ch.type, 0) + 1
            names.append(ch.type if seen[ch.type] == 1 else f"{ch.type}-{seen[ch.type]}")
        return names


class HostConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    proxy: ProxyConfig = Field(default_factory=ProxyConfig)  # type: ignore[arg-type]
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)  # type: ignore[arg-type]
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)  # type: ignore[arg-type]


def parse_config(text: str, where: str = CONFIG_FILE) -> HostConfig:
    data = yaml_mapping(text, where, "the host's config is a mapping (proxy: ...)")
    try:
        config = HostConfig.model_validate(data)
    except ValidationError as exc:
        hint = "see the README's host config"
        raise InputError(f"{where}: {problems(exc)}", hint=hint) from exc
    if config.proxy.http_port == config.proxy.https_port:
        raise InputError(f"{where}: proxy.http_port and proxy.https_port are the same port")
    names = config.alerts.channel_names()
    if len(set(names)) != len(names):
        raise InputError(f"{where}: alerts.channels: two channels are named alike: {names}")
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
