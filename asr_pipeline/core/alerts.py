"""Alert delivery without a framework: an incoming webhook (JSON {"text": ...} POST, what Slack, Mattermost and
Teams accept) and e-mail over SMTP, plus the masking that keeps their secrets out of every log line.

Secrets (the webhook URL, which is itself the credential, and the SMTP password) are read from the environment when
a message is sent and are never stored, configured through Dagster, or printed: `describe()` and every error text
show them as scheme://host/***.
"""

from __future__ import annotations

import json
import os
import smtplib
import socket
import ssl
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from asr_pipeline.core.errors import ConfigError

SEND_TIMEOUT_S = 10.0
WEBHOOK = "webhook"
EMAIL = "email"
LOG = "log"


def mask_url(url: str) -> str:
    """scheme://host[:port]/***: enough to tell destinations apart, nothing that grants access."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>/***"
    return f"{parts.scheme}://{host}{port}/***"


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret (and the path/credentials part of each secret URL) replaced by ***."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, mask_url(secret) if "://" in secret else "***")
    return text


def _positive(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{name} must be a positive number, got {raw!r}")
    return value


@dataclass(frozen=True)
class FreshnessLimits:
    """How long each asset may fall behind before its freshness check fails (README, Configuration)."""

    max_pending_hours: float = 24.0
    max_training_lag_days: float = 2.0
    max_decision_lag_days: float = 7.0

    @classmethod
    def from_environment(cls) -> "FreshnessLimits":
        return cls(_positive("ASR_MAX_PENDING_HOURS", 24.0), _positive("ASR_MAX_TRAINING_LAG_DAYS", 2.0),
                   _positive("ASR_MAX_DECISION_LAG_DAYS", 7.0))


@dataclass(frozen=True)
class AlertConfig:
    """Where alerts go. The secret-bearing values are only ever held here, read from the environment."""

    webhook_url: str = ""
    smtp_url: str = ""
    email_to: tuple[str, ...] = ()
    email_from: str = ""
    repeat_hours: float = 24.0
    ui_url: str = ""
    digest: bool = False
    secrets: list[str] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def from_environment(cls) -> "AlertConfig":
        webhook = os.environ.get("ASR_ALERT_WEBHOOK", "").strip()
        smtp = os.environ.get("ASR_ALERT_SMTP_URL", "").strip()
        to = tuple(a.strip() for a in os.environ.get("ASR_ALERT_EMAIL_TO", "").split(",") if a.strip())
        if webhook and urlsplit(webhook).scheme not in ("http", "https"):
            raise ConfigError(f"ASR_ALERT_WEBHOOK must be an http(s) incoming-webhook URL, got {mask_url(webhook)}")
        if smtp and urlsplit(smtp).scheme not in ("smtp", "smtps", "smtp+starttls"):
            raise ConfigError("ASR_ALERT_SMTP_URL must look like smtp://user:password@host:587 (or smtps://, "
                              f"smtp+starttls://), got {mask_url(smtp)}")
        if bool(smtp) != bool(to):
            raise ConfigError("ASR_ALERT_SMTP_URL and ASR_ALERT_EMAIL_TO go together: set both to send e-mail")
        ui_url = os.environ.get("ASR_UI_URL", "").strip().rstrip("/")
        if ui_url and urlsplit(ui_url).scheme not in ("http", "https"):
            raise ConfigError(f"ASR_UI_URL must be the http(s) address of the Dagster UI, got {ui_url!r}")
        digest = os.environ.get("ASR_ALERT_DIGEST", "off").strip().lower()
        if digest not in ("on", "off", ""):
            raise ConfigError(f"ASR_ALERT_DIGEST must be on or off, got {digest!r}")
        password = unquote(urlsplit(smtp).password or "") if smtp else ""
        return cls(webhook_url=webhook, smtp_url=smtp, email_to=to,
                   email_from=os.environ.get("ASR_ALERT_EMAIL_FROM", "").strip()
                   or (f"asr-pipeline@{socket.getfqdn()}" if smtp else ""),
                   repeat_hours=_positive("ASR_ALERT_REPEAT_HOURS", 24.0), ui_url=ui_url, digest=digest == "on",
                   secrets=[s for s in (webhook, smtp, password, urlsplit(webhook).path if webhook else "") if s])

    def channels(self) -> list[str]:
        """The configured destinations; without one, messages go to the log only."""
        return [c for c, on in ((WEBHOOK, self.webhook_url), (EMAIL, self.smtp_url)) if on] or [LOG]

    def describe(self) -> dict:
        """For `status` and the sensor's description: destinations masked."""
        return {"webhook": mask_url(self.webhook_url) if self.webhook_url else None,
                "email": {"smtp": mask_url(self.smtp_url), "to": list(self.email_to)} if self.smtp_url else None,
                "channels": self.channels(), "repeat_hours": self.repeat_hours, "digest": self.digest,
                "ui_url": self.ui_url or None}

    def run_link(self, run_id: str | None) -> str | None:
        return f"{self.ui_url}/runs/{run_id}" if self.ui_url and run_id else None


class DeliveryError(RuntimeError):
    """A destination refused or could not be reached; the message is already redacted."""


def post_webhook(url: str, text: str, timeout: float = SEND_TIMEOUT_S) -> None:
    body = json.dumps({"text": text}, ensure_ascii=False).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json; charset=utf-8"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # non-2xx raises HTTPError
        response.read()


def send_email(smtp_url: str, sender: str, recipients: tuple[str, ...], subject: str, text: str,
               timeout: float = SEND_TIMEOUT_S) -> None:
    """smtp:// (STARTTLS when the server offers it), smtp+starttls:// (STARTTLS required), smtps:// (TLS)."""
    parts = urlsplit(smtp_url)
    message = EmailMessage()
    message["Subject"], message["From"], message["To"] = subject, sender, ", ".join(recipients)
    message.set_content(text)
    if parts.scheme == "smtps":
        client = smtplib.SMTP_SSL(parts.hostname, parts.port or 465, timeout=timeout,
                                  context=ssl.create_default_context())
    else:
        client = smtplib.SMTP(parts.hostname, parts.port or 25, timeout=timeout)
    with client:
        client.ehlo()
        if parts.scheme == "smtp+starttls" or (parts.scheme == "smtp" and client.has_extn("starttls")):
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
        if parts.username:
            client.login(unquote(parts.username), unquote(parts.password or ""))
        client.send_message(message)


def deliver(config: AlertConfig, channel: str, subject: str, text: str) -> None:
    """Send one message to one channel, or raise DeliveryError with a redacted reason."""
    try:
        if channel == WEBHOOK:
            post_webhook(config.webhook_url, text)
        elif channel == EMAIL:
            send_email(config.smtp_url, config.email_from, config.email_to, subject, text)
    except Exception as exc:  # noqa: BLE001 (whatever a destination does, the tick goes on; the next one retries)
        where = mask_url(config.webhook_url if channel == WEBHOOK else config.smtp_url)
        raise DeliveryError(redact(f"{channel} {where}: {type(exc).__name__}: {exc}", config.secrets)) from None
