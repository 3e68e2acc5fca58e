"""A storm of batch alerts (a NAS outage during `backfill --all`) reaches a destination as one message, not one per
batch: the ledger and the sender against a local webhook and a local SMTP server."""

import pytest

from asr_pipeline.core.alert_ledger import AlertLedger, Problem
from asr_pipeline.core.alerts import AlertConfig
from asr_pipeline.defs.alerts import sensors
from asr_pipeline_tests.alert_servers import mail_server, no_alert_environment, webhook  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
REPEAT_S = 24 * 3600.0


def _batch_failures(n: int) -> list[Problem]:
    return [Problem("run_failed", "resampled_dataset", f"ids-{i:010d}-{i:010d}",
                    f"[asr_pipeline] ingest of batch ids-{i:010d}-{i:010d} failed at resampled_dataset: NAS gone\n"
                    f"Fix: read the run's error, then `asr-pipeline backfill ids-{i:010d}-{i:010d}`.",
                    f"[asr_pipeline] batch ids-{i:010d}-{i:010d} is done again.") for i in range(1, n + 1)]


def _tick(ledger: AlertLedger, problems: list[Problem], now: float, emitted: list[str]) -> tuple[int, int]:
    config = AlertConfig.from_environment()
    return sensors.send_due(ledger, ledger.due(problems, config.channels(), now, REPEAT_S), config, now,
                            emitted.append)


def test_forty_failing_batches_are_one_message_a_destination_and_one_recovery(webhook, mail_server, monkeypatch,
                                                                              tmp_path):
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    monkeypatch.setenv("ASR_ALERT_SMTP_URL", mail_server.url)
    monkeypatch.setenv("ASR_ALERT_EMAIL_TO", "ml-team@example.org")
    training = Problem("run_failed", "finetuned_checkpoint", "", "[asr_pipeline] training failed", "training ok")
    ledger, emitted, now = AlertLedger(path=tmp_path / "ledger.json"), [], 1_000_000.0
    problems = _batch_failures(40) + [training]
    assert _tick(ledger, problems, now, emitted) == (4, 0)  # a roll-up and the training alert, on both destinations
    rolled = webhook.texts[0]
    assert rolled.startswith("[asr_pipeline] 40 batches need attention: 40 failed at resampled_dataset.")
    assert "- ingest of batch ids-0000000001-0000000001 failed at resampled_dataset: NAS gone" in rolled
    assert "ids-0000000011-0000000011" not in rolled and "- and 30 more" in rolled
    assert "`asr-pipeline status`" in rolled and "`asr-pipeline backfill`" in rolled
    assert webhook.texts[1] == "[asr_pipeline] training failed"  # not about a batch: never rolled up
    assert sorted(" ".join(m["Subject"].split()) for m in mail_server.mails()) == sorted(
        t.splitlines()[0] for t in webhook.texts)  # a long subject comes back folded

    assert _tick(ledger, problems, now + 3600, emitted) == (0, 0)  # each of the 40 counts as told
    assert _tick(ledger, problems[3:], now + 7200, emitted) == (6, 0)  # three recover: a message each, as always
    assert webhook.texts[2:] == [p.recovery for p in problems[:3]]


def test_recoveries_and_reminders_of_many_batches_are_rolled_up_too_and_few_go_one_by_one(webhook, monkeypatch,
                                                                                          tmp_path):
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    ledger, emitted, now = AlertLedger(path=tmp_path / "ledger.json"), [], 1_000_000.0
    problems = _batch_failures(12)
    _tick(ledger, problems, now, emitted)
    assert len(webhook.texts) == 1 and webhook.texts[0].startswith("[asr_pipeline] 12 batches need attention")
    _tick(ledger, problems, now + REPEAT_S, emitted)  # a day later, still open: one reminder for the twelve
    assert len(webhook.texts) == 2 and webhook.texts[1].startswith(
        "[asr_pipeline] 12 batches still need attention (a reminder: each was alerted before): 12 failed at")
    _tick(ledger, problems[:2], now + REPEAT_S + 60, emitted)  # ten are done again: one message names them
    assert webhook.texts[2] == "[asr_pipeline] 10 batches are done again: " + ", ".join(
        p.batch for p in problems[2:]) + "."
    _tick(ledger, [], now + REPEAT_S + 120, emitted)  # the last two: one message each, as always
    assert webhook.texts[3:] == [p.recovery for p in problems[:2]]
    assert ledger.open == {} and ledger.outbox == []


def test_a_rolled_up_message_that_fails_is_retried_whole_and_the_log_gets_each_message(webhook, monkeypatch,
                                                                                       tmp_path):
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    ledger, emitted, now = AlertLedger(path=tmp_path / "ledger.json"), [], 1_000_000.0
    problems = _batch_failures(8)
    webhook.status = 500
    assert _tick(ledger, problems, now, emitted) == (0, 1)  # one try for the eight, then the destination is down
    webhook.status = 200
    assert _tick(ledger, problems, now + 120, emitted) == (1, 0)
    assert len(webhook.texts) == 1 and webhook.texts[0].startswith("[asr_pipeline] 8 batches need attention")

    monkeypatch.delenv("ASR_ALERT_WEBHOOK")  # no destination: the sensor's log, where one line a batch costs nothing
    logged = []
    _tick(AlertLedger(path=tmp_path / "log_ledger.json"), problems, now, logged)
    assert logged == [p.text for p in problems]


def test_what_waits_for_a_destination_no_longer_configured_is_dropped(webhook, monkeypatch, tmp_path):
    """A recovery queued while the webhook was down, then the webhook removed: not retried for ever."""
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    ledger, emitted, now = AlertLedger(path=tmp_path / "ledger.json"), [], 1_000_000.0
    problems = _batch_failures(1)
    _tick(ledger, problems, now, emitted)
    webhook.status = 500
    assert _tick(ledger, [], now + 60, emitted) == (0, 1) and len(ledger.outbox) == 1
    monkeypatch.delenv("ASR_ALERT_WEBHOOK")
    assert _tick(ledger, [], now + 120, emitted) == (0, 0)
    assert ledger.outbox == []


def test_a_new_batch_problem_is_never_hidden_among_reminders(webhook, monkeypatch, tmp_path):
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    ledger, emitted, now = AlertLedger(path=tmp_path / "ledger.json"), [], 1_000_000.0
    old = _batch_failures(12)
    _tick(ledger, old, now, emitted)
    blocked = Problem("check_failed", "resampled_dataset", "ids-0000000099-0000000099",
                      "[asr_pipeline] batch ids-0000000099-0000000099 blocked: 900 of 1000 rows quarantined", "ok")
    _tick(ledger, [*old, blocked], now + REPEAT_S, emitted)  # the reminders fall due with a new problem
    assert len(webhook.texts) == 3 and blocked.text in webhook.texts[1:]  # the new one, whole, in a message of its own
    assert any(t.startswith("[asr_pipeline] 12 batches still need attention") for t in webhook.texts[1:])


def test_batches_late_then_failing_are_not_done_again(webhook, monkeypatch, tmp_path):
    """A NAS outage: batches are first late (pending_too_long), then their runs fail. The late alerts clear because
    the failures replace them, and that is no recovery."""
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    ledger, emitted, now = AlertLedger(path=tmp_path / "ledger.json"), [], 1_000_000.0
    failures = _batch_failures(8)
    late = [Problem("pending_too_long", "featurized_shards", p.batch, f"[asr_pipeline] batch {p.batch} is not done "
                    "30 h after it was registered", f"[asr_pipeline] batch {p.batch} is done again.") for p in failures]
    _tick(ledger, late, now, emitted)
    assert webhook.texts == [webhook.texts[0]] and webhook.texts[0].startswith(
        "[asr_pipeline] 8 batches need attention: 8 not done in time.")
    _tick(ledger, failures, now + 3600, emitted)
    assert len(webhook.texts) == 2 and webhook.texts[1].startswith(
        "[asr_pipeline] 8 batches need attention: 8 failed at resampled_dataset.")
    _tick(ledger, [], now + 7200, emitted)  # now they are done: one recovery message for the eight
    assert webhook.texts[2:] == ["[asr_pipeline] 8 batches are done again: " + ", ".join(p.batch for p in failures)
                                 + "."]


def test_the_storm_cap_counts_every_kind_together(webhook, monkeypatch, tmp_path):
    """Five reminders and five new failures in one tick: two messages (reminders, new), not ten."""
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    ledger, emitted, now = AlertLedger(path=tmp_path / "ledger.json"), [], 1_000_000.0
    problems = _batch_failures(10)
    _tick(ledger, problems[:5], now, emitted)  # five: one message each, as always
    assert len(webhook.texts) == 5
    _tick(ledger, problems, now + REPEAT_S, emitted)
    assert sorted(t.split(":")[0] for t in webhook.texts[5:]) == [
        "[asr_pipeline] 5 batches need attention", "[asr_pipeline] 5 batches still need attention (a reminder"]


def test_whoever_heard_a_batch_was_late_hears_it_is_done_even_if_its_failure_never_reached_them(
        webhook, monkeypatch, tmp_path):
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    ledger, emitted, now = AlertLedger(path=tmp_path / "ledger.json"), [], 1_000_000.0
    failure = _batch_failures(1)[0]
    late = Problem("pending_too_long", "featurized_shards", failure.batch, "[asr_pipeline] late", "late cleared")
    _tick(ledger, [late], now, emitted)
    webhook.status = 500  # the failure's alert does not get through...
    _tick(ledger, [failure], now + 60, emitted)
    webhook.status = 200
    _tick(ledger, [], now + 120, emitted)  # ...and the batch is done before the retry
    assert webhook.texts == ["[asr_pipeline] late", failure.recovery]


def test_a_batch_whose_problem_becomes_two_owes_one_recovery(webhook, monkeypatch, tmp_path):
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    ledger, emitted, now = AlertLedger(path=tmp_path / "ledger.json"), [], 1_000_000.0
    failure = _batch_failures(1)[0]
    late = Problem("pending_too_long", "featurized_shards", failure.batch, "[asr_pipeline] late", "late cleared")
    blocked = Problem("check_failed", "resampled_dataset", failure.batch, "[asr_pipeline] blocked", "unblocked")
    _tick(ledger, [late], now, emitted)
    webhook.status = 500
    _tick(ledger, [failure, blocked], now + 60, emitted)
    webhook.status = 200
    _tick(ledger, [], now + 120, emitted)
    assert webhook.texts[0] == "[asr_pipeline] late" and len(webhook.texts) == 2  # one "done", not two


def test_two_told_problems_of_a_batch_clearing_together_are_one_recovery(webhook, monkeypatch, tmp_path):
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    ledger, emitted, now = AlertLedger(path=tmp_path / "ledger.json"), [], 1_000_000.0
    failure = _batch_failures(1)[0]
    late = Problem("pending_too_long", "featurized_shards", failure.batch, "[asr_pipeline] late", failure.recovery)
    _tick(ledger, [failure, late], now, emitted)
    assert len(webhook.texts) == 2
    _tick(ledger, [], now + 60, emitted)
    assert webhook.texts[2:] == [failure.recovery]
