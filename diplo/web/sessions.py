"""The dashboard's sign-in: a token from the API's (admin or viewer) exchanged for a
signed session cookie, and the CSRF token bound to that session. The cookie is stateless
(signed with a key derived from the tokens), so sessions outlive a restart of
`diplo serve` and all end when a token changes; a signed-out session is remembered as
revoked until it would have expired anyway."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "diplo_session"
LOGIN_COOKIE = "diplo_login"  # binds the sign-in form's CSRF token to this browser
LIFETIME = 12 * 3600  # s: a session's age at which it must sign in again
ROLES = ("admin", "viewer")


@dataclass(frozen=True)
class Session:
    role: str  # admin | viewer
    nonce: str  # "" for the anonymous viewer of open reads (no cookie, no actions)
    issued: int
    csrf: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def anonymous(self) -> bool:
        return not self.nonce


ANONYMOUS = Session("viewer", "", 0, "")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Sessions:
    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._clock = clock
        self._revoked: dict[str, float] = {}  # nonce -> when it would expire
        self._lock = threading.Lock()

    def _sign(self, what: str) -> str:
        return _b64(hmac.new(self._key, what.encode(), hashlib.sha256).digest())

    def _csrf(self, nonce: str) -> str:
        return self._sign(f"csrf.{nonce}")[:32]

    def issue(self, role: str) -> tuple[str, Session]:
        """A new session of `role`: the cookie's value and the session."""
        if role not in ROLES:
            raise ValueError(role)
        nonce = secrets.token_urlsafe(16)
        issued = int(self._clock())
        body = f"{role}.{issued}.{nonce}"
        return f"{body}.{self._sign(body)}", Session(role, nonce, issued, self._csrf(nonce))

    def read(self, cookie: str) -> Session | None:
        """The session a cookie holds; None when it is forged, expired or signed out."""
        parts = cookie.split(".")
        if len(parts) != 4:
            return None
        role, issued, nonce, sig = parts
        if not hmac.compare_digest(sig, self._sign(f"{role}.{issued}.{nonce}")):
            return None
        if role not in ROLES or not issued.isdigit():
            return None
        now = self._clock()
        if not 0 <= now - int(issued) < LIFETIME:
            return None
        with self._lock:
            if nonce in self._revoked:
                return None
        return Session(role, nonce, int(issued), self._csrf(nonce))

    def revoke(self, session: Session) -> None:
        now = self._clock()
        with self._lock:
            self._revoked = {n: t for n, t in self._revoked.items() if t > now}
            self._revoked[session.nonce] = session.issued + LIFETIME

    def csrf_ok(self, session: Session, given: str) -> bool:
        """Whether `given` is this session's CSRF token (the anonymous one has none)."""
        return bool(session.csrf) and hmac.compare_digest(given.encode(), session.csrf.encode())

    def login_pair(self) -> tuple[str, str]:
        """A sign-in form's nonce (set as LOGIN_COOKIE) and its CSRF token (in the form)."""
        nonce = secrets.token_urlsafe(16)
        return nonce, self._sign(f"login.{nonce}")[:32]

    def login_ok(self, nonce: str, given: str) -> bool:
        if not nonce or not given:
            return False
        return hmac.compare_digest(given.encode(), self._sign(f"login.{nonce}")[:32].encode())
