"""What a manifest may ask for, per kind of source: the host owner's policy.

It lives in `$DIPLO_HOME/policy.yaml` (or `diplo serve --policy FILE`) and is never read
from a manifest or a repository. Without a file, a repository may bind-mount, build and
read env files only inside its own checkout and read none of Diplo's environment; a
watched folder the same inside the folder, but it may read Diplo's environment; `diplo
apply` keeps a person's freedom over their own files. `DIPLO_*` variables, the Docker
socket and `$DIPLO_HOME` are never given to a manifest unless named explicitly."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from diplo.errors import InputError
from diplo.hostfiles import problems, yaml_mapping
from diplo.paths import default_home

SourceKind = Literal["repository", "folder", "apply"]
KINDS: tuple[SourceKind, ...] = ("repository", "folder", "apply")
POLICY_FILE = "policy.yaml"
_SYSTEM_PATHS = ("/", "/proc", "/sys", "/dev", "/etc")
_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest_bytes: int = Field(1 << 20, gt=0, description="Largest manifest, .env or env_file.")
    apps: int = Field(500, gt=0, description="Apps per source.")
    yaml_depth: int = Field(64, gt=0, le=500, description="Nesting of mappings and lists.")
    yaml_nodes: int = Field(
        200_000, gt=0, description="Values in a file once aliases (*name) are expanded."
    )
    interpolation_depth: int = Field(16, gt=0, le=200, description="Nested ${A:-${B}}.")
    build_context_files: int = Field(100_000, gt=0, description="Files hashed per context.")
    build_context_bytes: int = Field(4 << 30, gt=0, description="Bytes hashed per context.")
    checkout_files: int = Field(200_000, gt=0, description="Files in a repository's checkout.")
    checkout_bytes: int = Field(
        2 << 30, gt=0, description="Bytes written for a repository's checkout (before any check)."
    )


class SourcePolicy(BaseModel):
    """What manifests from one kind of source may ask for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bind_mounts: list[str] = Field(
        description="Host paths that may be bind-mounted, and what is under them; a "
        "relative path is relative to the source's root (`.`: the checkout or folder)."
    )
    confine_files: bool = Field(
        description="Build contexts, Dockerfiles, env_files and .env stay inside the "
        "source's root (after symlinks)."
    )
    env: list[str] | Literal["*"] = Field(
        description="Diplo's environment variables a manifest may read with ${VAR} or a "
        "bare `env: [KEY]`; `*` for all. DIPLO_* never."
    )
    images: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Images an app may run, as patterns (`*` any text): "
        "`registry.example.com/team/*`, `busybox:*`. Matched against the reference as "
        "written and in full (docker.io/library/busybox:latest).",
    )
    builds: bool = Field(True, description="Apps may be built from a `build:` context.")
    host_ports: list[str] = Field(
        default_factory=lambda: ["1-65535"],
        description='Host ports an app may publish by number, as "8000-8999" or "443"; '
        "ports Diplo picks itself are always allowed.",
    )
    limits: Limits = Field(default_factory=Limits)  # type: ignore[arg-type]

    @field_validator("host_ports")
    @classmethod
    def _ranges(cls, value: list[str]) -> list[str]:
        for text in value:
            port_range(text)
        return value


def port_range(text: str) -> tuple[int, int]:
    """ "8000-8999" or "443" as (low, high); ValueError when it is neither."""
    low, _, high = str(text).partition("-")
    try:
        lo, hi = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"{text!r} is not a port or a range of ports like 8000-8999") from None
    if not 1 <= lo <= hi <= 65535:
        raise ValueError(f"{text!r}: ports go from 1 to 65535, the low one first")
    return lo, hi


def _defaults(kind: SourceKind) -> dict[str, object]:
    if kind == "repository":
        return {"bind_mounts": ["."], "confine_files": True, "env": []}
    if kind == "folder":
        return {"bind_mounts": ["."], "confine_files": True, "env": "*"}
    return {"bind_mounts": ["/"], "confine_files": False, "env": "*"}


class Policy(BaseModel):
    """policy.yaml: one section per kind of source; a section may give some keys only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: SourcePolicy = Field(
        default_factory=lambda: SourcePolicy.model_validate(_defaults("repository"))
    )
    folder: SourcePolicy = Field(
        default_factory=lambda: SourcePolicy.model_validate(_defaults("folder"))
    )
    apply: SourcePolicy = Field(
        default_factory=lambda: SourcePolicy.model_validate(_defaults("apply"))
    )

    def of(self, kind: SourceKind) -> SourcePolicy:
        section: SourcePolicy = getattr(self, kind)
        return section


def parse_policy(text: str, where: str = POLICY_FILE) -> Policy:
    """A policy from YAML text; each section's missing keys take that kind's defaults."""
    data = yaml_mapping(text, where, "a policy is a mapping of repository/folder/apply")
    try:
        sections = {}
        for key, value in data.items():
            if key in KINDS and isinstance(value, dict):
                value = {**_defaults(key), **value}
            sections[key] = value
        return Policy.model_validate(sections)
    except ValidationError as exc:
        raise InputError(f"{where}: invalid policy: {problems(exc)}") from exc


def load_policy(path: str | Path | None = None, home: Path | None = None) -> Policy:
    """The policy in `path`; else `$DIPLO_HOME/policy.yaml` when present; else defaults."""
    if path is None:
        candidate = (home or default_home()) / POLICY_FILE
        if not candidate.is_file():
            return Policy()
        path = candidate
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the policy: {exc.strerror}") from exc
    return parse_policy(text, str(path))


def _real(path: str | Path) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def within(path: str, root: str) -> bool:
    """Whether `path` is `root` or under it (both absolute and real)."""
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


@dataclass(frozen=True)
class Rules:
    """A source policy made concrete for one source: real paths, the sensitive ones."""

    kind: SourceKind
    root: str | None  # the source's root (real path); None for `diplo apply`
    bind_roots: tuple[str, ...]
    guarded: tuple[str, ...]  # given only when named explicitly in bind_mounts
    confine_files: bool
    env: frozenset[str] | None  # None: all of Diplo's environment (but DIPLO_*)
    limits: Limits
    images: tuple[str, ...] = ("*",)
    builds: bool = True
    host_ports: tuple[tuple[int, int], ...] = ((1, 65535),)

    def image_refusal(self, image: str) -> str | None:
        """Why running `image` is refused, or None."""
        names = {image, _qualified(image)}
        if any(fnmatch.fnmatchcase(n, p) for n in names for p in self.images):
            return None
        return f"the policy lets a {self.kind} source run only images {list(self.images)}"

    def port_refusal(self, port: int) -> str | None:
        if any(lo <= port <= hi for lo, hi in self.host_ports):
            return None
        shown = [f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in self.host_ports]
        return f"the policy lets a {self.kind} source publish only host ports {shown}"

    def bind_refusal(self, host: str) -> str | None:
        """Why a bind mount of the real path `host` is refused, or None."""
        named = [r for r in self.bind_roots if within(host, r)]
        if not named:
            return f"it is outside the paths the policy lets a {self.kind} source bind-mount"
        for guard in self.guarded:
            # A guarded path, or a folder that holds one, is given only when the owner
            # named it (or a path under it) in bind_mounts.
            if guard == "/":
                explicit = host != "/" or "/" in self.bind_roots
            elif within(host, guard):
                explicit = any(within(r, guard) for r in named)
            elif within(guard, host):
                explicit = guard in self.bind_roots
            else:
                continue
            if not explicit:
                return f"it exposes {guard}, which this policy gives no {self.kind} source"
        return None

    def file_refusal(self, path: str) -> str | None:
        """Why a file or folder the loader reads (real path) is refused, or None."""
        if self.confine_files and self.root is not None and not within(path, self.root):
            return f"it is outside the {self.kind} source's own files"
        return None

    def may_read(self, name: str) -> bool:
        if name.startswith("DIPLO_"):
            return False
        return self.env is None or name in self.env


def docker_sockets(environ: dict[str, str] | None = None) -> list[str]:
    environ = dict(os.environ) if environ is None else environ
    found = list(_SOCKETS)
    docker_host = environ.get("DOCKER_HOST", "")
    if docker_host.startswith("unix://"):
        found.append(docker_host.removeprefix("unix://"))
    return found


def rules(
    policy: Policy,
    kind: SourceKind,
    root: str | Path | None,
    *,
    home: Path | None = None,
    environ: dict[str, str] | None = None,
) -> Rules:
    section = policy.of(kind)
    real_root = _real(root) if root is not None else None
    roots = []
    for entry in section.bind_mounts:
        if os.path.isabs(os.path.expanduser(entry)):
            roots.append(_real(entry))
        elif real_root is not None:
            roots.append(_real(os.path.join(real_root, entry)))
    sensitive = [*docker_sockets(environ), str(home or default_home())]
    if kind != "apply":  # `diplo apply` keeps a person's freedom over their own host
        sensitive += _SYSTEM_PATHS
    guarded = {_real(p) for p in sensitive} | {os.path.normpath(p) for p in sensitive}
    return Rules(
        kind=kind,
        root=real_root,
        bind_roots=tuple(dict.fromkeys(roots)),
        guarded=tuple(sorted(guarded)),
        confine_files=section.confine_files,
        env=None if section.env == "*" else frozenset(section.env),
        limits=section.limits,
        images=tuple(section.images),
        builds=section.builds,
        host_ports=tuple(port_range(t) for t in section.host_ports),
    )


def _qualified(image: str) -> str:
    """`busybox` as docker.io/library/busybox:latest; a reference with a registry (a
    first part with a dot, a colon or `localhost`) as written, with :latest if untagged."""
    name, at, digest = image.partition("@")
    first, slash, _ = name.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        name = "docker.io/" + (name if slash else "library/" + name)
    if not at and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name + at + digest
