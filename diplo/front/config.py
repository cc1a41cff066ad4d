"""How the API is reached from outside, and the uvicorn set-up that says so: the front's
(`diplo serve`) and the in-process server of the tests use the same one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn


@dataclass(frozen=True)
class Exposure:
    """How the API is reached: extra Host names it answers to, the reverse proxies whose
    X-Forwarded-For it believes, and its TLS certificate and key."""

    allowed_hosts: Sequence[str] = ()
    trusted_proxies: Sequence[str] = ()
    tls: tuple[Path, Path] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def as_dict(self) -> dict[str, Any]:
        tls = [str(p) for p in self.tls] if self.tls else None
        return {
            "allowed": list(self.allowed_hosts),
            "trusted": list(self.trusted_proxies),
            "tls": tls,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Exposure:
        tls = (Path(data["tls"][0]), Path(data["tls"][1])) if data["tls"] else None
        return cls(data["allowed"], data["trusted"], tls)


def server_config(app: Any, host: str, port: int, exposure: Exposure) -> uvicorn.Config:
    tls: dict[str, Any] = {}
    if exposure.tls:
        tls = {"ssl_certfile": str(exposure.tls[0]), "ssl_keyfile": str(exposure.tls[1])}
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=2,
        access_log=False,
        # X-Forwarded-For decides the client address of the rate limits and stream caps:
        # believed only from proxies the operator named.
        proxy_headers=bool(exposure.trusted_proxies),
        forwarded_allow_ips=list(exposure.trusted_proxies) or None,
        **tls,
    )
