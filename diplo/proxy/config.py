"""Caddy's JSON config, built from the host's proxy settings and the apps' routes. Pure:
the same settings and routes give the same JSON (routes, domains and upstreams are
sorted), so that `Proxy.ensure` can compare it with what Caddy reports and skip a load.

The shape (Caddy 2.6):
- server `https` on https_port: a route per TLS app (host matcher on its domains) to a
  reverse_proxy handler, then a 404 for unknown hosts; Caddy's own HTTP->HTTPS
  redirects are off because they drop a non-standard port (we write our own);
- server `http` on http_port: one 308 redirect to HTTPS for every TLS domain, a route per
  `tls: off` app, the apps' draining holders, then a 404;
- the `tls` app: an automation policy per issuer (internal CA or ACME), and the files of
  apps that bring their own certificate.

Each app's reverse_proxy handler carries the Caddy `@id` `upstreams:<project>:<app>`, so
that `PATCH /id/<id>/upstreams` switches that app alone. Its `draining:<project>:<app>`
twin sits behind a matcher that never matches: it keeps the previous upstreams known to
Caddy after a switch, so that `/reverse_proxy/upstreams` still counts their in-flight
requests while they drain (Caddy forgets an upstream no handler names any more).

Every config change (a switch too) is a reload in Caddy 2.6: a new certificate cache,
filled in the background, hence the certificates loaded from storage (`build_config`'s
`stored`); and a new listening socket beside the old one (SO_REUSEPORT), hence
net.ipv4.tcp_migrate_req=1 on the host (`make engine`), or connections queued on the
old socket are reset. HTTP/3 is off (a UDP listener, and an Alt-Svc Caddy cannot
announce behind a non-standard port).

Both servers write an access log (`logging.logs.diplo_access`): one JSON line per request
with only its host, status and duration (URIs, headers and client addresses are deleted
by Caddy's filter encoder: no query-string secret or personal data lands on disk), in
$DIPLO_HOME/proxy/access/, rolled by Caddy at ACCESS_ROLL_MB with ACCESS_KEEP old file.
Diplo's collector reads it for each app's request rate, latencies and 5xx ratio
(diplo/metrics/requests.py). The plain server skips the hosts it only redirects to
HTTPS: their requests are counted once, on the HTTPS server.

No `flush_interval: -1`: in Caddy 2.6 it ties every proxied request to the config it
started under, so any config change (a switch) cuts requests in flight. Streaming passes
through without it: Caddy flushes at once for `text/event-stream`, for responses of
unknown length and for bidirectional streams; WebSockets pass through (a config change
closes them in 2.6, as it closes every hijacked connection)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from diplo.errors import InputError

STATE_DIR = "/diplo"  # inside the container: $DIPLO_HOME/proxy is mounted there
ADMIN_SOCKET = f"{STATE_DIR}/admin.sock"
INTERNAL_STORAGE = "local"  # storage folders of the issuers' certificates
ACME_STORAGE = "acme-v02.api.letsencrypt.org-directory"
PROTOCOLS = ["h1", "h2"]  # no HTTP/3: no UDP listener, no Alt-Svc to announce
ACTIVE_INTERVAL = "2s"
ACTIVE_TIMEOUT = "5s"
TRY_DURATION = "5s"  # a request whose upstream refuses is retried on another for this long
FAIL_DURATION = "10s"  # passive health: an upstream that failed is avoided for this long
MAX_FAILS = 3
ACCESS_DIR = "access"  # in $DIPLO_HOME/proxy, i.e. /diplo/access in the container
ACCESS_FILE = "access.log"
ACCESS_ROLL_MB = 10
ACCESS_KEEP = 1  # rolled files kept: at most (1 + ACCESS_KEEP) * ACCESS_ROLL_MB on disk
ACCESS_LOGGER = "http.log.access"  # Caddy's access loggers (a prefix of each of them)
# every field of an access entry but the few the collector reads
_ACCESS_DROPPED = (
    "request>headers",
    "request>uri",
    "request>tls",
    "request>remote_ip",
    "request>remote_port",
    "request>client_ip",
    "resp_headers",
    "user_id",
)
_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]*/[a-z0-9][a-z0-9-]*$")
_UPSTREAM = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")
_INTERNAL_SUFFIXES = (".localhost", ".internal", ".local", ".test", ".home.arpa", ".invalid")
_NEVER = {"vars": {"diplo_draining": ["never-set"]}}  # nothing sets this var: never matches
_NOT_FOUND = {
    "handle": [
        {
            "handler": "static_response",
            "status_code": 404,
            "body": "no app is served at this address\n",
        }
    ]
}


@dataclass(frozen=True)
class CertFiles:
    """An app's own certificate and key: paths as Caddy sees them (in its container)."""

    cert: str
    key: str


Tls = Literal["auto", "internal", "off"] | CertFiles
LbPolicy = Literal["round_robin", "least_conn"]


@dataclass(frozen=True)
class Route:
    key: str  # "project/app"
    domains: tuple[str, ...]
    upstreams: tuple[str, ...]  # "10.1.2.3:8080"
    tls: Tls = "auto"
    lb_policy: LbPolicy = "round_robin"
    health_uri: str | None = None


@dataclass(frozen=True)
class ProxySettings:
    """The host's proxy settings (the ports Caddy binds on the host, the ACME account)."""

    http_port: int = 80
    https_port: int = 443
    email: str | None = None
    admin_socket: str = ADMIN_SOCKET


def upstreams_id(key: str) -> str:
    """The Caddy `@id` of an app's reverse_proxy handler."""
    return "upstreams:" + key.replace("/", ":")


def draining_id(key: str) -> str:
    """The Caddy `@id` of the handler that holds an app's draining upstreams."""
    return "draining:" + key.replace("/", ":")


def is_internal(domain: str) -> bool:
    """A name no public CA certifies: Caddy's internal CA signs it under `tls: auto`."""
    name = domain.lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name == "localhost" or "." not in name or name.endswith(_INTERNAL_SUFFIXES)


def admin_block(settings: ProxySettings) -> dict[str, Any]:
    # Caddy 2.6 accepts only an empty Host on a UNIX socket unless origins are named;
    # "localhost" is what HTTP clients send there.
    return {"listen": f"unix/{settings.admin_socket}", "origins": ["localhost"]}


def boot_config(settings: ProxySettings) -> dict[str, Any]:
    """What Caddy starts with before Diplo loads anything: only its admin socket (never
    Caddy's default TCP admin port, which host networking would open on the host)."""
    return {"admin": admin_block(settings)}


def build_config(
    settings: ProxySettings, routes: Sequence[Route], stored: Iterable[str] = ()
) -> dict[str, Any]:
    """The full Caddy config for these routes (raises InputError for a bad route).

    `stored`: the certificate files in Caddy's storage (`certificates/<issuer>/<name>/
    <name>.crt`). Those of the routes' managed domains are also loaded from storage
    (`load_storage`): Caddy 2.6 builds a new certificate cache on every config change
    and fills it in the background, so without them a TLS handshake that arrives just
    after a switch can find no certificate. Caddy still manages (renews) them."""
    _check(settings, routes)
    ordered = sorted(routes, key=lambda r: r.key)
    secure = [r for r in ordered if r.tls != "off"]
    plain = [r for r in ordered if r.tls == "off"]

    http_routes: list[dict[str, Any]] = []
    if secure:
        http_routes.append(_redirect(settings, sorted(d for r in secure for d in r.domains)))
    http_routes += [_app_route(r) for r in plain]
    http_routes += [_draining_route(r) for r in ordered]
    http_routes.append(_NOT_FOUND)
    redirected = sorted(d for r in secure for d in r.domains)
    servers: dict[str, Any] = {
        "http": {
            "listen": [f":{settings.http_port}"],
            "routes": http_routes,
            "protocols": PROTOCOLS,
            "logs": _skipping(redirected, settings.http_port),
        }
    }
    if secure:
        servers["https"] = {
            "listen": [f":{settings.https_port}"],
            "routes": [*(_app_route(r) for r in secure), _NOT_FOUND],
            "protocols": PROTOCOLS,
            "automatic_https": _automatic_https(secure),
            "logs": {},
        }
    apps: dict[str, Any] = {
        "http": {
            "http_port": settings.http_port,
            "https_port": settings.https_port,
            "servers": servers,
        },
        # The internal CA's root stays in the volume: never installed in a trust store.
        "pki": {"certificate_authorities": {"local": {"install_trust": False}}},
    }
    if secure:
        apps["tls"] = _tls_app(settings, secure, set(stored))
    return {"admin": admin_block(settings), "logging": access_logging(), "apps": apps}


def access_logging() -> dict[str, Any]:
    """Caddy's `logging`: the access entries go to their own file, not to stderr (the
    container's log, where the engine would keep them)."""
    return {
        "logs": {
            "default": {"exclude": [ACCESS_LOGGER]},
            "diplo_access": {
                "writer": {
                    "output": "file",
                    "filename": f"{STATE_DIR}/{ACCESS_DIR}/{ACCESS_FILE}",
                    "roll_size_mb": ACCESS_ROLL_MB,
                    "roll_keep": ACCESS_KEEP,
                    # rolled files stay plain: the collector reads the end of the one
                    # just rolled, which a gzip in the background would take away
                    "roll_gzip": False,
                },
                "encoder": {
                    "format": "filter",
                    "wrap": {"format": "json"},
                    "fields": {f: {"filter": "delete"} for f in _ACCESS_DROPPED},
                },
                "include": [ACCESS_LOGGER],
            },
        }
    }


def _skipping(domains: list[str], port: int) -> dict[str, Any]:
    """A server's `logs`, without the entries of these hosts. Caddy 2.6 compares the
    Host header as sent, with its port when it is not the default one."""
    if not domains:
        return {}
    hosts = domains if port == 80 else [h for d in domains for h in (d, f"{d}:{port}")]
    return {"skip_hosts": hosts}


def with_draining(config: dict[str, Any], draining: dict[str, list[str]]) -> dict[str, Any]:
    """`config` with the draining holders of these apps (by key) set to these upstreams:
    `Proxy.ensure` carries over what a switch left draining."""
    wanted = {draining_id(k): sorted(v) for k, v in draining.items()}
    for route in config["apps"]["http"]["servers"]["http"]["routes"]:
        for handler in route.get("handle", []):
            if handler.get("@id") in wanted:
                handler["upstreams"] = [{"dial": u} for u in wanted[handler["@id"]]]
    return config


def upstreams_of(config: Any) -> dict[str, list[str]]:
    """The upstreams each app (by key, "project/app") is served from, in a config Caddy
    reported: its reverse_proxy handler on either server."""
    out: dict[str, list[str]] = {}
    try:
        servers = config["apps"]["http"]["servers"].values()
    except (KeyError, TypeError, AttributeError):
        return out
    prefix = upstreams_id("")
    for server in servers:
        for route in server.get("routes") or []:
            for handler in route.get("handle", []):
                ident = str(handler.get("@id", ""))
                if ident.startswith(prefix):
                    key = ident.removeprefix(prefix).replace(":", "/", 1)
                    out[key] = [str(u.get("dial", "")) for u in handler.get("upstreams") or []]
    return out


def draining_of(config: Any) -> dict[str, list[str]]:
    """The draining upstreams of each app in a config Caddy reported (by handler id)."""
    out: dict[str, list[str]] = {}
    try:
        routes = config["apps"]["http"]["servers"]["http"]["routes"]
    except (KeyError, TypeError):
        return out
    for route in routes:
        for handler in route.get("handle", []):
            ident = str(handler.get("@id", ""))
            if ident.startswith("draining:"):
                out[ident] = [str(u.get("dial", "")) for u in handler.get("upstreams") or []]
    return out


def check_switch(key: str, upstreams: Sequence[str]) -> None:
    """InputError unless `key` names an app and `upstreams` are host:port."""
    problems = [] if _KEY.match(key) else [f"route key {key!r} is not project/app"]
    problems += [
        f"{key}: upstream {u!r} is not host:port" for u in upstreams if not _UPSTREAM.match(u)
    ]
    if problems:
        raise InputError("invalid proxy switch; nothing was changed:\n  " + "\n  ".join(problems))


def _app_route(r: Route) -> dict[str, Any]:
    return {
        "match": [{"host": sorted(r.domains)}],
        "handle": [_reverse_proxy(r)],
        "terminal": True,
    }


def _reverse_proxy(r: Route) -> dict[str, Any]:
    health: dict[str, Any] = {
        "passive": {"fail_duration": FAIL_DURATION, "max_fails": MAX_FAILS},
    }
    if r.health_uri:
        health["active"] = {
            "uri": r.health_uri,
            "interval": ACTIVE_INTERVAL,
            "timeout": ACTIVE_TIMEOUT,
        }
    return {
        "handler": "reverse_proxy",
        "@id": upstreams_id(r.key),
        "upstreams": [{"dial": u} for u in sorted(r.upstreams)],
        "load_balancing": {
            "selection_policy": {"policy": r.lb_policy},
            "try_duration": TRY_DURATION,
            "try_interval": "250ms",
        },
        "health_checks": health,
    }


def _draining_route(r: Route) -> dict[str, Any]:
    return {
        "match": [_NEVER],
        "handle": [
            {
                "handler": "reverse_proxy",
                "@id": draining_id(r.key),
                "upstreams": [],
            }
        ],
    }


def _redirect(settings: ProxySettings, domains: list[str]) -> dict[str, Any]:
    port = "" if settings.https_port == 443 else f":{settings.https_port}"
    return {
        "match": [{"host": domains}],
        "handle": [
            {
                "handler": "static_response",
                "status_code": 308,
                "headers": {
                    "Location": [f"https://{{http.request.host}}{port}{{http.request.uri}}"]
                },
            }
        ],
        "terminal": True,
    }


def _automatic_https(secure: list[Route]) -> dict[str, Any]:
    auto: dict[str, Any] = {"disable_redirects": True, "ignore_loaded_certificates": True}
    own = sorted(d for r in secure if isinstance(r.tls, CertFiles) for d in r.domains)
    if own:  # loaded from the app's files, never obtained
        auto["skip_certificates"] = own
    return auto


def _stored_pairs(internal: list[str], public: list[str], stored: set[str]) -> list[dict[str, Any]]:
    pairs = []
    for issuer, names in ((INTERNAL_STORAGE, internal), (ACME_STORAGE, public)):
        for name in sorted(set(names)):
            base = f"certificates/{issuer}/{name}/{name}"
            if f"{base}.crt" in stored and f"{base}.key" in stored:
                pairs.append({"certificate": f"{base}.crt", "key": f"{base}.key"})
    return pairs


def _tls_app(settings: ProxySettings, secure: list[Route], stored: set[str]) -> dict[str, Any]:
    internal: list[str] = []
    public: list[str] = []
    files: list[dict[str, Any]] = []
    for r in secure:
        if isinstance(r.tls, CertFiles):
            files.append({"certificate": r.tls.cert, "key": r.tls.key, "tags": [r.key]})
        elif r.tls == "internal":
            internal += r.domains
        else:
            for d in r.domains:
                (internal if is_internal(d) else public).append(d)
    policies: list[dict[str, Any]] = []
    if internal:
        policies.append({"subjects": sorted(internal), "issuers": [{"module": "internal"}]})
    if public:
        policies.append({"subjects": sorted(public), "issuers": [_acme(settings)]})
    tls: dict[str, Any] = {}
    if policies:
        tls["automation"] = {"policies": policies}
    certificates: dict[str, Any] = {}
    if files:
        certificates["load_files"] = files
    if pairs := _stored_pairs(internal, public, stored):
        certificates["load_storage"] = {"pairs": pairs}
    if certificates:
        tls["certificates"] = certificates
    return tls


def _acme(settings: ProxySettings) -> dict[str, Any]:
    issuer: dict[str, Any] = {"module": "acme"}
    if settings.email:
        issuer["email"] = settings.email
    # The CA reaches the host on 80/443; when Caddy listens elsewhere, a port forward on
    # the host must bridge them, and the challenge solvers use Caddy's own ports.
    challenges: dict[str, Any] = {}
    if settings.http_port != 80:
        challenges["http"] = {"alternate_port": settings.http_port}
    if settings.https_port != 443:
        challenges["tls-alpn"] = {"alternate_port": settings.https_port}
    if challenges:
        issuer["challenges"] = challenges
    return issuer


def _check(settings: ProxySettings, routes: Sequence[Route]) -> None:
    problems: list[str] = []
    for name, port in (("http_port", settings.http_port), ("https_port", settings.https_port)):
        if not 1 <= port <= 65535:
            problems.append(f"proxy {name} {port} is not a port (1-65535)")
    if settings.http_port == settings.https_port:
        problems.append(f"proxy http_port and https_port are both {settings.http_port}")
    keys: set[str] = set()
    owners: dict[str, str] = {}
    for r in routes:
        if not _KEY.match(r.key):
            problems.append(f"route key {r.key!r} is not project/app")
        if r.key in keys:
            problems.append(f"route {r.key} is given twice")
        keys.add(r.key)
        if not r.domains:
            problems.append(f"{r.key}: no domains")
        for d in r.domains:
            name = d.lower().rstrip(".")
            if name in owners and owners[name] != r.key:
                problems.append(f"domain {d} is claimed by {owners[name]} and {r.key}")
            owners.setdefault(name, r.key)
        for u in r.upstreams:
            if not _UPSTREAM.match(u):
                problems.append(f"{r.key}: upstream {u!r} is not host:port")
        if r.health_uri is not None and not r.health_uri.startswith("/"):
            problems.append(f"{r.key}: health_uri {r.health_uri!r} must start with /")
        if r.lb_policy not in ("round_robin", "least_conn"):
            problems.append(f"{r.key}: lb_policy {r.lb_policy!r} is not round_robin/least_conn")
        if not isinstance(r.tls, CertFiles) and r.tls not in ("auto", "internal", "off"):
            problems.append(f"{r.key}: tls {r.tls!r} is not auto/internal/off/cert files")
    if problems:
        raise InputError("invalid proxy routes; nothing was changed:\n  " + "\n  ".join(problems))
