"""Alert delivery against real destinations (a local HTTP server, a local SMTP server with login), masking, the
dedupe ledger."""

import logging
import threading

import pytest

from asr_pipeline.core.alert_ledger import AlertLedger, Problem, locked_ledger
from asr_pipeline.core.alerts import (EMAIL, LOG, WEBHOOK, AlertConfig, DeliveryError, FreshnessLimits, deliver,
                                      mask_url)
from asr_pipeline.core.errors import ConfigError
from asr_pipeline_tests.alert_servers import (SMTP_PASSWORD, WEBHOOK_TOKEN, free_port, mail_server,  # noqa: F401
                                              no_alert_environment, webhook)

HOUR = 3600.0
# the test SMTP server takes a password over plain TCP on localhost, on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


def test_webhook_receives_json_text(webhook, monkeypatch):
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    config = AlertConfig.from_environment()
    assert config.channels() == [WEBHOOK]
    deliver(config, WEBHOOK, "subject", "배치 ids-0000000001-0000000010 막힘")
    assert webhook.received == [{"path": webhook.url.split(str(webhook.httpd.server_port))[1],
                                 "body": {"text": "배치 ids-0000000001-0000000010 막힘"}}]


def test_email_logs_in_and_arrives(mail_server, monkeypatch):
    monkeypatch.setenv("ASR_ALERT_SMTP_URL", mail_server.url)
    monkeypatch.setenv("ASR_ALERT_EMAIL_TO", "ml-team@example.org, oncall@example.org")
    monkeypatch.setenv("ASR_ALERT_EMAIL_FROM", "asr@example.org")
    config = AlertConfig.from_environment()
    deliver(config, EMAIL, "[asr_pipeline] batch blocked", "line one\nline two")
    [mail] = mail_server.mails()
    assert mail["Subject"] == "[asr_pipeline] batch blocked" and mail["From"] == "asr@example.org"
    assert mail["To"] == "ml-team@example.org, oncall@example.org"
    assert mail.get_content().replace("\r\n", "\n").strip() == "line one\nline two"
    assert mail_server.messages[0].rcpt_tos == ["ml-team@example.org", "oncall@example.org"]


def test_wrong_smtp_password_is_a_masked_delivery_error(mail_server, monkeypatch):
    monkeypatch.setenv("ASR_ALERT_SMTP_URL", mail_server.url.replace(SMTP_PASSWORD, "wrong-Pa55"))
    monkeypatch.setenv("ASR_ALERT_EMAIL_TO", "ml-team@example.org")
    with pytest.raises(DeliveryError) as raised:
        deliver(AlertConfig.from_environment(), EMAIL, "s", "t")
    assert "wrong-Pa55" not in str(raised.value) and f"smtp://127.0.0.1:{mail_server.port}/***" in str(raised.value)
    assert not mail_server.messages


@pytest.mark.parametrize("down", ["500", "refused"])
def test_a_destination_that_is_down_raises_a_redacted_error(webhook, monkeypatch, down):
    url = webhook.url if down == "500" else f"http://127.0.0.1:{free_port()}/services/{WEBHOOK_TOKEN}"
    webhook.status = 500
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", url)
    with pytest.raises(DeliveryError) as raised:
        deliver(AlertConfig.from_environment(), WEBHOOK, "s", "t")
    text = str(raised.value) + repr(raised.value.__cause__) + repr(raised.value.__context__)
    assert ("500" in text if down == "500" else "refused" in text.lower())
    assert WEBHOOK_TOKEN not in str(raised.value) and "/***" in str(raised.value)


def test_settings_are_validated_and_described_masked(monkeypatch, no_alert_environment):
    assert AlertConfig.from_environment().channels() == [LOG]
    monkeypatch.setenv("ASR_ALERT_SMTP_URL", "smtp://u:pw@mail.example:587")
    with pytest.raises(ConfigError, match="ASR_ALERT_EMAIL_TO"):
        AlertConfig.from_environment()
    monkeypatch.setenv("ASR_ALERT_EMAIL_TO", "a@example.org")
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", f"https://hooks.slack.com/services/{WEBHOOK_TOKEN}")
    described = str(AlertConfig.from_environment().describe())
    assert WEBHOOK_TOKEN not in described and ":pw@" not in described
    assert "https://hooks.slack.com/***" in described and "smtp://mail.example:587/***" in described
    for name, value in [("ASR_ALERT_REPEAT_HOURS", "0"), ("ASR_ALERT_DIGEST", "yes"), ("ASR_UI_URL", "localhost")]:
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=name):
            AlertConfig.from_environment()
        monkeypatch.delenv(name)
    for name in ("ASR_MAX_PENDING_HOURS", "ASR_MAX_TRAINING_LAG_DAYS", "ASR_MAX_DECISION_LAG_DAYS"):
        monkeypatch.setenv(name, "-1")
        with pytest.raises(ConfigError, match=name):
            FreshnessLimits.from_environment()
        monkeypatch.setenv(name, "1.5")
    assert FreshnessLimits.from_environment() == FreshnessLimits(1.5, 1.5, 1.5)
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", f"ftp://x/{WEBHOOK_TOKEN}")
    with pytest.raises(ConfigError, match="ASR_ALERT_WEBHOOK") as raised:
        AlertConfig.from_environment()
    assert WEBHOOK_TOKEN not in str(raised.value)
    assert mask_url("https://outlook.office.com/webhook/abc@def/IncomingWebhook/x") == "https://outlook.office.com/***"


def _problem(batch="ids-0000000001-0000000010", kind="check_failed"):
    return Problem(kind, "resampled_dataset", batch, f"batch {batch} blocked", f"batch {batch} is done again")


def test_ledger_one_alert_per_problem_per_window_and_one_recovery():
    ledger = AlertLedger()
    sent = []

    def tick(problems, now, channels=(WEBHOOK,), down=()):
        for out in ledger.due(problems, list(channels), now, 24 * HOUR):
            for channel in out.channels:
                if channel not in down:
                    sent.append((now / HOUR, out.text))
                    ledger.delivered(out, channel, now)
        ledger.settle()

    for hour in range(24):  # the same problem, every hour for a day, plus a second one seen twice
        tick([_problem(), _problem("ids-0000000011-0000000020")] if hour in (5, 6) else [_problem()], hour * HOUR)
    assert sent == [(0, "batch ids-0000000001-0000000010 blocked"), (5, "batch ids-0000000011-0000000020 blocked"),
                    (7, "batch ids-0000000011-0000000020 is done again")]
    tick([_problem()], 24 * HOUR)  # the repeat window has passed: one reminder
    assert sent[-1] == (24, "batch ids-0000000001-0000000010 blocked")
    tick([], 25 * HOUR, down=(WEBHOOK,))  # cleared while the destination is down: the recovery waits
    assert sent[-1][0] == 24 and ledger.outbox
    tick([], 26 * HOUR)
    tick([], 27 * HOUR)
    assert sent[-1] == (26, "batch ids-0000000001-0000000010 is done again") and len(sent) == 5
    assert ledger.to_json() == {"open": {}, "outbox": [], "marks": {}}  # bounded: nothing left once all is clear


def test_an_alert_that_was_never_delivered_is_retried_and_needs_no_recovery():
    ledger = AlertLedger()
    out = ledger.due([_problem()], [WEBHOOK, EMAIL], 0.0, 24 * HOUR)
    ledger.delivered(out[0], EMAIL, 0.0)  # e-mail got it; the webhook was down
    again = ledger.due([_problem()], [WEBHOOK, EMAIL], 120.0, 24 * HOUR)
    assert [o.channels for o in again] == [(WEBHOOK,)]  # retried where it failed, not repeated where it arrived
    cleared = ledger.due([], [WEBHOOK, EMAIL], 240.0, 24 * HOUR)
    assert [(o.text, o.channels) for o in cleared] == [("batch ids-0000000001-0000000010 is done again", (EMAIL,))]


def test_locked_ledger_survives_a_restart_and_serialises_writers(tmp_path):
    path = tmp_path / "alerts" / "ledger.json"
    with locked_ledger(path) as ledger:
        for out in ledger.due([_problem()], [LOG], 0.0, 24 * HOUR):
            ledger.delivered(out, LOG, 0.0)
    results = []

    def writer():
        with locked_ledger(path) as again:
            results.append(len(again.due([_problem()], [LOG], HOUR, 24 * HOUR)))

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [0, 0, 0, 0]  # a fresh process (the daemon restarted) remembers the alert was sent


def test_secrets_never_reach_the_log(webhook, monkeypatch, caplog):
    from asr_pipeline.defs.alerts.sensors import send_due

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", f"http://127.0.0.1:{free_port()}/services/{WEBHOOK_TOKEN}")
    config = AlertConfig.from_environment()
    ledger = AlertLedger()
    send_due(ledger, ledger.due([_problem()], config.channels(), 0.0, HOUR), config, 0.0,
             logging.getLogger("test").warning)
    assert "not delivered" in caplog.text and WEBHOOK_TOKEN not in caplog.text


def test_a_destination_down_is_tried_once_a_tick_and_every_message_waits_for_the_next(webhook, monkeypatch):
    from asr_pipeline.defs.alerts.sensors import send_due

    webhook.status = 500
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    config = AlertConfig.from_environment()
    ledger = AlertLedger()
    problems = [_problem(f"ids-00000000{n}1-00000000{n + 1}0") for n in range(3)]
    assert send_due(ledger, ledger.due(problems, config.channels(), 0.0, HOUR), config, 0.0, print) == (0, 3)
    assert webhook.requests == 1  # a slow, dead destination costs one timeout per tick, not one per message
    webhook.status = 200
    assert send_due(ledger, ledger.due(problems, config.channels(), 60.0, HOUR), config, 60.0, print) == (3, 0)
    assert len(webhook.texts) == 3
