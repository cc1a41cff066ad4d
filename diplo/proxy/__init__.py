"""The reverse proxy adapter: Caddy 2, run by Diplo in a container and configured only
through its admin API with JSON. `config` builds the JSON (pure), `admin` talks to the
admin socket, `certs` reads served certificates, `manager.Proxy` is what ops calls."""

from diplo.proxy.certs import Certificate
from diplo.proxy.config import CertFiles, ProxySettings, Route, build_config
from diplo.proxy.manager import Ensured, Proxy

__all__ = ["CertFiles", "Certificate", "Ensured", "Proxy", "ProxySettings", "Route", "build_config"]
