"""Frozen data shared by the layers: the resolved desired state of an app, what the
engine reports (observations), what the ledger remembers, and the typed actions of a plan.

Nothing here does I/O; the planner is a function from these types to these types."""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol, TypeVar

LABEL_PROJECT = "diplo.project"
LABEL_APP = "diplo.app"
LABEL_SPEC_HASH = "diplo.spec-hash"
LABEL_REPLICA = "diplo.replica"
LABEL_BUILD_HASH = "diplo.build-hash"
# The largest ID taken from a user: within SQLite's integers, and exact as a JSON number
# (a bound of 2**63 - 1 becomes a float in the OpenAPI document and admits larger values).
MAX_ID = 2**53 - 1

RestartPolicy = Literal["always", "on-failure", "unless-stopped", "no"]
PullPolicy = Literal["missing", "never"]
StrategyName = Literal["recreate", "start-first"]
TlsMode = Literal["auto", "internal", "off", "files"]
MAX_REPLICAS = 100


def container_name(project: str, app: str, replica: int = 1) -> str:
    """The settled name of an app's replica (a start-first deploy creates its new replicas
    under `next_name` and gives them this name once the old ones are gone)."""
    return f"{project}-{app}-{replica}"


def next_name(project: str, app: str, replica: int, spec_hash: str) -> str:
    """The name of a start-first replica while the old one of its number still runs."""
    return f"{container_name(project, app, replica)}-next-{spec_hash[:8]}"


@dataclass(frozen=True)
class PortSpec:
    """One published port as written: `8080`, `18080:8080`, `127.0.0.1:18080:8080/udp`.
    `host_port` None means Diplo picks one and keeps it stable."""

    container_port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    host_ip: str = ""
    host_port: int | None = None

    @property
    def key(self) -> str:
        return f"{self.container_port}/{self.protocol}"


@dataclass(frozen=True)
class Mount:
    kind: Literal["volume", "bind"]
    source: str  # volume name, or absolute host path
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class BuildSpec:
    context: str  # absolute path
    dockerfile: str  # relative to the context
    args: tuple[tuple[str, str], ...] = ()
    build_hash: str = ""  # content of the context + dockerfile + args


@dataclass(frozen=True)
class HealthSpec:
    kind: Literal["http", "tcp", "cmd", "none"] = "none"
    port: int | None = None  # container port for http/tcp
    path: str = "/"
    status: tuple[tuple[int, int], ...] = ((200, 399),)
    cmd: tuple[str, ...] = ()
    interval: float = 1.0
    timeout: float = 2.0
    retries: int = 3
    start_period: float = 3.0
    start_interval: float = 0.1


@dataclass(frozen=True)
class DesiredApp:
    """An app as the manifest wants it, fully resolved (interpolated, paths absolute,
    env files merged, units parsed). `spec_hash` covers everything that, when changed,
    needs a new container, including the content of host files the app reads."""

    name: str
    project: str
    image: str
    # file:line of the app's definition, for messages. Not part of what the app is: a line
    # added above it in its file moves it, and that must not make it a changed app (a
    # look at every app below an edit, or a resync's full look at each).
    source: str = field(default="", compare=False)
    build: BuildSpec | None = None
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[PortSpec, ...] = ()
    mounts: tuple[Mount, ...] = ()
    restart: RestartPolicy = "unless-stopped"
    depends_on: tuple[str, ...] = ()
    memory: int | None = None
    nano_cpus: int | None = None
    labels: tuple[tuple[str, str], ...] = ()
    init: bool = False
    stop_signal: str | None = None
    stop_grace_period: float = 10.0
    user: str | None = None
    working_dir: str | None = None
    pull_policy: PullPolicy = "missing"
    file_hashes: tuple[tuple[str, str], ...] = ()  # host files read (env_file, bind files)
    health: HealthSpec = HealthSpec()
    deploy_timeout: float = 120.0
    strategy: StrategyName = "recreate"
    drain: float = 30.0  # start-first: how long old replicas may finish their requests
    replicas: int = 1
    # What the proxy routes to the app: host names, the container port it sends HTTP to,
    # and TLS (`files`: `tls_cert`/`tls_key` on the host, their content in `tls_digest`).
    domains: tuple[str, ...] = ()
    http_port: int | None = None
    tls: TlsMode = "auto"
    load_balancing: Literal["round_robin", "least_conn"] = "round_robin"
    tls_cert: str = ""
    tls_key: str = ""
    tls_digest: str = ""
    prune: bool = True  # diplo serve removes the app when it leaves the manifests
    keep_images: int = 5  # images of this many recent deployments are kept for rollbacks
    alerts: str = ""  # the app's own alert rules (alertspec.AppAlerts as JSON); "": the host's
    # Values that interpolation put into fields other than env, as (field, variable,
    # value): secrets like env values, so the public spec and the record show `${VAR}`.
    masked: tuple[tuple[str, str, str], ...] = ()
    spec_hash: str = ""

    def public_spec(self) -> dict[str, Any]:
        """The spec as stored in the ledger and shown in diffs: env values are replaced by
        a short digest so that secrets never leave the process, yet changes still show.
        Plain JSON types only, so that it compares equal to what the ledger read back.
        Interpolated values elsewhere show as `${VAR}`, and their digests under
        `interpolated`."""
        spec = _jsonable(
            {
                "image": self.image,
                "build": None
                if self.build is None
                else {
                    "context": self.build.context,
                    "dockerfile": self.build.dockerfile,
                    "args": {k: redact(v) for k, v in self.build.args},
                    "hash": self.build.build_hash[:12],
                },
                "command": list(self.command) if self.command is not None else None,
                "entrypoint": list(self.entrypoint) if self.entrypoint is not None else None,
                "env": {k: redact(v) for k, v in self.env},
                "ports": [_port_text(p) for p in self.ports],
                "volumes": [_mount_text(m) for m in self.mounts],
                "restart": self.restart,
                "depends_on": list(self.depends_on),
                "memory": self.memory,
                "nano_cpus": self.nano_cpus,
                "labels": dict(self.labels),
                "init": self.init,
                "stop_signal": self.stop_signal,
                "stop_grace_period": self.stop_grace_period,
                "user": self.user,
                "working_dir": self.working_dir,
                "files": {path: digest[:12] for path, digest in self.file_hashes},
                "health": {k: v for k, v in asdict(self.health).items() if v not in ((), None)},
                "deploy": {
                    "timeout": self.deploy_timeout,
                    "strategy": self.strategy,
                    **({"drain": self.drain} if self.strategy == "start-first" else {}),
                },
                # Only when used: specs recorded before these keys existed stay equal.
                **({"replicas": self.replicas} if self.replicas != 1 else {}),
                **(self._routes() if self.domains else {}),
            }
        )
        if self.masked:
            public = {"mounts": "volumes", "file_hashes": "files"}
            _mask(spec, [(public.get(f, f), var, value) for f, var, value in self.masked])
            spec["interpolated"] = {var: redact(value) for _, var, value in self.masked}
        return spec

    def masked_fields(self) -> dict[str, Any]:
        """The real values of the fields that `masked` hides, as app_record lays them
        out: what a rollback needs back, kept only sealed."""
        data = _jsonable(asdict(self))
        return {f: data[f] for f in dict.fromkeys(f for f, _, _ in self.masked)}

    def _routes(self) -> dict[str, Any]:
        tls: Any = self.tls
        if self.tls == "files":
            tls = {"cert": self.tls_cert, "key": self.tls_key, "hash": self.tls_digest[:12]}
        routes = {"domains": list(self.domains), "http_port": self.http_port, "tls": tls}
        if self.load_balancing != "round_robin":  # shown only when chosen: old specs stay equal
            routes["load_balancing"] = self.load_balancing
        return routes

    @property
    def key(self) -> str:
        """How the proxy knows the app: `project/app`."""
        return f"{self.project}/{self.name}"


def app_record(app: DesiredApp) -> dict[str, Any]:
    """Everything needed to deploy the app again later (a rollback), as plain JSON: the
    full spec with env and build-arg values replaced by their digests, since Diplo never
    stores a secret. `restore_app` puts the values back from a current manifest."""
    data = asdict(app)
    data["env"] = [[k, redact(v)] for k, v in app.env]
    if data["build"] is not None:
        data["build"]["args"] = [[k, redact(v)] for k, v in app.build.args] if app.build else []
    data = _jsonable(data)
    _mask(data, app.masked)
    data["masked"] = [[f, var, redact(value)] for f, var, value in app.masked]
    return data


def _mask(data: dict[str, Any], masked: Iterable[tuple[str, str, str]]) -> None:
    """Each masked value, in the strings of its field in `data`, replaced by `${VAR}`;
    the longest first, so a value that holds another is replaced whole."""
    for f, var, value in sorted(masked, key=lambda m: -len(m[2])):
        if f in data and value:
            data[f] = _replace_in(data[f], value, "${" + var + "}")


def _replace_in(node: Any, old: str, new: str) -> Any:
    if isinstance(node, str):
        return node.replace(old, new)
    if isinstance(node, list):
        return [_replace_in(v, old, new) for v in node]
    if isinstance(node, dict):
        return {_replace_in(k, old, new): _replace_in(v, old, new) for k, v in node.items()}
    return node


def restore_app(
    record: Mapping[str, Any],
    values: Mapping[str, str],
    image: str,
    sealed: Mapping[str, Any] | None = None,
) -> tuple[DesiredApp | None, list[str]]:
    """The app of `record` again, running `image` (no build), with env values taken from
    `values` where their digest matches the recorded one, and the fields that hid an
    interpolated value from `sealed` (what `DesiredApp.masked_fields` gave, with
    `masked`). Returns (app, []) or (None, the env keys and `${VAR}`s whose recorded
    value is not known any more)."""
    env: list[tuple[str, str]] = []
    missing: list[str] = []
    for key, digest in record["env"]:
        value = values.get(key)
        if value is None or redact(value) != digest:
            missing.append(key)
        else:
            env.append((key, value))
    data = dict(record)
    recorded = [tuple(m) for m in record.get("masked", [])]
    kept = [tuple(m) for m in (sealed or {}).get("masked", [])]
    if [(f, var, redact(value)) for f, var, value in kept] == recorded:
        data.update((sealed or {}).get("fields", {}))
    else:
        missing += [f"${{{var}}}" for _, var, _ in recorded]
        kept = []
    if missing:
        return None, missing
    data.update(
        masked=tuple(kept),
        image=image,
        build=None,
        pull_policy="never",
        command=None if data["command"] is None else tuple(data["command"]),
        entrypoint=None if data["entrypoint"] is None else tuple(data["entrypoint"]),
        env=tuple(env),
        ports=tuple(PortSpec(**p) for p in data["ports"]),
        mounts=tuple(Mount(**m) for m in data["mounts"]),
        depends_on=tuple(data["depends_on"]),
        labels=tuple((k, v) for k, v in data["labels"]),
        domains=tuple(data.get("domains") or ()),
        file_hashes=tuple((k, v) for k, v in data["file_hashes"]),
        health=HealthSpec(
            **{
                **data["health"],
                "status": tuple(tuple(r) for r in data["health"]["status"]),
                "cmd": tuple(data["health"]["cmd"]),
            }
        ),
    )
    return DesiredApp(**data), []


@dataclass(frozen=True)
class Revision:
    """Where a deployment's desired state came from: a folder or a repository, and the
    commit when there is one."""

    source: str  # "folder:/abs/path", or a repository URL with credentials redacted
    commit: str | None = None
    subject: str | None = None
    author: str | None = None
    time: str | None = None
    dirty: bool = False


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data))


# The key of `redact`: the host's, so that the CLI and `diplo serve` agree. The
# composition roots say where it comes from (`use_digest_key`), and it is read only when a
# digest is first needed: bad input is refused before anything on the host is touched.
# Without a source, a random key: never a guessable default.
_digest_key: bytes | None = None
_key_source: Callable[[], bytes] = lambda: secrets.token_bytes(32)  # noqa: E731


def use_digest_key(source: Callable[[], bytes]) -> None:
    global _digest_key, _key_source
    _digest_key, _key_source = None, source


def set_digest_key(key: bytes) -> None:
    use_digest_key(lambda: key)


def _key() -> bytes:
    global _digest_key
    if _digest_key is None:
        _digest_key = hmac.new(_key_source(), b"diplo env digests", "sha256").digest()
    return _digest_key


def redact(value: str) -> str:
    """A stable stand-in for a possibly secret value: equal values give equal digests on
    one host, so changes show, but without the host's key a digest cannot be checked
    against guesses (HMAC-SHA256, 128 bits; a bare hash of a human-chosen secret falls to
    a dictionary in milliseconds)."""
    return "hmac:" + hmac.new(_key(), value.encode(), "sha256").hexdigest()[:32]


def spec_id(spec_hash: str) -> str:
    """A spec hash as shown to readers: keyed, so that it cannot be checked against
    guesses of a single unknown value (the rest of the spec is public); the hash itself,
    which containers carry as a label, stays what it is, so no app redeploys for this."""
    if not spec_hash:
        return ""
    return hmac.new(_key(), b"spec\0" + spec_hash.encode(), "sha256").hexdigest()[:12]


def _port_text(p: PortSpec) -> str:
    host = f"{p.host_ip}:" if p.host_ip else ""
    host += f"{p.host_port}:" if p.host_port is not None else ("auto:" if p.host_ip else "")
    return f"{host}{p.container_port}/{p.protocol}"


def _mount_text(m: Mount) -> str:
    return f"{m.source}:{m.target}{':ro' if m.read_only else ''}"


# --- what the engine reports -------------------------------------------------------------


@dataclass(frozen=True)
class PublishedPort:
    key: str  # "8080/tcp"
    host_ip: str
    host_port: int


@dataclass(frozen=True)
class ObservedContainer:
    id: str
    name: str
    project: str
    app: str
    replica: int
    spec_hash: str
    state: str  # created | running | restarting | paused | exited | dead | removing
    status: str  # human text from the engine, e.g. "Up 3 minutes"
    image: str
    image_id: str
    ports: tuple[PublishedPort, ...] = ()
    created: int = 0

    @property
    def short_id(self) -> str:
        return self.id[:12]


class _OfApp(Protocol):
    @property
    def app(self) -> str: ...


_T = TypeVar("_T", bound=_OfApp)


def by_app(items: Iterable[_T]) -> dict[str, tuple[_T, ...]]:
    """`items` grouped by app, in their order. A plan, a resync and a health tick ask for
    one app's items of every app: one pass, not one per app (quadratic at 500 apps)."""
    by: dict[str, list[_T]] = {}
    for item in items:
        by.setdefault(item.app, []).append(item)
    return {app: tuple(group) for app, group in by.items()}


@dataclass(frozen=True)
class Observed:
    containers: tuple[ObservedContainer, ...] = ()
    images: Mapping[str, str] = field(default_factory=dict)  # "repo:tag" -> image id
    networks: frozenset[str] = frozenset()
    volumes: frozenset[str] = frozenset()
    foreign_names: frozenset[str] = frozenset()  # container names Diplo does not own

    def of_app(self, app: str) -> tuple[ObservedContainer, ...]:
        return self._by_app.get(app, ())

    @cached_property
    def _by_app(self) -> dict[str, tuple[ObservedContainer, ...]]:
        return by_app(self.containers)


# --- what the ledger remembers -----------------------------------------------------------


@dataclass(frozen=True)
class AppRecord:
    app: str
    project: str
    spec_hash: str
    spec: Mapping[str, Any]
    applied_at: str


@dataclass(frozen=True)
class PortAllocation:
    app: str
    key: str  # "8080/tcp"
    host_ip: str
    host_port: int


@dataclass(frozen=True)
class BuildRecord:
    tag: str
    build_hash: str
    image_id: str


@dataclass(frozen=True)
class LedgerSnapshot:
    apps: Mapping[str, AppRecord] = field(default_factory=dict)
    ports: tuple[PortAllocation, ...] = ()
    builds: Mapping[str, BuildRecord] = field(default_factory=dict)  # by tag

    def ports_of(self, app: str) -> tuple[PortAllocation, ...]:
        return self._ports_by_app.get(app, ())

    def records(self, only: Collection[str] | None = None) -> Mapping[str, AppRecord]:
        """The apps' records; of those in `only` when given (a reconcile's few apps: no
        pass over every app)."""
        if only is None:
            return self.apps
        return {n: self.apps[n] for n in only if n in self.apps}

    @cached_property
    def _ports_by_app(self) -> dict[str, tuple[PortAllocation, ...]]:
        return by_app(self.ports)


# --- plans -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    id: int
    app: str
    project: str
    spec_hash: str
    revision: int
    image_id: str | None
    started_at: str
    finished_at: str | None
    result: str  # running | succeeded | failed | cancelled
    step: str | None
    error: str | None
    cancel_requested: int = 0
    pid: int | None = None
    source: str | None = None
    commit_sha: str | None = None
    commit_subject: str | None = None
    commit_author: str | None = None
    commit_time: str | None = None
    dirty: int = 0
    record_json: str | None = None  # the app as deployed (env digests only), for rollbacks
    rollback_of: int | None = None  # the deployment this one restored
    kept_image: str | None = None  # the tag that keeps this deployment's image for rollbacks

    def public(self) -> dict[str, Any]:
        """As the API and `diplo history` show it."""
        out = dict(self.__dict__)
        for key in ("record_json", "cancel_requested", "pid"):
            out.pop(key)
        out["dirty"] = bool(self.dirty)
        out["spec_hash"] = spec_id(self.spec_hash)
        return out


@dataclass(frozen=True)
class Pin:
    app: str
    deployment_id: int
    pinned_at: str
    reason: str


@dataclass(frozen=True)
class ProbeNote:
    """A probe to record: what the ledger is given (it adds the id and the time)."""

    app: str
    ok: bool
    health: str
    detail: str
    latency_ms: float | None
    deployment_id: int | None = None


@dataclass(frozen=True)
class ProbeRecord:
    id: int
    app: str
    at: str
    ok: int
    health: str
    detail: str
    latency_ms: float | None
    deployment_id: int | None


@dataclass(frozen=True)
class Event:
    id: int
    at: str
    app: str | None
    kind: str
    message: str
    deployment_id: int | None


@dataclass(frozen=True)
class ResolvedPort:
    key: str
    host_ip: str
    host_port: int
    new: bool = False  # chosen in this run; recorded in the ledger when applied


@dataclass(frozen=True)
class EnsureNetwork:
    project: str
    name: str


@dataclass(frozen=True)
class EnsureVolume:
    app: str
    project: str
    name: str


@dataclass(frozen=True)
class BuildImage:
    app: str
    tag: str
    build: BuildSpec


@dataclass(frozen=True)
class PullImage:
    app: str
    image: str


@dataclass(frozen=True)
class RunContainer:
    """Create and start the app's replicas `replicas` from `spec`, replacing `replaces`
    (how: the app's deploy strategy), beside `keeps` (replicas of the current release
    that stay as they are: a scale-up, or a replica that went missing). `name` is the
    first new replica's name."""

    app: str
    spec: DesiredApp
    ports: tuple[ResolvedPort, ...]
    network: str
    name: str
    replaces: tuple[ObservedContainer, ...] = ()
    image_id: str | None = None  # the image's id when it is already on the host
    replicas: tuple[int, ...] = (1,)
    keeps: tuple[ObservedContainer, ...] = ()


@dataclass(frozen=True)
class StartContainer:
    app: str
    container: ObservedContainer
    rename_to: str | None = None  # give it back its name first (a restored `-old-` one)


@dataclass(frozen=True)
class RemoveContainers:
    app: str
    containers: tuple[ObservedContainer, ...]
    reason: str
    # A scale-down: the replicas that stay. Behind a router, traffic goes to them alone
    # and the removed ones are drained first.
    keeps: tuple[ObservedContainer, ...] | None = None


@dataclass(frozen=True)
class RecordApplied:
    """The containers already match; only the ledger is behind. `reroute`: what the proxy
    serves for the app changed (domains, TLS), which needs no container change."""

    app: str
    spec: DesiredApp
    reroute: bool = False


Action = (
    EnsureNetwork
    | EnsureVolume
    | BuildImage
    | PullImage
    | RunContainer
    | StartContainer
    | RemoveContainers
    | RecordApplied
)

ChangeKind = Literal["create", "update", "start", "remove", "unchanged"]


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any
    new: Any


@dataclass(frozen=True)
class AppPlan:
    app: str
    project: str
    kind: ChangeKind
    reason: str = ""
    changes: tuple[FieldChange, ...] = ()
    actions: tuple[Action, ...] = ()
    depends_on: tuple[str, ...] = ()
    spec: DesiredApp | None = None
    current: ObservedContainer | None = None  # the container kept, when there is one
    ports: tuple[ResolvedPort, ...] = ()
    ready: int = 0  # replicas of the desired spec running now

    @property
    def replicas(self) -> str:
        """Ready over desired replicas, e.g. "2/3" ("" for an app leaving)."""
        return f"{self.ready}/{self.spec.replicas}" if self.spec is not None else ""

    @property
    def mutates(self) -> bool:
        return any(not isinstance(a, RecordApplied) for a in self.actions)


@dataclass(frozen=True)
class Plan:
    projects: tuple[str, ...] = ()
    networks: tuple[EnsureNetwork, ...] = ()
    apps: tuple[AppPlan, ...] = ()
    problems: tuple[str, ...] = ()  # found while planning: nothing may run

    @property
    def in_sync(self) -> bool:
        return not self.networks and all(a.kind == "unchanged" for a in self.apps)

    def app(self, name: str) -> AppPlan | None:
        return next((a for a in self.apps if a.app == name), None)


@dataclass(frozen=True)
class DesiredState:
    """Everything the manifest files ask for."""

    apps: tuple[DesiredApp, ...] = ()
    files: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()
    allow_empty: bool = False  # no apps is meant: the source's apps may all be pruned

    def app(self, name: str) -> DesiredApp | None:
        return self._by_name.get(name)

    @cached_property
    def _by_name(self) -> dict[str, DesiredApp]:
        # asked of every app by a health tick and a resync: one pass, not one per app
        return {a.name: a for a in reversed(self.apps)}  # the first of a name, as before


@dataclass(frozen=True)
class ContainerSpec:
    """Exactly what the runtime is asked to create; built by the executor."""

    name: str
    image: str
    labels: Mapping[str, str]
    network: str
    aliases: tuple[str, ...] = ()
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[ResolvedPort, ...] = ()
    mounts: tuple[Mount, ...] = ()
    restart: RestartPolicy = "unless-stopped"
    memory: int | None = None
    nano_cpus: int | None = None
    init: bool = False
    stop_signal: str | None = None
    stop_timeout: int = 10
    user: str | None = None
    working_dir: str | None = None


@dataclass(frozen=True)
class ContainerState:
    status: str  # created | running | exited | ...
    exit_code: int
    error: str
    restart_count: int = 0
    health: str = ""  # the engine's verdict for an image HEALTHCHECK, "" when none
    ip: str = ""  # the container's address on its network
    started_at: float = 0.0  # epoch seconds
