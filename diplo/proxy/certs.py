"""The certificate Caddy serves for a domain, read the way a browser sees it: a TLS
handshake to the proxy's HTTPS port with the domain as SNI (not verified: this reads
what is served, it trusts nothing)."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Certificate:
    domain: str
    issuer: str  # the issuer's common name; "" when no certificate is served (yet)
    not_after: datetime | None  # UTC
    error: str = ""  # why none could be read


def served(domain: str, port: int, host: str = "127.0.0.1", timeout: float = 3.0) -> Certificate:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sni = None if _is_ip(domain) else domain  # no SNI for an address (RFC 6066)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        return Certificate(domain, "", None, str(exc) or type(exc).__name__)
    if not der:
        return Certificate(domain, "", None, "no certificate served")
    cert = x509.load_der_x509_certificate(der)
    names = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer = str(names[0].value) if names else cert.issuer.rfc4514_string()
    return Certificate(domain, issuer, cert.not_valid_after_utc)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False
