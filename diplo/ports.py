"""Host-port assignment, pure: the socket probe is passed in.

A container port without a host port gets one chosen by Diplo, recorded in the ledger
and reused on every redeploy, so URLs do not move. Conflicts (two apps claiming one host
port, or a port taken by something else on the host) are found before anything starts."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from diplo.model import DesiredApp, Observed, PortAllocation, ResolvedPort

AUTO_RANGE = (20000, 29999)
EPHEMERAL = 0  # a host port the engine picks per container, neither stable nor recorded


def ephemeral(app: DesiredApp) -> bool:
    """Whether `app`'s ports without a host port get an ephemeral one per container: with
    several replicas, or the new release running beside the old (start-first), two
    containers cannot share one stable host port."""
    return app.replicas > 1 or app.strategy == "start-first"


# is_free(host_ip, host_port, protocol) -> True when nothing on the host holds it
PortProbe = Callable[[str, int, str], bool]


@dataclass(frozen=True)
class PortAssignment:
    ports: dict[str, tuple[ResolvedPort, ...]]  # by app
    problems: list[str]


def _overlaps(ip_a: str, ip_b: str) -> bool:
    wild = ("", "0.0.0.0", "::")
    return ip_a == ip_b or ip_a in wild or ip_b in wild


def assign_ports(
    apps: Iterable[DesiredApp],
    allocations: Iterable[PortAllocation],
    observed: Observed,
    is_free: PortProbe,
    check: Callable[[str], bool] = lambda app: True,
) -> PortAssignment:
    """Resolve every app's ports. `check(app)` says whether the app will get a new
    container (only then must its ports be free on the host)."""
    apps = list(apps)
    desired_names = {a.name for a in apps}
    ledger = {(a.app, a.key): a for a in allocations}
    held_by: dict[tuple[int, str], str] = {}  # (port, proto) -> app whose container has it
    published: dict[tuple[str, str], tuple[str, int]] = {}  # (app, key) -> (ip, port)
    for c in observed.containers:
        for p in c.ports:
            held_by[(p.host_port, p.key.split("/")[1])] = c.app
            published.setdefault((c.app, p.key), (p.host_ip, p.host_port))

    claims: list[tuple[str, str, int, str]] = []  # (app, ip, port, proto)
    problems: list[str] = []
    # Allocations of apps that are not part of this apply stay reserved.
    for kept in ledger.values():
        if kept.app not in desired_names:
            claims.append((kept.app, kept.host_ip, kept.host_port, kept.key.split("/")[1]))

    def claimed_by(ip: str, port: int, proto: str) -> str | None:
        for app, cip, cport, cproto in claims:
            if cport == port and cproto == proto and _overlaps(ip, cip):
                return app
        return None

    resolved: dict[str, list[ResolvedPort]] = {a.name: [] for a in apps}
    pending: list[tuple[DesiredApp, str, str, str]] = []  # (app, key, ip, proto) to choose
    for app in apps:
        for spec in app.ports:
            if spec.host_port is None and ephemeral(app):
                resolved[app.name].append(ResolvedPort(spec.key, spec.host_ip, EPHEMERAL))
                continue
            if spec.host_port is not None:
                ip, port, new = spec.host_ip, spec.host_port, False
            elif (alloc := ledger.get((app.name, spec.key))) and alloc.host_ip == spec.host_ip:
                ip, port, new = spec.host_ip, alloc.host_port, False
            elif (app.name, spec.key) in published and published[(app.name, spec.key)][0] in (
                "",
                "0.0.0.0",
                spec.host_ip,
            ):
                # The ledger was lost: keep the port the running container already has.
                ip, port, new = spec.host_ip, published[(app.name, spec.key)][1], True
            else:
                pending.append((app, spec.key, spec.host_ip, spec.protocol))
                continue
            other = claimed_by(ip, port, spec.protocol)
            if other is not None and other != app.name:
                problems.append(
                    f"{app.name}: host port {port}/{spec.protocol} is also claimed by app "
                    f"{other!r}; give one of them another port"
                )
                continue
            claims.append((app.name, ip, port, spec.protocol))
            resolved[app.name].append(ResolvedPort(spec.key, ip, port, new))

    for app, key, ip, proto in pending:
        chosen = _choose(app.name, key, ip, proto, claimed_by, held_by, is_free)
        if chosen is None:
            problems.append(f"{app.name}: no free host port left for {key} in {AUTO_RANGE}")
            continue
        claims.append((app.name, ip, chosen, proto))
        resolved[app.name].append(ResolvedPort(key, ip, chosen, True))

    # A port the app will bind must be free, unless the app's own container holds it.
    for app in apps:
        if not check(app.name):
            continue
        for rp in resolved[app.name]:
            if rp.host_port == EPHEMERAL:
                continue
            proto = rp.key.split("/")[1]
            holder = held_by.get((rp.host_port, proto))
            if holder == app.name:
                continue
            if holder is not None:
                problems.append(
                    f"{app.name}: host port {rp.host_port}/{proto} is held by the container "
                    f"of app {holder!r}"
                )
            elif not is_free(rp.host_ip, rp.host_port, proto):
                problems.append(
                    f"{app.name}: host port {rp.host_port}/{proto} is already in use on this "
                    "host by another process or container; free it or choose another port"
                )
    order = {spec.key: i for a in apps for i, spec in enumerate(a.ports)}
    return PortAssignment(
        {
            name: tuple(sorted(ps, key=lambda p: order.get(p.key, 0)))
            for name, ps in resolved.items()
        },
        problems,
    )


def _choose(
    app: str,
    key: str,
    ip: str,
    proto: str,
    claimed_by: Callable[[str, int, str], str | None],
    held_by: dict[tuple[int, str], str],
    is_free: PortProbe,
) -> int | None:
    low, high = AUTO_RANGE
    span = high - low + 1
    # Start where the app's name hashes to, so that choices are spread out and repeatable.
    start = zlib.crc32(f"{app}/{key}".encode()) % span
    for i in range(span):
        port = low + (start + i) % span
        if (
            claimed_by(ip, port, proto) is None
            and (port, proto) not in held_by
            and is_free(ip, port, proto)
        ):
            return port
    return None
