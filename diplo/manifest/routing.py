"""Replicas, deploy strategy, domains and TLS of an app, checked together: they depend on
one another and on the app's ports (two containers cannot publish one host port; a domain
needs a container port to send HTTP to). Kept apart from the loader, which calls
`resolve_routing` per app and `check_domain_claims` across its files."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from diplo.manifest import reads
from diplo.manifest.hashing import file_digest, spec_digest
from diplo.manifest.spec import AppConfig, TlsFiles
from diplo.manifest.yamlpos import Path as DataPath
from diplo.model import PortSpec
from diplo.policy import Rules

POLICY_HINT = "the host's owner decides this in $DIPLO_HOME/policy.yaml (diplo policy check --show)"


class Sink(Protocol):
    """Where problems go (the loader's file being read) and the rules it is held to."""

    rules: Rules

    def issue(
        self, path: DataPath, message: str, hint: str | None = None, *, key: bool = False
    ) -> None: ...


def resolve_routing(
    f: Sink, app: AppConfig, ports: Sequence[PortSpec], base: Path, at: DataPath
) -> dict[str, Any]:
    """The DesiredApp fields of `app`'s replicas, strategy, domains and TLS; problems go to
    `f` with their place in the file."""
    fixed = [(i, p) for i, p in enumerate(ports) if p.host_port is not None]
    if app.replicas > 1:
        for i, p in fixed:
            f.issue(
                (*at, "ports", i),
                f"host port {p.host_port} is fixed, but the app has {app.replicas} replicas: "
                "two containers cannot publish one host port",
                f'serve it on domains, or leave the host port out ("{p.container_port}"): '
                "each replica then gets an ephemeral one",
            )
    strategy = app.deploy.strategy
    if strategy is None:
        strategy = "start-first" if app.domains and not fixed else "recreate"
    elif strategy == "start-first":
        for i, p in fixed:
            f.issue(
                (*at, "deploy", "strategy"),
                f"start-first runs the new release beside the old one, but host port "
                f"{p.host_port} (ports[{i}]) is fixed and only one container can publish it",
                "use strategy recreate, serve the app on domains, or leave the host port out",
            )
            break

    seen: dict[str, int] = {}
    for i, domain in enumerate(app.domains):
        if domain in seen:
            f.issue((*at, "domains", i), f"domain {domain!r} is listed twice")
        seen.setdefault(domain, i)
    http_port = app.http_port
    if app.domains and http_port is None:
        tcp = sorted({p.container_port for p in ports if p.protocol == "tcp"})
        if len(tcp) == 1:
            http_port = tcp[0]
        else:
            f.issue(
                (*at, "domains"),
                "the app has domains but no HTTP port: "
                + (
                    "it publishes no TCP port"
                    if not tcp
                    else f"it has {len(tcp)} TCP ports ({', '.join(map(str, tcp))})"
                ),
                "set `http_port:` to the container port the app serves HTTP on",
                key=True,
            )

    out: dict[str, Any] = {
        "replicas": app.replicas,
        "strategy": strategy,
        "drain": app.deploy.drain,
        "domains": tuple(app.domains),
        "http_port": http_port if app.domains else None,
        "load_balancing": app.load_balancing,
        "tls": "auto",
    }
    if isinstance(app.tls, TlsFiles):
        out.update(_tls_files(f, app.tls, base, (*at, "tls")))
    else:
        out["tls"] = app.tls
    return out


def _tls_files(f: Sink, cfg: TlsFiles, base: Path, at: DataPath) -> dict[str, Any]:
    """A certificate and key read like env_files: relative to the manifest, within the
    policy's confinement, regular files no larger than a manifest."""
    paths: dict[str, str] = {}
    digests: dict[str, str] = {}
    for part in ("cert", "key"):
        rel: str = getattr(cfg, part)
        reads.note(base / rel)
        p = os.path.realpath(base / rel)
        loc = (*at, part)
        refused = f.rules.file_refusal(p)
        if refused:
            f.issue(loc, f"tls {part} {rel!r} refused: {refused}", POLICY_HINT)
        elif not os.path.isfile(p):
            f.issue(loc, f"tls {part} {rel!r} does not exist ({p})", "create it or fix the path")
        elif os.path.getsize(p) > f.rules.limits.manifest_bytes:
            f.issue(loc, f"tls {part} {rel!r} is larger than {f.rules.limits.manifest_bytes} bytes")
        else:
            paths[part] = p
            digests[part] = file_digest(p)
    return {
        "tls": "files",
        "tls_cert": paths.get("cert", ""),
        "tls_key": paths.get("key", ""),
        "tls_digest": spec_digest(digests) if len(digests) == 2 else "",
    }


def check_domain_claims(
    claims: Iterable[tuple[str, str, DataPath, Sink, str]],
) -> None:
    """Each domain is served by one app. `claims`: (domain, app, place, file, where) in
    file order, `where` being the claim's `file:line`; a second claim is reported at its
    place, naming the first."""
    first: dict[str, tuple[str, str]] = {}
    for domain, app, place, f, where in claims:
        if domain not in first:
            first[domain] = (app, where)
            continue
        owner, owner_where = first[domain]
        if owner == app:
            continue  # listed twice by one app: reported with the app
        f.issue(
            place,
            f"domain {domain!r} is also claimed by app {owner!r} ({owner_where})",
            "a domain is served by one app; remove it from one of them",
        )
