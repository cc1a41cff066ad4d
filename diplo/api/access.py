"""Who may use the API: two bearer tokens (admin: reads and actions; viewer: reads only),
and the Host header check that keeps a web page from reaching the API by DNS rebinding."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from typing import Any

from diplo.api.problems import Problem, problem_response

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _digest(token: str) -> bytes:
    # Compared as digests: equal lengths, so the comparison time says nothing of the token.
    return hashlib.sha256(token.encode()).digest()


class Access:
    """`open_reads`: GETs need no token (loopback, and the operator chose none)."""

    def __init__(self, admin: str, viewer: str | None = None, *, open_reads: bool = False):
        self._admin = _digest(admin)
        self._viewer = _digest(viewer) if viewer else None
        self.open_reads = open_reads
        # What signs the dashboard's session cookies: changing a token ends every session.
        self.session_key = self._key()

    def shared(self) -> dict[str, Any]:
        """What another process needs to check the same tokens: their digests, not them."""
        viewer = self._viewer.hex() if self._viewer else None
        return {"admin": self._admin.hex(), "viewer": viewer, "open_reads": self.open_reads}

    @classmethod
    def from_shared(cls, shared: dict[str, Any]) -> Access:
        out = cls.__new__(cls)
        out._admin = bytes.fromhex(shared["admin"])
        out._viewer = bytes.fromhex(shared["viewer"]) if shared["viewer"] else None
        out.open_reads = bool(shared["open_reads"])
        out.session_key = out._key()
        return out

    def _key(self) -> bytes:
        return hashlib.sha256(
            b"diplo-dashboard-session\0" + self._admin + (self._viewer or b"")
        ).digest()

    def role_of(self, token: str) -> str | None:
        """ "admin", "viewer" or None (no such token)."""
        digest = _digest(token)
        admin = hmac.compare_digest(digest, self._admin)
        # Both are compared, so timing does not tell which token was close.
        viewer = self._viewer is not None and hmac.compare_digest(digest, self._viewer)
        return "admin" if admin else "viewer" if viewer else None

    def check(self, authorization: str, *, act: bool) -> None:
        """Raise the 401/403 Problem of a request that may not read (or act, `act`)."""
        scheme, _, given = authorization.partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            if self.open_reads and not act:
                return
            raise Problem(401, "authentication required", "send Authorization: Bearer <token>")
        role = self.role_of(given)
        if role == "admin" or (role == "viewer" and not act):
            return
        if role == "viewer":
            raise Problem(403, "read-only token", "this token can read, not act")
        raise Problem(403, "invalid token")


def header(scope: dict[str, Any] | Any, name: bytes) -> str:
    return raw_header(scope, name).decode("latin-1")


def raw_header(scope: dict[str, Any] | Any, name: bytes) -> bytes:
    for key, value in scope["headers"]:  # a loop, not next() over a generator: 2x faster
        if key == name:
            return value
    return b""


def host_name(value: str) -> str:
    """The name part of a Host header: `[::1]:7700` -> `::1`, `Web.Local.:80` -> `web.local`."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


class HostCheck:
    """Answers 421 to a request whose Host is not a name of this server. A page loaded from
    evil.example whose name then resolves to 127.0.0.1 sends `Host: evil.example`. An IP
    address in Host cannot be rebound, so any is fine when listening on all interfaces."""

    def __init__(self, app: Any, listen_host: str, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.names = {host_name(n) for n in (*LOOPBACK_NAMES, listen_host, *allowed)}
        self.any_ip = listen_host in ("0.0.0.0", "::", "")
        self._good: set[bytes] = set()  # Host headers found good: the next is a set lookup

    def _allows_raw(self, scope: Any) -> bool:
        raw = raw_header(scope, b"host")
        if raw in self._good:
            return True
        good = self.allows(raw.decode("latin-1"))
        if good and len(self._good) < 64:  # a client's made-up names cannot fill memory
            self._good.add(raw)
        return good

    def allows(self, host: str) -> bool:
        name = host_name(host)
        if name in self.names:
            return True
        if not self.any_ip:
            return False
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and not self._allows_raw(scope):
            await receive()  # websocket.connect; a close before accepting answers 403
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] == "http" and not self._allows_raw(scope):
            answer = problem_response(
                421,
                "unknown host",
                "this server does not answer to that Host name; "
                "start `diplo serve` with --allowed-host NAME to add one",
            )
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)
