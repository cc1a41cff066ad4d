"""The host's reverse proxy as the operations drive it.

What it serves is in the ledger (`routes`: an app's domains, HTTP port and TLS, written
when the app is applied, dropped when it goes), so Caddy's whole config can be derived
again at any time: after `diplo apply`, on every resync of `diplo serve`, and whenever
its container is found dead. Caddy's admin API is the only writer.

Upstreams are the one thing not in the ledger: they follow the running replicas. An app
this operation has just deployed (under its lock) gets the addresses of its settled
replicas; every other app keeps what Caddy serves now, so a full load never undoes the
switch of a start-first deploy running elsewhere. Loads and switches take one lock,
shared by every Diplo process on the host."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from diplo.errors import DiploError, ProxyUnavailable
from diplo.model import DesiredApp, Observed, ObservedContainer, container_name
from diplo.ops.context import Context
from diplo.proxy.config import CertFiles, Route, Tls, upstreams_of

if TYPE_CHECKING:
    from diplo.ops.apply import ApplyReport

log = structlog.get_logger("diplo.proxy")

LOCK = ".proxy"  # a lock file name no app can have (app names start with a letter)
LOCK_WAIT = 60.0


def route_of(app: DesiredApp) -> dict[str, Any] | None:
    """What the ledger keeps of an app for the proxy; None: it has no domains."""
    if not app.domains or app.http_port is None:
        return None
    health = app.health
    checked = health.kind == "http" and health.port in (None, app.http_port)
    return {
        "domains": list(app.domains),
        "http_port": app.http_port,
        "tls": app.tls,
        "cert": app.tls_cert,
        "key": app.tls_key,
        "health_path": health.path if checked else None,
        "replicas": app.replicas,
        "lb": app.load_balancing,
    }


def record(ctx: Context, report: ApplyReport, before: set[str]) -> set[str]:
    """Keep the routes of the apps this apply deployed; returns the apps whose traffic
    may have moved (their upstreams are looked up again), and those whose route went
    with them (pruned: `before` are the apps that had a route)."""
    assert report.result is not None
    known = set(ctx.ledger.routes())  # read once: pruned apps' routes went with them
    moved: set[str] = before - known
    for name, outcome in report.result.outcomes.items():
        spec = report.prepared.desired.app(name)
        if not outcome.ok or spec is None:
            continue
        route = route_of(spec)
        if route is not None or name in known:
            ctx.ledger.set_route(name, spec.project, route)
            moved.add(name)
    return moved


class ProxyRouter:
    """The executor's Router (executor/strategy.py) over the host's proxy: a start-first
    deploy switches and drains through it. A route Caddy does not have yet (a new app)
    is loaded first, from `pending`: the routes of the apps being applied."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.pending: dict[str, tuple[str, dict[str, Any]]] = {}  # key -> (app, route)

    def switch(self, key: str, upstreams: Sequence[str]) -> None:
        with self.ctx.locks.hold([LOCK], timeout=LOCK_WAIT):
            proxy = self.ctx.proxy
            if key not in _served(self.ctx):
                app, route = self.pending[key]
                project = key.split("/", 1)[0]
                _load(self.ctx, extra={app: (project, route, list(upstreams))})
                return
            proxy.switch(key, upstreams)

    def in_flight(self, upstreams: Sequence[str]) -> int:
        return self.ctx.proxy.in_flight(upstreams)


def expect(ctx: Context, apps: Iterable[DesiredApp]) -> None:
    """Tell the router the routes of the apps an apply is about to deploy."""
    router = ctx.router
    if isinstance(router, ProxyRouter):
        router.pending = {
            a.key: (a.name, route) for a in apps if (route := route_of(a)) is not None
        }


def converge(ctx: Context, moved: Iterable[str] = (), *, dropped: bool = False) -> bool:
    """Caddy running and serving every route of this home's ledger. With no route,
    nothing is started or touched (a proxy of that name may be another Diplo home's),
    unless `dropped`: this home's last route just went, and its proxy goes with it.
    Returns whether a proxy serves routes of this home."""
    if not ctx.proxy_enabled:
        return False
    with ctx.locks.hold([LOCK], timeout=LOCK_WAIT):
        if not ctx.ledger.routes():
            if dropped:
                ctx.proxy.remove()
            return False
        _load(ctx, moved=set(moved))
        return True


def heal(ctx: Context) -> bool:
    """Bring a dead proxy back with every route (cheap when it runs: one inspect)."""
    if not ctx.proxy_enabled or not ctx.ledger.routes():
        return False
    state = ctx.proxy.runtime.state(ctx.proxy.name)
    if state is not None and state.status == "running":
        return False
    log.warning("proxy.down", state=state.status if state else "missing")
    converge(ctx)
    log.info("proxy.healed")
    return True


def _load(
    ctx: Context,
    moved: set[str] | None = None,
    extra: dict[str, tuple[str, dict[str, Any], list[str]]] | None = None,
) -> None:
    """Derive and load the whole config (under the proxy lock)."""
    served = _served(ctx)
    routes = []
    rows = {app: (project, route, None) for app, (project, route) in ctx.ledger.routes().items()}
    wanted = {**rows, **(extra or {})}
    looked_up = [app for app, (_, _, given) in wanted.items() if given is None]
    # One listing for every app looked up here, not one per app.
    observed = ctx.runtime.observe(containers_only=True) if looked_up else None
    kept = {
        app
        for app in looked_up
        if f"{wanted[app][0]}/{app}" in served and app not in (moved or set())
    }
    live = _addresses(ctx, observed, kept)
    for app, (project, route, given) in wanted.items():
        key = f"{project}/{app}"
        if given is not None:
            ups = list(given)
        elif app in kept and {u.rpartition(":")[0] for u in served[key]} <= live[app]:
            # What Caddy serves stays, unless it sends requests to a container that is
            # gone: a start-first deploy interrupted after its switch leaves it so.
            ups = served[key]
        else:
            assert observed is not None  # `app` is looked up
            ups = _settled(ctx, observed, project, app, route)
        routes.append(_route(key, route, ups))
    ensured = ctx.proxy.ensure(routes)
    if ensured.container != "unchanged":  # created, recreated or started again
        log.info("proxy.container", action=ensured.container, name=ctx.proxy.name)


def _served(ctx: Context) -> dict[str, list[str]]:
    """key -> the upstreams Caddy serves now; empty when it does not answer."""
    try:
        return upstreams_of(ctx.proxy.admin.config())
    except ProxyUnavailable:
        return {}


def _addresses(ctx: Context, observed: Observed | None, apps: set[str]) -> dict[str, set[str]]:
    """The IP addresses of each app's running containers, of any name (a start-first
    deploy's new replicas too): an inspect per container."""
    out: dict[str, set[str]] = {app: set() for app in apps}
    if observed is not None and apps:
        for c, ip in _ips(ctx, [c for c in observed.containers if c.app in out]):
            out[c.app].add(ip)
    return out


def _settled(
    ctx: Context, observed: Observed, project: str, app: str, route: dict[str, Any]
) -> list[str]:
    """The addresses of the app's running replicas under their settled names."""
    names = {container_name(project, app, k) for k in range(1, int(route["replicas"]) + 1)}
    settled = [c for c in observed.of_app(app) if c.name in names]
    return sorted(f"{ip}:{route['http_port']}" for _, ip in _ips(ctx, settled))


def _ips(
    ctx: Context, containers: Iterable[ObservedContainer]
) -> Iterator[tuple[ObservedContainer, str]]:
    """Each running one of `containers` with its IP address (one inspect each)."""
    for c in containers:
        if c.state != "running":
            continue
        try:
            ip = ctx.runtime.state(c.id).ip
        except DiploError:
            continue  # gone meanwhile
        if ip:
            yield c, ip


def _route(key: str, route: dict[str, Any], upstreams: list[str]) -> Route:
    tls: Tls = route["tls"]
    if route["tls"] == "files":
        tls = CertFiles(cert=route["cert"], key=route["key"])
    return Route(
        key=key,
        domains=tuple(route["domains"]),
        upstreams=tuple(upstreams),
        tls=tls,
        lb_policy=route.get("lb", "round_robin"),
        health_uri=route.get("health_path"),
    )


def certificates(ctx: Context) -> list[dict[str, Any]]:
    """Each domain the proxy serves: its app, and the issuer and expiry of the
    certificate served for it (read the way a browser does, by a TLS handshake)."""
    routes = ctx.ledger.routes()
    if not routes or not ctx.proxy_enabled:
        return []
    from diplo.proxy.certs import served  # cryptography: only when there are domains

    out = []
    for app, (_project, route) in sorted(routes.items()):
        for domain in route["domains"]:
            row: dict[str, Any] = {"domain": domain, "app": app, "tls": route["tls"]}
            if route["tls"] != "off":
                cert = served(domain, ctx.proxy.settings.https_port)
                expires = cert.not_after.isoformat() if cert.not_after else None
                row.update(issuer=cert.issuer, expires=expires, error=cert.error or None)
            out.append(row)
    return out
