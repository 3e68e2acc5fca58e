"""Real destinations for alert tests: an incoming-webhook HTTP server and an SMTP server (aiosmtpd) with login."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

WEBHOOK_TOKEN = "T0SECRET/B0SECRET/xoxWebhookToken42"
SMTP_USER, SMTP_PASSWORD = "alerts", "S3cret-SMTP-pass"
ALERT_VARIABLES = ["ASR_ALERT_WEBHOOK", "ASR_ALERT_SMTP_URL", "ASR_ALERT_EMAIL_TO", "ASR_ALERT_EMAIL_FROM",
                   "ASR_ALERT_REPEAT_HOURS", "ASR_ALERT_DIGEST", "ASR_UI_URL", "ASR_MAX_PENDING_HOURS",
                   "ASR_MAX_TRAINING_LAG_DAYS", "ASR_MAX_DECISION_LAG_DAYS"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class WebhookServer:
    """Records each JSON POST; `status` is what it answers (500 plays a destination that is down)."""

    def __init__(self):
        self.received: list[dict] = []
        self.requests = 0
        self.status = 200
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.requests += 1
                if server.status == 200:
                    server.received.append({"path": self.path, "body": json.loads(body)})
                self.send_response(server.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/services/{WEBHOOK_TOKEN}"

    @property
    def texts(self) -> list[str]:
        return [r["body"]["text"] for r in self.received]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class MailServer:
    """aiosmtpd on a free port that requires LOGIN/PLAIN with SMTP_USER/SMTP_PASSWORD and keeps every message."""

    def __init__(self):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.messages = []
        outer = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
                outer.messages.append(envelope)
                return "250 OK"

        def authenticate(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login == SMTP_USER.encode() and auth_data.password == SMTP_PASSWORD.encode()
            return AuthResult(success=ok, handled=False)  # False: the server answers 535 itself

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, authenticator=authenticate,
                                     auth_required=True, auth_require_tls=False)
        self.controller.start()
        self.url = f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{self.port}"

    def mails(self) -> list:
        import email
        from email import policy

        return [email.message_from_bytes(m.content, policy=policy.default) for m in self.messages]

    def close(self):
        self.controller.stop()


@pytest.fixture()
def no_alert_environment(monkeypatch):
    for name in ALERT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def webhook(no_alert_environment):
    server = WebhookServer()
    yield server
    server.close()


@pytest.fixture()
def mail_server(no_alert_environment):
    server = MailServer()
    yield server
    server.close()
