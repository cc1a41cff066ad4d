"""The alert channels against real local servers: an http.server receiving the JSON
webhook (its HMAC checked), Slack's and Discord's shapes and apprise's json:// URL, and
aiosmtpd receiving the e-mail; retries with backoff of a failing channel, its failure
reported without the URL's token; and the secrets read from files and the environment."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller as SmtpController
from aiosmtpd.smtp import AuthResult

from diplo.alerts import delivery
from diplo.alerts.channels import (
    SIGNATURE,
    AppriseSender,
    DeliveryError,
    EmailSender,
    HttpSender,
    mask_url,
    senders,
)
from diplo.alerts.delivery import Dispatcher
from diplo.alerts.state import AlertBook, Reading
from diplo.errors import InputError
from diplo.hostconfig import EmailChannel, parse_config

from .certs import self_signed
from .cliworld import free_port

TOKEN = "T0KEN-in-the-path-xyz"


@dataclass
class Receiver:
    """A local HTTP server that records each POST; the first `fail` answers are 500."""

    fail: int = 0
    got: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str = f"/hook/{TOKEN}") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if rec.fail > 0:
                rec.fail -= 1
                self.send_response(500)
            else:
                rec.got.append((self.path, dict(self.headers), body))
                self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[int, Inbox]]:
    inbox = Inbox()
    port = free_port()  # aiosmtpd checks its port by connecting: not 0
    ctl = SmtpController(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    yield port, inbox
    ctl.stop()


PAYLOAD = {
    "alert": "memory:web",
    "rule": "memory",
    "subject": "web",
    "app": "web",
    "state": "firing",
    "since": 1.0,
    "resolved_at": None,
    "value": "61.0%",
    "threshold": "50%",
    "message": "web: memory 61.0% of its limit (above 50%)",
    "host": "h",
    "text": "[FIRING] memory:web: web: memory 61.0% of its limit (above 50%) (on h)",
}


def test_the_json_webhook_is_signed_with_hmac_sha256(receiver: Receiver):
    HttpSender("hook", "webhook", receiver.url(), secret="s3cret").send(PAYLOAD)
    ((path, headers, body),) = receiver.got
    assert path == f"/hook/{TOKEN}" and json.loads(body) == PAYLOAD
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE] == f"sha256={expected}"
    assert headers["X-Diplo-Event"] == "alert.firing"


def test_slack_and_discord_get_their_own_shapes(receiver: Receiver):
    HttpSender("s", "slack", receiver.url("/slack")).send(PAYLOAD)
    HttpSender("d", "discord", receiver.url("/discord")).send(PAYLOAD)
    slack, discord = (json.loads(b) for _, _, b in receiver.got)
    assert slack == {"text": PAYLOAD["text"]} and discord == {"content": PAYLOAD["text"]}
    assert SIGNATURE not in receiver.got[0][1]


def test_apprise_reaches_a_json_url(receiver: Receiver):
    AppriseSender("a", [f"json://127.0.0.1:{receiver.port}/apprise"]).send(PAYLOAD)
    ((path, _, body),) = receiver.got
    assert path == "/apprise" and PAYLOAD["text"] in json.loads(body)["message"]


def test_a_failing_url_says_so_without_its_token(receiver: Receiver):
    receiver.fail = 1
    sender = HttpSender("s", "slack", receiver.url())
    with pytest.raises(DeliveryError, match="answered 500") as exc:
        sender.send(PAYLOAD)
    assert TOKEN not in exc.value.message
    closed = HttpSender("s", "slack", f"http://127.0.0.1:1/{TOKEN}")
    with pytest.raises(DeliveryError) as exc:
        closed.send(PAYLOAD)
    assert TOKEN not in exc.value.message and "127.0.0.1:1/***" in exc.value.message
    assert sender.target == f"http://127.0.0.1:{receiver.port}/***"
    assert mask_url("https://hooks.slack.com/services/T/B/X?x=1") == "https://hooks.slack.com/***"


def test_email_over_smtp(smtp: tuple[int, Inbox]):
    port, inbox = smtp
    cfg = EmailChannel.model_validate(
        {
            "type": "email",
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "from": "diplo@example.com",
            "to": ["ops@example.com"],
        }
    )
    EmailSender("mail", cfg, None).send(PAYLOAD)
    (msg,) = inbox.messages
    assert msg.rcpt_tos == ["ops@example.com"] and msg.mail_from == "diplo@example.com"
    mail = email.message_from_bytes(msg.content, policy=email.policy.default)
    assert mail["Subject"] == "[FIRING] memory:web"
    assert "value: 61.0%" in mail.get_content() and PAYLOAD["message"] in mail.get_content()


def test_starttls_to_a_server_without_it_is_a_delivery_error(smtp: tuple[int, Inbox]):
    port, _ = smtp
    cfg = EmailChannel.model_validate(
        {
            "type": "email",
            "host": "127.0.0.1",
            "port": port,
            "username": "u",
            "from": "d@example.com",
            "to": ["o@example.com"],
        }
    )
    with pytest.raises(DeliveryError, match=r"STARTTLS|starttls"):
        EmailSender("mail", cfg, "pa55word").send(PAYLOAD)


@pytest.fixture
def tls_smtp(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, int, Inbox, list[tuple[str, str]], Path]]:
    """An SMTP server over TLS with a self-signed certificate: implicit TLS (`ssl`, port
    465's way) or STARTTLS required before AUTH (`starttls`); it records each login."""
    security: str = request.param
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    logins: list[tuple[str, str]] = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=True)

    # aiosmtpd offers AUTH before STARTTLS only when told that TLS need not come first:
    # over implicit TLS it has come first.
    tls: dict[str, Any] = (
        {"ssl_context": context, "auth_require_tls": False}
        if security == "ssl"
        else {"tls_context": context, "require_starttls": True, "auth_require_tls": True}
    )
    inbox, port = Inbox(), free_port()
    ctl = SmtpController(inbox, hostname="127.0.0.1", port=port, authenticator=authenticate, **tls)
    ctl.start()
    yield security, port, inbox, logins, cert
    ctl.stop()


def email_to(port: int, security: str) -> EmailChannel:
    return EmailChannel.model_validate(
        {
            "type": "email",
            "host": "127.0.0.1",
            "port": port,
            "security": security,
            "username": "diplo",
            "from": "diplo@example.com",
            "to": ["ops@example.com"],
        }
    )


@pytest.mark.parametrize("tls_smtp", ["ssl", "starttls"], indirect=True)
def test_email_over_tls_logs_in_and_is_delivered(
    tls_smtp: tuple[str, int, Inbox, list[tuple[str, str]], Path],
    monkeypatch: pytest.MonkeyPatch,
):
    security, port, inbox, logins, cert = tls_smtp
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the host's CAs: here, this one cert
    EmailSender("mail", email_to(port, security), "pa55word-of-the-relay").send(PAYLOAD)
    assert logins == [("diplo", "pa55word-of-the-relay")]
    (msg,) = inbox.messages
    assert msg.rcpt_tos == ["ops@example.com"]
    mail = email.message_from_bytes(msg.content, policy=email.policy.default)
    assert mail["Subject"] == "[FIRING] memory:web"


@pytest.mark.parametrize("tls_smtp", ["ssl", "starttls"], indirect=True)
def test_a_server_whose_certificate_is_not_trusted_gets_no_password(
    tls_smtp: tuple[str, int, Inbox, list[tuple[str, str]], Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
):
    security, port, inbox, logins, _ = tls_smtp
    (tmp_path / "other").mkdir()
    other, _ = self_signed(tmp_path / "other")
    monkeypatch.setenv("SSL_CERT_FILE", str(other))  # trusts another cert, not the server's
    with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED") as failed:
        EmailSender("mail", email_to(port, security), "pa55word-of-the-relay").send(PAYLOAD)
    assert "pa55word" not in str(failed.value)
    assert logins == [] and inbox.messages == []


def test_a_failing_channel_is_retried_with_backoff_and_reported(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(delivery, "BACKOFF", (0.05, 0.2))
    receiver.fail = 2
    book = AlertBook(None)
    failures: list[tuple[str, str]] = []
    dispatcher = Dispatcher(
        [HttpSender("hook", "webhook", receiver.url())],
        book.delivered,
        lambda ch, err: failures.append((ch, err)),
        retries=3,
    )
    dispatcher.start()
    try:
        book.observe("down", "web", Reading("web", message="web is crashed"), now=0)
        for note in book.due(0):
            dispatcher.send(note)
        deadline = time.monotonic() + 10
        while not receiver.got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(receiver.got) == 1
        while not dispatcher.idle():
            time.sleep(0.02)
    finally:
        dispatcher.stop()
    assert [c for c, _ in failures] == ["hook", "hook"] and "answered 500" in failures[0][1]
    (alert,) = book.firing()
    assert (
        alert.deliveries["hook"]["status"] == "sent" and alert.deliveries["hook"]["attempts"] == 3
    )
    (status,) = dispatcher.status()
    assert (status["sent"], status["failed"], status["queued"]) == (1, 2, 0)
    assert TOKEN not in json.dumps(status) and "answered 500" in status["last_error"]


def test_a_channel_that_never_answers_is_given_up_after_its_retries(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(delivery, "BACKOFF", (0.01, 0.01))
    book = AlertBook(None)
    dispatcher = Dispatcher(
        [HttpSender("dead", "webhook", f"http://127.0.0.1:1/{TOKEN}")],
        book.delivered,
        lambda *_: None,
        retries=2,
    )
    dispatcher.start()
    try:
        book.observe("down", "web", Reading("web"), now=0)
        for note in book.due(0):
            dispatcher.send(note)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            book.firing()[0].deliveries.get("dead", {}).get("status") != "failed"
        ):
            time.sleep(0.02)
    finally:
        dispatcher.stop()
    got = book.firing()[0].deliveries["dead"]
    assert got["status"] == "failed" and got["attempts"] == 3 and TOKEN not in got["error"]
    assert dispatcher.status()[0]["dropped"] == 1


def test_channels_read_their_secrets_from_files_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "secret").write_text("file-secret\n")
    monkeypatch.setenv("SLACK_URL", f"https://hooks.slack.com/services/{TOKEN}")
    config = parse_config(
        f"""
alerts:
  channels:
    - {{type: webhook, url: "http://127.0.0.1:9/h", secret_file: {tmp_path / "secret"}}}
    - {{type: slack, url_env: SLACK_URL}}
    - {{type: email, name: mail, host: smtp.example.com, from: a@example.com, to: [b@example.com],
        password_env: SLACK_URL}}
    - {{type: apprise, urls: ["json://127.0.0.1:9/x"]}}
"""
    ).alerts
    made = senders(config.channels, config.channel_names())
    assert [s.name for s in made] == ["webhook", "slack", "mail", "apprise"]
    assert made[0].secret == "file-secret"  # type: ignore[attr-defined]
    assert made[1].target == "https://hooks.slack.com/***"


@pytest.mark.parametrize(
    ("channel", "says"),
    [
        ("{type: slack, url_env: NOT_SET_ANYWHERE}", "NOT_SET_ANYWHERE is not set"),
        (
            "{type: webhook, url: http://x/h, secret_file: /nonexistent/s}",
            "cannot read /nonexistent/s",
        ),
        ("{type: slack, url: 'ftp://x/y'}", "must be http:// or https://"),
    ],
)
def test_a_missing_secret_stops_serve_naming_where_it_was_to_come_from(channel, says):
    config = parse_config(f"alerts:\n  channels: [{channel}]\n").alerts
    with pytest.raises(InputError, match=says):
        senders(config.channels, config.channel_names())


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("alerts: {channels: [{type: slack}]}", "exactly one of url, url_file, url_env"),
        ("alerts: {channels: [{type: pager, url: x}]}", "does not match any of the expected"),
        (
            "alerts: {channels: [{type: slack, url: 'http://a'}, {type: discord, name: slack, "
            "url: 'http://b'}]}",
            "two channels are named alike",
        ),
        ("alerts: {channels: [{type: email, host: h, from: a@b}]}", "to"),
    ],
)
def test_bad_channels_are_refused_by_the_host_config(text, says):
    with pytest.raises(InputError, match=says):
        parse_config(text)
