"""A client of Caddy's admin API over its UNIX socket.

httpx (a runtime dependency for this) speaks HTTP over a UNIX socket with timeouts and
one exception tree, which the standard library's http.client would need a socket
subclass for. Every failure becomes a ProxyError here: ProxyUnavailable when Caddy does
not answer, ProxyRejected with Caddy's own message when it refuses a request. A refused
load changes nothing: Caddy keeps serving the config it had."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from diplo.errors import ProxyRejected, ProxyUnavailable

HINT = "check the proxy container (`docker ps -a --filter label=diplo.role=proxy`)"


class AdminClient:
    def __init__(self, socket_path: str | Path, timeout: float = 10.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=self.socket_path),
            base_url="http://localhost",  # Caddy checks Host; the config allows "localhost"
            timeout=timeout,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the calls Diplo makes -------------------------------------------------------------

    def config(self) -> Any:
        """The config Caddy runs (None when it runs none)."""
        return self._request("GET", "/config/", "reading its config").json()

    def load(self, config: dict[str, Any]) -> None:
        """Replace the whole config, atomically: on a refusal the old one keeps serving."""
        self._request("POST", "/load", "loading a config", json=config)

    def get(self, ident: str, path: str = "") -> Any:
        """The config object with this `@id` (or a path below it)."""
        return self._request("GET", f"/id/{ident}/{path}", f"reading {ident}").json()

    def set_upstreams(self, ident: str, upstreams: Sequence[str]) -> None:
        """Replace the upstreams of the reverse_proxy handler `ident`, atomically."""
        body = [{"dial": u} for u in upstreams]
        self._request("PATCH", f"/id/{ident}/upstreams", f"switching {ident}", json=body)

    def upstreams(self) -> dict[str, int]:
        """Requests in flight per upstream address, for every upstream Caddy knows."""
        rows = self._request("GET", "/reverse_proxy/upstreams", "reading its upstreams").json()
        return {str(r["address"]): int(r.get("num_requests") or 0) for r in rows or []}

    def root_ca(self) -> str:
        """The PEM root certificate of Caddy's internal CA (it signs `tls: internal`)."""
        info = self._request("GET", "/pki/ca/local", "reading its internal CA").json()
        return str(info["root_certificate"])

    # --- transport -----------------------------------------------------------------------

    def _request(self, method: str, path: str, what: str, json: Any = None) -> httpx.Response:
        try:
            try:
                resp = self._client.request(method, path, json=json)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                # Caddy restarts its admin server on a new config: the kept-alive
                # connection a read reuses right after a load can be reset. Reads
                # change nothing, so one more try, on a new connection, is safe.
                if method != "GET":
                    raise
                resp = self._client.request(method, path, json=json)
        except httpx.TimeoutException as exc:
            raise ProxyUnavailable(
                f"Caddy's admin API ({self.socket_path}) did not answer within "
                f"{self.timeout:g} s while {what}",
                hint=HINT,
            ) from exc
        except httpx.HTTPError as exc:
            raise ProxyUnavailable(
                f"cannot reach Caddy's admin API ({self.socket_path}) while {what}: {_reason(exc)}",
                hint=HINT,
            ) from exc
        if resp.status_code >= 400:
            raise ProxyRejected(f"Caddy refused {what}: {_caddy_message(resp)}")
        return resp


def _reason(exc: httpx.HTTPError) -> str:
    """Drop the errno prefix: "[Errno 2] No such file..." -> "no such file..."."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc).strip())
    return (text[:1].lower() + text[1:]) if text else type(exc).__name__


def _caddy_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"]).strip()
    text = resp.text.strip()
    return text[:500] if text else f"HTTP {resp.status_code}"
