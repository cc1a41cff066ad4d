"""The manifest's shape as pydantic models: what a user may write in `diplo.yaml`.

Keys follow docker compose where compose has one. Short forms (`build: ./web`,
`command: "httpd -f"`, `env: [K=V]`) are normalised before validation so that an
error names one problem, not one per union member."""

from __future__ import annotations

import re
import shlex
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from diplo.alertspec import AppAlerts
from diplo.model import MAX_REPLICAS, HealthSpec
from diplo.units import parse_duration, parse_size

APP_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
PORT = re.compile(
    r"^(?:(?:(?P<ip>\[[0-9a-fA-F:]+\]|[0-9.]+):)?(?P<host>\d{1,5})?:)?(?P<container>\d{1,5})(?:/(?P<proto>tcp|udp))?$"
)


def _split_command(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split command: {exc}") from exc
    return value


def _env_list_to_dict(value: Any) -> Any:
    if isinstance(value, list):
        out: dict[str, Any] = {}
        for item in value:
            if not isinstance(item, str):
                raise ValueError("env list items must be strings like KEY=value")
            key, sep, val = item.partition("=")
            out[key] = val if sep else None
        return out
    return value


def _scalar_to_str(value: Any) -> Any:
    # YAML reads `env: {DEBUG: true, WORKERS: 4}` as bool/int; containers get strings.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _to_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _restart(value: Any) -> Any:
    return "no" if value is False else value  # YAML 1.1 reads a bare `no` as false


def _duration(value: Any) -> float:
    return parse_duration(value)


def _size(value: Any) -> int:
    return parse_size(value)


Duration = Annotated[
    float, BeforeValidator(_duration, json_schema_input_type=str | float), Field(ge=0)
]


def _human(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms"


def _within(low: float, high: float) -> AfterValidator:
    """Bounds on a duration: an unbounded wait holds a worker and the app's lock (a stop
    grace of 10000h), and a zero interval makes the health gate a busy loop."""

    def check(value: float) -> float:
        if not low <= value <= high:
            raise ValueError(f"must be between {_human(low)} and {_human(high)}")
        return value

    return AfterValidator(check)


Size = Annotated[int, BeforeValidator(_size, json_schema_input_type=str | int), Field(gt=0)]
Command = Annotated[
    list[str] | None,
    BeforeValidator(_split_command, json_schema_input_type=str | list[str] | None),
]
EnvValue = Annotated[
    str | None,
    BeforeValidator(_scalar_to_str, json_schema_input_type=str | int | float | bool | None),
]
LabelValue = Annotated[
    str, BeforeValidator(_scalar_to_str, json_schema_input_type=str | int | float | bool)
]


def _port(text: str) -> str:
    m = PORT.match(text.strip())
    if not m:
        raise ValueError(
            f'{text!r} is not a port; use "8080", "18080:8080" or '
            '"127.0.0.1:18080:8080" (optionally /udp)'
        )
    for part in ("host", "container"):
        if m.group(part) is not None and not 0 < int(m.group(part)) < 65536:
            raise ValueError(f"{text!r}: port numbers run from 1 to 65535")
    return text.strip()


PortText = Annotated[
    str,
    BeforeValidator(_scalar_to_str, json_schema_input_type=str | int),
    AfterValidator(_port),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuildConfig(_Strict):
    """Build an image from a local context, tagged with the app's `image`."""

    context: str = Field(description="Folder sent to the builder, relative to the manifest.")
    dockerfile: str = Field("Dockerfile", description="Dockerfile path, relative to context.")
    args: dict[str, LabelValue] = Field(default_factory=dict, description="Build arguments.")


def _build(value: Any) -> Any:
    return {"context": value} if isinstance(value, str) else value


_STATUS = re.compile(r"^\d{3}(-\d{3})?(,\d{3}(-\d{3})?)*$")


class HttpProbe(_Strict):
    path: str = Field("/", description="Path to GET.")
    port: int = Field(ge=1, le=65535, description="Container port.")
    status: Annotated[str, BeforeValidator(_scalar_to_str, json_schema_input_type=str | int)] = (
        Field("200-399", description='Accepted status codes: "200", "200-399", "200,204".')
    )

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("the path starts with /")
        return value

    @field_validator("status")
    @classmethod
    def _status(cls, value: str) -> str:
        if not _STATUS.match(value.replace(" ", "")):
            raise ValueError(f"{value!r} is not a status list; use e.g. 200, 200-399 or 200,204")
        return value.replace(" ", "")


class TcpProbe(_Strict):
    port: int = Field(ge=1, le=65535, description="Container port that must accept.")


class HealthConfig(_Strict):
    """How Diplo decides the app is healthy. Without http/tcp/cmd, the image's own
    HEALTHCHECK is used, or else the app is healthy once up for start_period."""

    http: HttpProbe | None = None
    tcp: TcpProbe | None = None
    cmd: Command = Field(None, description="Run in the container; exit 0 means healthy.")
    interval: Annotated[Duration, _within(0.1, 3600)] = Field(
        1.0, description="Time between probes (100ms to 1h)."
    )
    start_interval: Annotated[Duration, _within(0.01, 3600)] = Field(
        0.1,
        description="Time between probes until the first success (a fast first gate; 10ms to 1h).",
    )
    timeout: Annotated[Duration, _within(0.01, 600)] = Field(
        2.0, description="A probe slower than this failed (10ms to 10m)."
    )
    retries: int = Field(3, ge=1, description="Consecutive failures before unhealthy.")
    start_period: Annotated[Duration, _within(0, 3600)] = Field(
        3.0, description="Failures while starting don't count (up to 1h)."
    )

    @model_validator(mode="after")
    def _one_probe(self) -> HealthConfig:
        given = [k for k in ("http", "tcp", "cmd") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one probe, not {' and '.join(given)}")
        return self


class DeployConfig(_Strict):
    timeout: Annotated[Duration, _within(1, 86400)] = Field(
        120.0, description="Deadline for build, pull, start and health of a deploy (1s to 24h)."
    )
    strategy: Literal["recreate", "start-first"] | None = Field(
        None,
        description="recreate: stop the old replicas, then start the new ones. start-first: "
        "start the new replicas beside the old ones, switch the proxy to them once healthy, "
        "drain and stop the old ones. Default: start-first for an app with domains (and no "
        "fixed host port), recreate otherwise.",
    )
    drain: Annotated[Duration, _within(0, 3600)] = Field(
        30.0,
        description="start-first: how long old replicas may finish their requests once the "
        "proxy stopped sending them new ones (up to 1h).",
    )
    keep_images: int = Field(
        5,
        ge=1,
        le=100,
        description="Images of this many recent deployments are kept for rollbacks.",
    )


# A host name as a proxy routes it: DNS labels, lower-cased; `*` only as the whole first
# label. No scheme, port or path.
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _domain(value: str) -> str:
    host = value.strip().lower().rstrip(".")
    if "://" in host or "/" in host or ":" in host:
        raise ValueError(
            f"{value!r} is not a host name: write the name alone, without scheme, port or path"
        )
    labels = host.split(".")
    if not host or len(host) > 253:
        raise ValueError(f"{value!r} is not a host name")
    for i, label in enumerate(labels):
        if label == "*" and i == 0 and len(labels) > 1:
            continue
        if "*" in label:
            raise ValueError(
                f"{value!r}: a wildcard is allowed only as the whole first label, "
                "e.g. *.example.com"
            )
        if not _LABEL.match(label):
            raise ValueError(
                f"{value!r} is not a host name: each label is letters, digits and '-', "
                "1 to 63 characters, not starting or ending with '-'"
            )
    return host


Domain = Annotated[str, AfterValidator(_domain)]


class TlsFiles(_Strict):
    """A certificate of your own, in PEM files on the host."""

    cert: str = Field(description="Certificate chain file, relative to the manifest.")
    key: str = Field(description="Private key file, relative to the manifest.")


def _tls(value: Any) -> Any:
    if value is False:  # YAML 1.1 reads a bare `off` as false
        return "off"
    if isinstance(value, str) and value not in ("auto", "internal", "off"):
        raise ValueError(f"{value!r} is not auto, internal, off or {{cert: FILE, key: FILE}}")
    return value


class Resources(_Strict):
    memory: Size | None = Field(None, description="Memory limit, e.g. 256m or 1g.")
    cpus: float | None = Field(None, gt=0, le=1024, description="CPU limit, e.g. 0.5.")


class AppConfig(_Strict):
    """One app: one container (per replica) kept in the state described here."""

    image: str | None = Field(
        None, description="Image to run; with `build`, the tag given to the built image."
    )
    build: Annotated[
        BuildConfig | None, BeforeValidator(_build, json_schema_input_type=str | BuildConfig | None)
    ] = Field(None, description="Build context folder, or {context, dockerfile, args}.")
    command: Command = Field(None, description="Overrides the image's CMD.")
    entrypoint: Command = Field(None, description="Overrides the image's ENTRYPOINT.")
    ports: list[PortText] = Field(
        default_factory=list,
        description='"8080" (Diplo picks a stable host port), "18080:8080", '
        '"127.0.0.1:18080:8080", optionally with /udp.',
    )
    env: Annotated[
        dict[str, EnvValue],
        BeforeValidator(_env_list_to_dict, json_schema_input_type=dict[str, EnvValue] | list[str]),
    ] = Field(default_factory=dict, description="Environment; ${VAR} is interpolated.")
    env_file: Annotated[
        list[str], BeforeValidator(_to_list, json_schema_input_type=str | list[str])
    ] = Field(default_factory=list, description="KEY=value files, relative to the manifest.")
    volumes: list[str] = Field(
        default_factory=list,
        description='"name:/path" (a named volume) or "./dir:/path[:ro]" (a bind mount).',
    )
    restart: Annotated[
        Literal["always", "on-failure", "unless-stopped", "no"],
        BeforeValidator(_restart, json_schema_input_type=str | bool),
    ] = Field("unless-stopped", description="Docker restart policy.")
    depends_on: list[str] = Field(default_factory=list, description="Apps started before this.")
    resources: Resources = Field(default_factory=Resources)  # type: ignore[arg-type]
    labels: dict[str, LabelValue] = Field(default_factory=dict, description="Container labels.")
    init: bool = Field(False, description="Run an init process (forwards signals, reaps).")
    stop_signal: str | None = Field(None, description="Signal sent to stop, e.g. SIGQUIT.")
    stop_grace_period: Annotated[Duration, _within(0, 600)] = Field(
        10.0, description="Wait before SIGKILL, e.g. 10s (up to 10m)."
    )
    user: str | None = None
    working_dir: str | None = None
    pull_policy: Literal["missing", "never"] = Field(
        "missing", description="missing: pull when the image is not on the host."
    )
    health: HealthConfig | None = Field(None, description="Health check gating deploys.")
    deploy: DeployConfig = Field(default_factory=DeployConfig)  # type: ignore[arg-type]
    replicas: int = Field(
        1,
        ge=1,
        le=MAX_REPLICAS,
        description="Containers of the app (project-app-1..N); changing it adds or removes "
        "replicas without touching the others.",
    )
    domains: list[Domain] = Field(
        default_factory=list,
        description="Host names the proxy serves the app on, e.g. shop.example.com or "
        "*.example.com.",
    )
    http_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Container port the proxy sends HTTP to; default: the app's only port.",
    )
    load_balancing: Literal["round_robin", "least_conn"] = Field(
        "round_robin",
        description="How the proxy spreads requests over the replicas: in turn, or to the "
        "replica with the fewest requests in flight.",
    )
    tls: Annotated[
        Literal["auto", "internal", "off"] | TlsFiles,
        BeforeValidator(_tls, json_schema_input_type=str | bool | TlsFiles),
    ] = Field(
        "auto",
        description="auto: a public certificate (ACME) for public names, the proxy's own CA "
        "otherwise; internal: the proxy's own CA; off: plain HTTP; {cert, key}: your files.",
    )
    alerts: AppAlerts | None = Field(
        None,
        description="The app's own alert thresholds over the host's, e.g. {memory: {above: "
        "80%, for: 1m}, cpu: false}; changing them redeploys nothing.",
    )

    @field_validator("env")
    @classmethod
    def _env_keys(cls, env: dict[str, str | None]) -> dict[str, str | None]:
        for key in env:
            if not ENV_KEY.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return env

    @field_validator("depends_on")
    @classmethod
    def _deps_unique(cls, deps: list[str]) -> list[str]:
        if len(set(deps)) != len(deps):
            raise ValueError("depends_on lists an app twice")
        return deps


class ManifestConfig(_Strict):
    """A diplo.yaml file."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Diplo manifest")

    project: str | None = Field(
        None, description="Grouping label; default: the manifest's folder name."
    )
    apps: dict[str, AppConfig] = Field(default_factory=dict, description="Apps by name.")
    prune: bool = Field(
        True, description="diplo serve: remove these apps when they leave the folder."
    )
    allow_empty: bool = Field(
        False,
        description="A source whose manifests have no apps may prune every app it deployed "
        "(otherwise such a load, e.g. a truncated file or a bad checkout, is refused).",
    )

    @field_validator("project")
    @classmethod
    def _project(cls, value: str | None) -> str | None:
        if value is not None and not PROJECT_NAME.match(value):
            raise ValueError(
                "a project is lowercase letters, digits, '-' and '_', starting with a "
                "letter or digit, at most 63 characters"
            )
        return value


def json_schema() -> dict[str, Any]:
    schema = ManifestConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://diplo.dev/schemas/diplo.schema.json"
    schema.setdefault("properties", {})["apps"]["propertyNames"] = {"pattern": APP_NAME.pattern}
    schema["patternProperties"] = {"^x-": {}}
    return schema


def health_spec(cfg: HealthConfig | None) -> HealthSpec:
    """The health check as Diplo runs it (status ranges parsed, durations in seconds)."""
    if cfg is None:
        return HealthSpec()
    timing = HealthSpec(
        interval=cfg.interval,
        timeout=cfg.timeout,
        retries=cfg.retries,
        start_period=cfg.start_period,
        start_interval=cfg.start_interval,
    )
    if cfg.http is not None:
        ranges = []
        for part in cfg.http.status.split(","):
            lo, _, hi = part.partition("-")
            ranges.append((int(lo), int(hi or lo)))
        return replace(
            timing, kind="http", port=cfg.http.port, path=cfg.http.path, status=tuple(ranges)
        )
    if cfg.tcp is not None:
        return replace(timing, kind="tcp", port=cfg.tcp.port)
    if cfg.cmd is not None:
        return replace(timing, kind="cmd", cmd=tuple(cfg.cmd))
    return timing
