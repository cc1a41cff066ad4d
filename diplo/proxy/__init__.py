"""The reverse proxy adapter: Caddy 2, run by Diplo in a container and configured only
through its admin API with JSON. `config` builds the JSON (pure), `admin` talks to the
admin socket, `certs` reads served certificates, `manager.Proxy` is what ops calls.

The names below are imported on first use: a deploy of apps without domains never loads
the admin client (httpx) or the certificate reader (cryptography)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diplo.proxy.certs import Certificate
    from diplo.proxy.config import CertFiles, ProxySettings, Route, build_config
    from diplo.proxy.manager import Ensured, Proxy

_WHERE = {
    "Certificate": "certs",
    "CertFiles": "config",
    "ProxySettings": "config",
    "Route": "config",
    "build_config": "config",
    "Ensured": "manager",
    "Proxy": "manager",
}

__all__ = ["CertFiles", "Certificate", "Ensured", "Proxy", "ProxySettings", "Route", "build_config"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'diplo.proxy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"diplo.proxy.{_WHERE[name]}"), name)
