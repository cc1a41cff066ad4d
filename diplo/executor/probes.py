"""Running health probes: HTTP and TCP from this host against the app's published port
(or the container's address when the port is not published), and commands inside the
container through the runtime. Every probe has a timeout."""

from __future__ import annotations

import http.client
import socket
import time

from diplo.errors import DiploError
from diplo.health import Probe
from diplo.model import HealthSpec, ResolvedPort
from diplo.runtime.base import Runtime


def probe_address(
    health: HealthSpec, ports: tuple[ResolvedPort, ...], container_ip: str
) -> tuple[str, int] | None:
    """Where to reach the probed container port from this host."""
    if health.port is None:
        return None
    for rp in ports:
        if rp.key == f"{health.port}/tcp":
            host = rp.host_ip if rp.host_ip not in ("", "0.0.0.0", "::") else "127.0.0.1"
            return host, rp.host_port
    return (container_ip, health.port) if container_ip else None


def run_probe(
    health: HealthSpec,
    address: tuple[str, int] | None,
    runtime: Runtime,
    container_id: str,
) -> Probe:
    started = time.monotonic()
    try:
        if health.kind == "cmd":
            code, output = runtime.exec(container_id, list(health.cmd), health.timeout)
            ok = code == 0
            tail = output.strip().splitlines()[-1][:200] if output.strip() else ""
            detail = f"exit {code}" + (f": {tail}" if tail else "")
        elif address is None:
            ok, detail = False, f"port {health.port} is neither published nor reachable"
        elif health.kind == "tcp":
            with socket.create_connection(address, timeout=health.timeout):
                ok, detail = True, f"tcp {address[1]} accepts"
        else:
            ok, detail = _http(health, address)
    except DiploError as exc:
        ok, detail = False, exc.message
    except TimeoutError:
        ok, detail = False, f"timed out after {health.timeout:g}s"
    except OSError as exc:
        ok, detail = False, exc.strerror or str(exc)
    latency = time.monotonic() - started
    return Probe(ok, detail, latency)


def _http(health: HealthSpec, address: tuple[str, int]) -> tuple[bool, str]:
    conn = http.client.HTTPConnection(address[0], address[1], timeout=health.timeout)
    try:
        conn.request("GET", health.path, headers={"User-Agent": "diplo-health"})
        code = conn.getresponse().status
    except http.client.HTTPException as exc:
        return False, f"bad HTTP response: {exc.__class__.__name__}"
    finally:
        conn.close()
    ok = any(lo <= code <= hi for lo, hi in health.status)
    return ok, f"HTTP {code}"
