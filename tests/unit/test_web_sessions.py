"""The dashboard's session cookies and CSRF tokens."""

from __future__ import annotations

from diplo.api.access import Access
from diplo.web.sessions import LIFETIME, Sessions

KEY = Access("admin-token-for-the-session-tests", "viewer-token-for-the-sessions").session_key


def at(now: list[float]) -> Sessions:
    return Sessions(KEY, clock=lambda: now[0])


def test_a_session_reads_back_with_its_role_and_csrf_token():
    sessions = at([1000.0])
    cookie, issued = sessions.issue("admin")
    read = sessions.read(cookie)
    assert read == issued and read is not None
    assert read.admin and not read.anonymous and len(read.csrf) == 32
    assert sessions.csrf_ok(read, issued.csrf)
    assert not sessions.csrf_ok(read, "")
    assert not sessions.csrf_ok(read, sessions.issue("admin")[1].csrf)  # another session's


def test_a_tampered_cookie_is_no_session():
    sessions = at([1000.0])
    cookie, _ = sessions.issue("viewer")
    role, issued, nonce, sig = cookie.split(".")
    assert sessions.read(f"admin.{issued}.{nonce}.{sig}") is None  # promoted to admin
    assert sessions.read(f"{role}.{int(issued) + 60}.{nonce}.{sig}") is None  # made younger
    assert sessions.read(cookie + "x") is None
    assert sessions.read("") is None and sessions.read("a.b.c.d.e") is None


def test_a_session_ends_after_its_lifetime():
    now = [1000.0]
    sessions = at(now)
    cookie, _ = sessions.issue("admin")
    now[0] += LIFETIME - 1
    assert sessions.read(cookie) is not None
    now[0] += 1
    assert sessions.read(cookie) is None


def test_a_changed_token_ends_every_session():
    cookie, _ = Sessions(KEY).issue("admin")
    other = Access("another-admin-token-of-this-host", "viewer-token-for-the-sessions")
    assert Sessions(other.session_key).read(cookie) is None
    assert Sessions(KEY).read(cookie) is not None  # a restart with the same tokens keeps it


def test_a_signed_out_session_stays_out():
    sessions = at([1000.0])
    cookie, session = sessions.issue("admin")
    keep, _ = sessions.issue("admin")
    sessions.revoke(session)
    assert sessions.read(cookie) is None
    assert sessions.read(keep) is not None


def test_the_sign_in_forms_token_is_bound_to_its_nonce():
    sessions = at([1000.0])
    nonce, csrf = sessions.login_pair()
    other, _ = sessions.login_pair()
    assert sessions.login_ok(nonce, csrf)
    assert not sessions.login_ok(other, csrf)
    assert not sessions.login_ok(nonce, "") and not sessions.login_ok("", csrf)


def test_roles_of_the_tokens():
    access = Access("admin-token-for-the-session-tests", "viewer-token-for-the-sessions")
    assert access.role_of("admin-token-for-the-session-tests") == "admin"
    assert access.role_of("viewer-token-for-the-sessions") == "viewer"
    assert access.role_of("guess") is None and access.role_of("") is None
