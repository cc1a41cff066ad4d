"""From manifest files to a resolved, validated DesiredState, or a ManifestError that
lists every problem of every file with file:line:col."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from diplo.errors import ManifestError, ManifestIssue
from diplo.manifest import reads
from diplo.manifest.envfile import parse_env_text
from diplo.manifest.files import find_manifest_files
from diplo.manifest.hashing import (
    ContextTooLarge,
    context_digest,
    file_digest,
    spec_digest,
    with_spec_hash,
)
from diplo.manifest.interpolate import InterpolationError, Lookup, interpolate
from diplo.manifest.routing import check_domain_claims, resolve_routing
from diplo.manifest.spec import (
    APP_NAME,
    PORT,
    AppConfig,
    BuildConfig,
    DeployConfig,
    HealthConfig,
    HttpProbe,
    ManifestConfig,
    Resources,
    TcpProbe,
    TlsFiles,
    health_spec,
)
from diplo.manifest.yamlpos import Located, YamlTooBig, load_located
from diplo.manifest.yamlpos import Path as DataPath
from diplo.model import BuildSpec, DesiredApp, DesiredState, Mount, PortSpec
from diplo.policy import Policy, Rules, SourceKind, load_policy, rules

_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_POLICY_HINT = (
    "the host's owner decides this in $DIPLO_HOME/policy.yaml (diplo policy check --show)"
)


@dataclass
class _File:
    path: Path
    located: Located
    rules: Rules
    project: str = ""
    prune: bool = True
    allow_empty: bool = False
    apps: dict[str, AppConfig] = field(default_factory=dict)  # the apps that validated
    names: list[str] = field(default_factory=list)  # every app name written
    issues: list[ManifestIssue] = field(default_factory=list)
    # Values that interpolation put at a path: (variable, its value). They may be secrets,
    # so no message about that path quotes them.
    interpolated: dict[DataPath, list[tuple[str, str]]] = field(default_factory=dict)

    def issue(
        self, path: DataPath, message: str, hint: str | None = None, *, key: bool = False
    ) -> None:
        pos = self.located.where(path, prefer_key=key)
        # One problem per place: a value that failed interpolation is not judged again.
        if any((i.line, i.col) == (pos.line, pos.col) for i in self.issues):
            return
        message, hint = self.scrub(path, message), hint and self.scrub(path, hint)
        self.issues.append(ManifestIssue(str(self.path), pos.line, pos.col, message, hint))

    def variables_at(self, path: DataPath) -> list[tuple[str, str]]:
        """The substitutions made at `path`, inside it, or in a value that holds it."""
        return [
            used
            for where, subs in self.interpolated.items()
            if where[: len(path)] == path or path[: len(where)] == where
            for used in subs
        ]

    def scrub(self, path: DataPath, text: str) -> str:
        for name, value in sorted(self.variables_at(path), key=lambda s: -len(s[1])):
            if len(value) >= 3:  # shorter ones are no secret, and would garble the text
                shown = f"the value of ${{{name}}}"
                text = text.replace(repr(value), shown).replace(value, shown)
        return text


def load_manifests(
    paths: Iterable[str],
    environ: Mapping[str, str] | None = None,
    *,
    policy: Policy | None = None,
    kind: SourceKind = "apply",
    root: str | Path | None = None,
    home: Path | None = None,
) -> DesiredState:
    """The desired state of the manifests in `paths`, as the host's policy for this kind of
    source allows (`root`: the source's checkout or folder; without `policy`,
    $DIPLO_HOME/policy.yaml or the defaults). Raises ManifestError, with file:line:col,
    for anything invalid or refused."""
    environ = dict(os.environ if environ is None else environ)
    if policy is None:
        policy = load_policy(home=home)
    allowed = rules(policy, kind, root, home=home, environ=environ)
    budget = [allowed.limits.apps]
    files = [_parse(p, environ, allowed, budget) for p in find_manifest_files(paths)]
    apps: list[DesiredApp] = []
    owners: dict[str, tuple[_File, str]] = {}
    for f in files:
        for name in f.names:
            if name in owners:
                first = owners[name][0]
                f.issue(
                    ("apps", name),
                    f"app {name!r} is already defined in {first.path}",
                    "app names are unique on a host; rename one of them",
                    key=True,
                )
            else:
                owners[name] = (f, name)
    for f in files:
        for name, app in f.apps.items():
            if owners.get(name, (None,))[0] is not f:
                continue
            for i, dep in enumerate(app.depends_on):
                if dep not in owners:
                    close = difflib.get_close_matches(dep, list(owners), n=1)
                    f.issue(
                        ("apps", name, "depends_on", i),
                        f"depends_on names {dep!r}, which no manifest defines",
                        f"did you mean {close[0]!r}?" if close else "define that app or remove it",
                    )
                elif dep == name:
                    f.issue(("apps", name, "depends_on", i), "an app cannot depend on itself")
            resolved = _resolve_app(f, name, app, environ)
            if resolved is not None:
                apps.append(resolved)
    _check_cycles(files, owners)
    check_domain_claims(
        (domain, name, ("apps", name, "domains", i), f, f"{f.path}:{_line(f, name, i)}")
        for f in files
        for name, app in f.apps.items()
        if owners.get(name, (None,))[0] is f
        for i, domain in enumerate(app.domains)
    )
    issues = [i for f in files for i in f.issues]
    if issues:
        raise ManifestError(issues)
    return DesiredState(
        apps=tuple(sorted(apps, key=lambda a: a.name)),
        files=tuple(str(f.path) for f in files),
        projects=tuple(sorted({f.project for f in files})),
        allow_empty=any(f.allow_empty for f in files),
    )


def _line(f: _File, app: str, i: int) -> int:
    return f.located.where(("apps", app, "domains", i)).line


def _parse(path: Path, environ: dict[str, str], allowed: Rules, budget: list[int]) -> _File:
    f = _File(path, Located(None), allowed)
    limits = allowed.limits
    refused = allowed.file_refusal(os.path.realpath(path))
    if refused:
        f.issues.append(ManifestIssue(str(path), 1, 1, f"not read: {refused}", _POLICY_HINT))
        return f
    try:
        if path.stat().st_size > limits.manifest_bytes:
            message = f"the file is larger than {limits.manifest_bytes} bytes"
            f.issues.append(ManifestIssue(str(path), 1, 1, message, "split it, or trim it"))
            return f
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        f.issues.append(ManifestIssue(str(path), 1, 1, f"cannot read the file: {exc}"))
        return f
    try:
        f.located = load_located(text, limits.yaml_depth, limits.yaml_nodes)
    except YamlTooBig as exc:
        hint = "write the values out, or use fewer aliases (*name)"
        f.issues.append(ManifestIssue(str(path), exc.pos.line, exc.pos.col, exc.message, hint))
        return f
    except (RecursionError, MemoryError):  # a last guard; the limits above come first
        f.issues.append(ManifestIssue(str(path), 1, 1, "the document is too large or too deep"))
        return f
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        msg = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
        f.issues.append(ManifestIssue(str(path), line, col, msg, "check indentation and quoting"))
        return f
    for pos, problem in f.located.problems:
        f.issues.append(ManifestIssue(str(path), pos.line, pos.col, problem))
    data = f.located.data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        f.issue((), "a manifest is a mapping with `apps:` (and optionally `project:`)")
        return f
    data = {k: v for k, v in data.items() if not str(k).startswith("x-")}
    lookup = _env_lookup(path.parent, environ, f)
    data = _interpolate(data, (), lookup, f)
    # Each app is validated on its own so that one broken app hides no other's errors.
    raw_apps = data.get("apps")
    top = {**data, "apps": {}} if isinstance(raw_apps, dict) else data
    project = None
    try:
        top_config = ManifestConfig.model_validate(top)
        project, f.prune = top_config.project, top_config.prune
        f.allow_empty = top_config.allow_empty
    except ValidationError as exc:
        for err in exc.errors():
            _report(f, err)
    f.project = project or _default_project(path)
    if not isinstance(raw_apps, dict):
        return f
    for name, raw in raw_apps.items():
        budget[0] -= 1
        if budget[0] < 0:
            f.issue(
                ("apps", name),
                f"more than {limits.apps} apps in this source",
                "split them over several sources, or ask the host's owner to raise "
                "limits.apps in policy.yaml",
                key=True,
            )
            break
        f.names.append(name)
        if not APP_NAME.match(name):
            f.issue(
                ("apps", name),
                f"app name {name!r} is not a DNS label",
                "use lowercase letters, digits and '-', at most 63 characters, "
                "starting and ending with a letter or digit",
                key=True,
            )
        try:
            f.apps[name] = AppConfig.model_validate({} if raw is None else raw)
        except ValidationError as exc:
            for err in exc.errors():
                _report(f, {**err, "loc": ("apps", name, *err["loc"])})
    return f


def _default_project(path: Path) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", path.resolve().parent.name.lower()).strip("-_")
    return name or "default"


def _env_lookup(folder: Path, environ: dict[str, str], f: _File) -> Lookup:
    dotenv: dict[str, str] = {}
    env_path = folder / ".env"
    reads.note(env_path)  # there or not: one that appears changes the load
    if env_path.is_file():
        refused = f.rules.file_refusal(os.path.realpath(env_path))
        if refused:
            f.issues.append(ManifestIssue(str(env_path), 1, 1, f"not read: {refused}"))
        elif env_path.stat().st_size > f.rules.limits.manifest_bytes:
            message = f"larger than {f.rules.limits.manifest_bytes} bytes"
            f.issues.append(ManifestIssue(str(env_path), 1, 1, message))
        else:
            text = env_path.read_text(encoding="utf-8", errors="replace")
            dotenv, problems = parse_env_text(text)
            for line, problem in problems:
                f.issues.append(ManifestIssue(str(env_path), line, 1, problem))

    def lookup(name: str) -> str | None:
        if name.startswith("DIPLO_"):
            raise InterpolationError(
                f"${{{name}}}: Diplo's own variables (DIPLO_*) are never given to a manifest"
            )
        # Diplo's environment wins, as far as the policy lets this source read it; a
        # variable it may not read is as if unset, so that ${VAR:-default} still works.
        if f.rules.may_read(name) and name in environ:
            return environ[name]
        return dotenv.get(name)

    return lookup


def _interpolate(value: Any, path: DataPath, lookup: Lookup, f: _File) -> Any:
    if isinstance(value, str):
        used: list[tuple[str, str]] = []

        def recording(name: str) -> str | None:
            found = lookup(name)
            if found is not None:
                used.append((name, found))
            return found

        try:
            result = interpolate(value, recording, f.rules.limits.interpolation_depth)
        except InterpolationError as exc:
            f.issue(path, str(exc))
            return value
        finally:
            if used:
                f.interpolated[path] = used
        return result
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, k), lookup, f) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), lookup, f) for i, v in enumerate(value)]
    return value


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Which model a mapping at `loc` is validated by (for near-miss key suggestions)."""
    if len(loc) == 0:
        return ManifestConfig
    if loc[0] != "apps" or len(loc) < 2:
        return None
    nested: dict[tuple[str, ...], type[BaseModel]] = {
        (): AppConfig,
        ("build",): BuildConfig,
        ("resources",): Resources,
        ("health",): HealthConfig,
        ("health", "http"): HttpProbe,
        ("health", "tcp"): TcpProbe,
        ("deploy",): DeployConfig,
        ("tls",): TlsFiles,
    }
    return nested.get(tuple(str(p) for p in loc[2:]))


def _report(f: _File, err: Any) -> None:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(loc[:-1])
        known = list(model.model_fields) if model else []
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = (
            f"did you mean {close[0]!r}?"
            if close
            else (f"known keys: {', '.join(known)}" if known else None)
        )
        f.issue(loc, f"unknown key {key!r}", hint, key=True)
        return
    field_name = ".".join(str(p) for p in loc) or "(document)"
    message = err["msg"].removeprefix("Value error, ")
    if kind == "missing":
        f.issue(loc[:-1], f"{field_name}: required key is missing", f"add `{loc[-1]}:`")
        return
    got = err.get("input")
    plain = kind != "value_error" and not isinstance(got, dict | list) and got is not None
    shown = f" (got {got!r})" if plain else ""
    if plain and (names := sorted({n for n, _ in f.variables_at(loc)})):
        shown = " (got the value of " + ", ".join(f"${{{n}}}" for n in names) + ")"
    f.issue(loc, f"{field_name}: {message}{shown}")


def _check_cycles(files: list[_File], owners: dict[str, tuple[_File, str]]) -> None:
    graph = {
        name: list(f.apps[name].depends_on) for name, (f, _) in owners.items() if name in f.apps
    }
    state: dict[str, int] = {}
    for name in sorted(graph):
        if name not in state:
            _visit(name, [name], graph, state, owners)


def _visit(
    node: str,
    stack: list[str],
    graph: dict[str, list[str]],
    state: dict[str, int],
    owners: dict[str, tuple[_File, str]],
) -> None:
    """Depth-first, reporting each cycle once. Not a nested function: one that calls itself
    is a reference cycle through its own cell, which kept every file of a load alive until
    a full collection (40,000 objects of garbage per reload of 500 apps)."""
    state[node] = 1
    for dep in graph.get(node, []):
        if dep not in graph or dep == node:
            continue
        if state.get(dep) == 1:
            cycle = [*stack[stack.index(dep) :], dep] if dep in stack else [node, dep]
            f = owners[node][0]
            f.issue(
                ("apps", node, "depends_on"),
                f"depends_on forms a cycle: {' -> '.join(cycle)}",
                "remove one of these dependencies",
            )
        elif state.get(dep) is None:
            _visit(dep, [*stack, dep], graph, state, owners)
    state[node] = 2


def _resolve_app(f: _File, name: str, app: AppConfig, environ: dict[str, str]) -> DesiredApp | None:
    base = f.path.parent
    at = ("apps", name)
    before = len(f.issues)
    file_hashes: dict[str, str] = {}

    build: BuildSpec | None = None
    if app.build is not None:
        build = _resolve_build(f, app.build, base, (*at, "build"))
    if app.image is None and app.build is None:
        f.issue(
            at, f"app {name!r} needs `image:` or `build:`", "add `image: repo/name:tag`", key=True
        )
    image = app.image or f"diplo/{f.project}-{name}:latest"
    if app.image is not None and not re.match(r"^[a-zA-Z0-9][a-zA-Z0-9_.:/@-]*$", app.image):
        f.issue((*at, "image"), f"{app.image!r} is not an image reference", "e.g. shop/web:1")
    elif app.image is not None and (refused := f.rules.image_refusal(app.image)):
        f.issue((*at, "image"), f"image {app.image!r} refused: {refused}", _POLICY_HINT)
    if app.build is not None and not f.rules.builds:
        f.issue((*at, "build"), f"a {f.rules.kind} source may not build images", _POLICY_HINT)

    env: dict[str, str] = {}
    for i, rel in enumerate(app.env_file):
        reads.note(base / rel)
        p = Path(os.path.realpath(base / rel))
        loc: DataPath = (*at, "env_file", i)
        if loc not in f.located.values:  # `env_file: .env` (a single string)
            loc = (*at, "env_file")
        refused = f.rules.file_refusal(str(p))
        if refused:
            f.issue(loc, f"env_file {rel!r} refused: {refused}", _POLICY_HINT)
            continue
        if not p.is_file():
            f.issue(loc, f"env_file {rel!r} does not exist ({p})", "create it or fix the path")
            continue
        if p.stat().st_size > f.rules.limits.manifest_bytes:
            f.issue(loc, f"env_file {rel!r} is larger than {f.rules.limits.manifest_bytes} bytes")
            continue
        values, problems = parse_env_text(p.read_text(encoding="utf-8", errors="replace"))
        for line, problem in problems:
            f.issues.append(ManifestIssue(str(p), line, 1, problem))
        env.update(values)
        file_hashes[str(p)] = file_digest(p)
    for key, value in app.env.items():
        if value is None:  # `KEY` alone: passed through from Diplo's environment
            if not f.rules.may_read(key):
                never = key.startswith("DIPLO_")
                f.issue(
                    (*at, "env", key),
                    f"env {key}: "
                    + (
                        "Diplo's own variables (DIPLO_*) are never given to a manifest"
                        if never
                        else f"a {f.rules.kind} source may not pass Diplo's variable through"
                    ),
                    None if never else _POLICY_HINT,
                )
            elif key in environ:
                env[key] = environ[key]
            else:
                env.pop(key, None)
        else:
            env[key] = value

    ports = []
    seen_ports: set[str] = set()
    for i, text in enumerate(app.ports):
        m = PORT.match(text.strip())
        assert m is not None  # validated by the model
        port = PortSpec(
            container_port=int(m.group("container")),
            protocol=m.group("proto") or "tcp",  # type: ignore[arg-type]
            host_ip=(m.group("ip") or "").strip("[]"),
            host_port=int(m.group("host")) if m.group("host") else None,
        )
        if port.key in seen_ports:
            f.issue((*at, "ports", i), f"container port {port.key} is published twice")
        elif port.host_port is not None and (refused := f.rules.port_refusal(port.host_port)):
            f.issue(
                (*at, "ports", i), f"host port {port.host_port} refused: {refused}", _POLICY_HINT
            )
        seen_ports.add(port.key)
        ports.append(port)

    mounts = []
    for i, text in enumerate(app.volumes):
        mount = _resolve_volume(f, text, base, (*at, "volumes", i), f.project)
        if mount is None:
            continue
        mounts.append(mount)
        if mount.kind == "bind" and os.path.isfile(mount.source):
            # A bind-mounted file is config: its content is part of the spec (compose#11900).
            file_hashes[mount.source] = file_digest(mount.source)

    routing = resolve_routing(f, app, ports, base, at)
    if len(f.issues) != before:
        return None
    pos = f.located.where(at, prefer_key=True)
    desired = DesiredApp(
        name=name,
        project=f.project,
        image=image,
        source=f"{f.path}:{pos.line}",
        build=build,
        command=tuple(app.command) if app.command is not None else None,
        entrypoint=tuple(app.entrypoint) if app.entrypoint is not None else None,
        env=tuple(sorted(env.items())),
        ports=tuple(ports),
        mounts=tuple(mounts),
        restart=app.restart,
        depends_on=tuple(app.depends_on),
        memory=app.resources.memory,
        nano_cpus=int(app.resources.cpus * 1e9) if app.resources.cpus else None,
        labels=tuple(sorted(app.labels.items())),
        init=app.init,
        stop_signal=app.stop_signal,
        stop_grace_period=app.stop_grace_period,
        user=app.user,
        working_dir=app.working_dir,
        pull_policy=app.pull_policy,
        file_hashes=tuple(sorted(file_hashes.items())),
        health=health_spec(app.health),
        deploy_timeout=app.deploy.timeout,
        keep_images=app.deploy.keep_images,
        prune=f.prune,
        masked=_masked(f, at),
        alerts=""
        if app.alerts is None
        else app.alerts.model_dump_json(by_alias=True, exclude_unset=True),
        **routing,
    )
    return with_spec_hash(desired)


# Where a manifest key lands in DesiredApp; (): nothing of it is shown in clear (env
# values are digests, numbers and durations hold no secret worth hiding).
_LANDS_IN: dict[str, tuple[str, ...]] = {
    "volumes": ("mounts",),
    "tls": ("tls", "tls_cert", "tls_key"),  # `tls` as shown; the paths as recorded
    "env": (),
    "env_file": (),
    "resources": (),
    "deploy": (),
}


def _masked(f: _File, at: DataPath) -> tuple[tuple[str, str, str], ...]:
    """The values interpolation put into the app's fields other than env, by field: they
    are secrets too (a password in a command, a token in a label)."""
    found: set[tuple[str, str, str]] = set()
    for where, subs in f.interpolated.items():
        if len(where) < 3 or where[:2] != at or not isinstance(where[2], str):
            continue
        for field_name in _LANDS_IN.get(where[2], (where[2],)):
            for var, value in subs:
                if len(value) >= 3:  # as in messages: shorter ones would garble the text
                    found.add((field_name, var, value))
    return tuple(sorted(found))


def _resolve_build(f: _File, cfg: BuildConfig, base: Path, loc: DataPath) -> BuildSpec | None:
    reads.note(base / cfg.context, base / cfg.context / cfg.dockerfile)
    context = Path(os.path.realpath(base / cfg.context))
    refused = f.rules.file_refusal(str(context))
    if refused:
        f.issue(loc, f"build context {cfg.context!r} refused: {refused}", _POLICY_HINT)
        return None
    if not context.is_dir():
        f.issue(loc, f"build context {cfg.context!r} is not a folder ({context})")
        return None
    dockerfile = context / cfg.dockerfile
    refused = f.rules.file_refusal(os.path.realpath(dockerfile))
    if refused:
        f.issue(loc, f"dockerfile {cfg.dockerfile!r} refused: {refused}", _POLICY_HINT)
        return None
    if not dockerfile.is_file():
        f.issue(loc, f"no Dockerfile at {dockerfile}", "add one or set build.dockerfile")
        return None
    limits = f.rules.limits
    try:
        context_hash = context_digest(
            context, limits.build_context_files, limits.build_context_bytes
        )
    except ContextTooLarge as exc:
        f.issue(loc, f"build context {cfg.context!r}: {exc}")
        return None
    except OSError as exc:
        f.issue(loc, f"build context {cfg.context!r} cannot be read: {exc.strerror}")
        return None
    args = tuple(sorted(cfg.args.items()))
    digest = spec_digest(
        {
            "context": context_hash,
            "dockerfile": cfg.dockerfile,
            "dockerfile_content": file_digest(dockerfile),
            "args": list(args),
        }
    )
    return BuildSpec(str(context), cfg.dockerfile, args, digest)


def _resolve_volume(f: _File, text: str, base: Path, loc: DataPath, project: str) -> Mount | None:
    parts = text.split(":")
    mode = "rw"
    if len(parts) == 3:
        source, target, mode = parts
    elif len(parts) == 2:
        source, target = parts
    else:
        f.issue(loc, f"{text!r} is not a volume", 'use "name:/path" or "./dir:/path[:ro]"')
        return None
    if mode not in ("ro", "rw"):
        f.issue(loc, f"volume mode {mode!r} is not ro or rw")
        return None
    if not target.startswith("/"):
        f.issue(loc, f"volume target {target!r} must be an absolute path in the container")
        return None
    if source.startswith((".", "/", "~")):
        reads.note(base / os.path.expanduser(source), content=False)  # a file's: below
        host = Path(os.path.realpath(base / os.path.expanduser(source)))
        refused = f.rules.bind_refusal(str(host))
        if refused:  # before looking at the path: a refused manifest learns nothing of it
            f.issue(loc, f"bind mount of {source!r} refused: {refused}", _POLICY_HINT)
            return None
        if not host.exists():
            f.issue(
                loc,
                f"bind mount source {source!r} does not exist ({host})",
                "create it, or use a named volume",
            )
            return None
        return Mount("bind", str(host), target, mode == "ro")
    if not _VOLUME_NAME.match(source):
        f.issue(loc, f"{source!r} is not a volume name", "use letters, digits, '_', '.', '-'")
        return None
    return Mount("volume", f"{project}_{source}", target, mode == "ro")
