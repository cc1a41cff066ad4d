"""The channels a notification goes out on: a JSON webhook (signed with HMAC-SHA256),
Slack- and Discord-compatible webhooks, e-mail over SMTP, and apprise URLs. Secrets (a
webhook's key, an SMTP password, and the URLs themselves: Slack's and Discord's carry
their token) are read once at start from a file or the environment, and never shown:
logs, errors and GET /alerts see a URL's scheme and host only."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from diplo import __version__
from diplo.errors import DiploError, InputError
from diplo.hostconfig import (
    AppriseChannel,
    Channel,
    DiscordChannel,
    EmailChannel,
    SlackChannel,
    WebhookChannel,
)

TIMEOUT = 10.0
SIGNATURE = "X-Diplo-Signature"


class DeliveryError(DiploError):
    """A channel did not take a notification (retried with backoff)."""


class Sender(Protocol):
    name: str
    kind: str
    target: str  # masked: safe to show

    def send(self, payload: dict[str, Any]) -> None: ...


def mask_url(url: str) -> str:
    """`https://hooks.slack.com/***`: where it goes, not the token in its path or query."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}/***" if parts.scheme else "***"


def read_secret(path: str | None, env: str | None, what: str) -> str | None:
    """A secret from a file or an environment variable; errors name where, never what."""
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(f"{what}: cannot read {path}: {exc.strerror}") from exc
        if not value:
            raise InputError(f"{what}: {path} is empty")
        return value
    if env:
        value = os.environ.get(env, "").strip()
        if not value:
            raise InputError(f"{what}: the environment variable {env} is not set")
        return value
    return None


@dataclass
class _Masking:
    secrets: tuple[str, ...]

    def clean(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            if secret:
                text = text.replace(secret, mask_url(secret) if "://" in secret else "***")
        return text


class HttpSender:
    """A POST of JSON to a URL: the generic webhook, Slack and Discord."""

    def __init__(self, name: str, kind: str, url: str, secret: str | None = None) -> None:
        self.name, self.kind, self.url, self.secret = name, kind, url, secret
        self.target = mask_url(url)
        self._mask = _Masking(tuple(s for s in (url, secret) if s))

    def body(self, payload: dict[str, Any]) -> bytes:
        if self.kind == "slack":
            return json.dumps({"text": payload["text"]}).encode()
        if self.kind == "discord":
            return json.dumps({"content": payload["text"][:2000]}).encode()
        return json.dumps(payload, sort_keys=True).encode()

    def headers(self, body: bytes, payload: dict[str, Any]) -> dict[str, str]:
        out = {"Content-Type": "application/json", "User-Agent": f"diplo/{__version__}"}
        if self.kind == "webhook":
            out["X-Diplo-Event"] = f"alert.{payload['state']}"
            if self.secret:
                digest = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
                out[SIGNATURE] = f"sha256={digest}"
        return out

    def send(self, payload: dict[str, Any]) -> None:
        body = self.body(payload)
        try:
            resp = httpx.post(
                self.url, content=body, headers=self.headers(body, payload), timeout=TIMEOUT
            )
        except httpx.HTTPError as exc:
            # from None: the cause's text may hold the URL's token
            text = self._mask.clean(f"{self.target}: {type(exc).__name__}: {exc}")
            raise DeliveryError(text) from None
        if not 200 <= resp.status_code < 300:
            raise DeliveryError(f"{self.target} answered {resp.status_code}")


class EmailSender:
    def __init__(self, name: str, cfg: EmailChannel, password: str | None) -> None:
        self.name, self.kind, self.cfg, self.password = name, "email", cfg, password
        self.port = cfg.port or (465 if cfg.security == "ssl" else 587)
        self.target = f"smtp://{cfg.host}:{self.port} to {', '.join(cfg.to)}"
        self._mask = _Masking((password,) if password else ())

    def message(self, payload: dict[str, Any]) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = f"[{str(payload['state']).upper()}] {payload['alert']}"
        msg["From"] = self.cfg.sender
        msg["To"] = ", ".join(self.cfg.to)
        lines = [payload["text"], ""]
        lines += [f"{k}: {payload[k]}" for k in ("alert", "state", "value", "threshold", "since")]
        if payload.get("resolved_at"):
            lines.append(f"resolved_at: {payload['resolved_at']}")
        msg.set_content("\n".join(lines) + "\n")
        return msg

    def send(self, payload: dict[str, Any]) -> None:
        cfg = self.cfg
        try:
            smtp: smtplib.SMTP
            if cfg.security == "ssl":
                context = ssl.create_default_context()
                smtp = smtplib.SMTP_SSL(cfg.host, self.port, timeout=TIMEOUT, context=context)
            else:
                smtp = smtplib.SMTP(cfg.host, self.port, timeout=TIMEOUT)
            with smtp:
                if cfg.security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if cfg.username:
                    smtp.login(cfg.username, self.password or "")
                smtp.send_message(self.message(payload))
        except (OSError, smtplib.SMTPException) as exc:
            text = self._mask.clean(f"{self.target}: {type(exc).__name__}: {exc}")
            raise DeliveryError(text) from None


class AppriseSender:
    """Any of apprise's services; imported only when a channel uses it."""

    def __init__(self, name: str, urls: list[str]) -> None:
        self.name, self.kind, self.urls = name, "apprise", urls
        self.target = ", ".join(mask_url(u) for u in urls)
        self._mask = _Masking(tuple(urls))

    def send(self, payload: dict[str, Any]) -> None:
        try:
            import apprise
        except ImportError as exc:
            raise DeliveryError("apprise is not installed (pip install apprise)") from exc
        notifier = apprise.Apprise()
        for url in self.urls:
            if not notifier.add(url):
                raise DeliveryError(f"apprise does not know the URL {mask_url(url)}")
        title = payload["text"].split(":")[0]
        try:
            ok = notifier.notify(body=payload["text"], title=title)
        except Exception as exc:  # apprise's plugins raise what their libraries raise
            text = self._mask.clean(f"apprise: {type(exc).__name__}: {exc}")
            raise DeliveryError(text) from None
        if not ok:
            raise DeliveryError(f"apprise could not deliver to {self.target}")


def senders(channels: list[Channel], names: list[str]) -> list[Sender]:
    """The channels of the host's config, their secrets read now (an error names the
    channel and where the secret was to come from)."""
    out: list[Sender] = []
    for name, ch in zip(names, channels, strict=True):
        what = f"alerts channel {name}"
        if isinstance(ch, WebhookChannel | SlackChannel | DiscordChannel):
            url = ch.url or read_secret(ch.url_file, ch.url_env, what)
            assert url is not None  # one of the three is required
            if not url.startswith(("http://", "https://")):
                raise InputError(f"{what}: the URL must be http:// or https://")
            secret = None
            if isinstance(ch, WebhookChannel):
                secret = read_secret(ch.secret_file, ch.secret_env, what)
            out.append(HttpSender(name, ch.type, url, secret))
        elif isinstance(ch, EmailChannel):
            password = read_secret(ch.password_file, ch.password_env, what)
            out.append(EmailSender(name, ch, password))
        elif isinstance(ch, AppriseChannel):
            urls = list(ch.urls)
            if text := read_secret(ch.urls_file, None, what):
                urls += text.split()
            if text := read_secret(None, ch.urls_env, what):
                urls += text.split()
            out.append(AppriseSender(name, urls))
    return out
