"""Running health probes: HTTP and TCP from this host against the app's published port
(or the container's address when the port is not published), and commands inside the
container through the runtime. Every probe has a total timeout, and none raises."""

from __future__ import annotations

import socket
import time
import urllib.parse

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
        if rp.key == f"{health.port}/tcp" and rp.host_port:  # 0: ephemeral, per container
            host = rp.host_ip if rp.host_ip not in ("", "0.0.0.0", "::") else "127.0.0.1"
            return host, rp.host_port
    return (container_ip, health.port) if container_ip else None


def run_probe(
    health: HealthSpec,
    address: tuple[str, int] | None,
    runtime: Runtime,
    container_id: str,
) -> Probe:
    """One probe. Never raises: whatever goes wrong is a failed probe with its reason,
    so an odd manifest value or a bug can never get past the health gate."""
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
    except Exception as exc:
        ok, detail = False, f"probe error: {type(exc).__name__}: {exc}"[:300]
    latency = time.monotonic() - started
    return Probe(ok, detail, latency)


# What a path may hold as it is (RFC 3986 pchar, "/", "?" and a query); anything else,
# non-ASCII or control characters included, is percent-encoded.
_PATH_SAFE = "/?:@!$&'()*+,;=-._~%"
MAX_HEAD = 16 * 1024  # bytes read at most: the status line is all a probe needs


def request_target(path: str) -> str:
    return urllib.parse.quote(path, safe=_PATH_SAFE) or "/"


def _http(health: HealthSpec, address: tuple[str, int]) -> tuple[bool, str]:
    """GET the path and read the status line, all within `health.timeout` in total: a
    server that trickles bytes cannot hold the probe past its timeout."""
    deadline = time.monotonic() + health.timeout

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    host, port = address
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = (
        f"GET {request_target(health.path)} HTTP/1.1\r\nHost: {authority}\r\n"
        "User-Agent: diplo-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    with socket.create_connection(address, timeout=left()) as sock:
        sock.settimeout(left())
        sock.sendall(request)
        head = b""
        while b"\r\n" not in head:
            if len(head) >= MAX_HEAD:
                return False, "bad HTTP response: no status line in the first 16 KiB"
            sock.settimeout(left())
            chunk = sock.recv(1024)
            if not chunk:
                break
            head += chunk
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return False, "bad HTTP response: " + (repr(line[:60]) if line else "empty")
    code = int(parts[1])
    ok = any(lo <= code <= hi for lo, hi in health.status)
    return ok, f"HTTP {code}"
