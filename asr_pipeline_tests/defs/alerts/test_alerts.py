"""The asr_alerts sensor against real parts: the MariaDB transcript table, a real Dagster instance with real failed
ingest runs, a local webhook server and a local SMTP server. Time is simulated by the sensor's clock only."""

import json
import logging
import time
from pathlib import Path

import dagster as dg
import pytest

from asr_pipeline import cli
from asr_pipeline.defs.alerts.freshness import BATCHES_DONE, DECISION_RECENT, TRAINING_KEEPS_UP
from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES
from asr_pipeline_tests.alert_servers import (SMTP_PASSWORD, WEBHOOK_TOKEN, free_port, mail_server,  # noqa: F401
                                              no_alert_environment, webhook)
from asr_pipeline_tests.defs.alerts.alert_daemon import DAY, HOUR, KEY, UI, AlertDaemon, incoming  # noqa: F401
from asr_pipeline_tests.deploy.test_deploy_instance import mysql_instance_home  # noqa: F401

pytestmark = [pytest.mark.mysql, pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")]


def _connect_both(monkeypatch, webhook, mail_server):
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    monkeypatch.setenv("ASR_ALERT_SMTP_URL", mail_server.url)
    monkeypatch.setenv("ASR_ALERT_EMAIL_TO", "ml-team@example.org")


def test_missing_audio_is_one_alert_over_a_day_of_failing_retries_then_one_recovery(
        incoming, webhook, mail_server, monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    _connect_both(monkeypatch, webhook, mail_server)
    daemon = AlertDaemon()
    start = daemon.now
    first = daemon.ingest()
    assert not first.success  # the blocking quarantine check stops the batch: every clip is missing
    for hour in range(24):
        daemon.now = start + hour * HOUR
        if hour in (2, 9, 17):
            assert not daemon.ingest().success  # the run retries fail the same way
        daemon.tick()
    assert len(webhook.texts) == 1 and len(mail_server.mails()) == 1
    alert = webhook.texts[0]
    assert f"batch {KEY} blocked: check quarantine_rate_below_threshold on resampled_dataset" in alert
    assert "5 of 5 rows quarantined (100%, threshold 20%)" in alert and "missing" in alert
    assert f"`asr-pipeline backfill {KEY}`" in alert and f"{UI}/runs/{first.run_id}" in alert
    assert mail_server.mails()[0]["Subject"] == alert.splitlines()[0]

    incoming()  # the audio arrives; the next run succeeds
    assert daemon.ingest().success
    for minutes in (30, 60, 90):
        daemon.now = start + 23 * HOUR + minutes * 60
        daemon.tick()
    assert webhook.texts[1:] == [f"[asr_pipeline] batch {KEY} is done again after 4 failed runs."]
    assert len(mail_server.mails()) == 2
    secrets_seen = caplog.text + daemon.everything_logged() + "".join(capfd.readouterr())  # Dagster logs to stderr
    assert "alert sent (email)" in secrets_seen
    assert WEBHOOK_TOKEN not in secrets_seen and SMTP_PASSWORD not in secrets_seen


def test_each_freshness_check_fails_and_recovers(incoming, webhook, monkeypatch):
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    daemon = AlertDaemon()
    start = daemon.now
    daemon.tick()
    assert daemon.check(BATCHES_DONE, "featurized_shards").status.value == "SUCCEEDED" and not webhook.texts

    daemon.now = start + 25 * HOUR  # registered a day ago, no run ever came
    assert "1 freshness checks failing" in daemon.tick()
    failed = daemon.check(BATCHES_DONE, "featurized_shards").event.dagster_event.asset_check_evaluation_data
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
    assert KEY in failed.description and "UTC" in failed.description and f"asr-pipeline backfill {KEY}" in \
        failed.description
    assert webhook.texts == [webhook.texts[0]] and f"batch {KEY} is not done 25.0 h after" in webhook.texts[0]

    incoming()
    assert daemon.ingest().success
    daemon.tick()
    assert daemon.check(BATCHES_DONE, "featurized_shards").status.value == "SUCCEEDED"
    assert webhook.texts[-1] == f"[asr_pipeline] batch {KEY} is done again."

    featurized = time.time()
    daemon.now = featurized + 3 * DAY  # featurized, never trained on
    daemon.tick()
    lag = daemon.check(TRAINING_KEEPS_UP, "finetuned_checkpoint").event.dagster_event.asset_check_evaluation_data
    assert not lag.passed and KEY in lag.description and "asr-pipeline run" in lag.description
    assert "[asr_pipeline] finetuned_checkpoint is behind" in webhook.texts[-1]
    daemon.instance.report_runless_asset_event(dg.AssetMaterialization("finetuned_checkpoint"))
    daemon.tick()
    assert daemon.check(TRAINING_KEEPS_UP, "finetuned_checkpoint").status.value == "SUCCEEDED"
    assert webhook.texts[-1] == "[asr_pipeline] finetuned_checkpoint is keeping up again (training_keeps_up passes)."

    daemon.now = featurized + 8 * DAY  # no promotion decision, ever
    daemon.tick()
    stale = daemon.check(DECISION_RECENT, "champion_model").event.dagster_event.asset_check_evaluation_data
    assert not stale.passed and "no promotion decision was ever made" in stale.description
    assert "[asr_pipeline] champion_model is behind" in webhook.texts[-1]
    daemon.instance.report_runless_asset_event(dg.AssetMaterialization("evaluation_report"))
    daemon.now = time.time() + DAY
    daemon.tick()
    assert daemon.check(DECISION_RECENT, "champion_model").status.value == "SUCCEEDED"
    assert webhook.texts[-1] == "[asr_pipeline] champion_model is keeping up again (promotion_decided_recently " \
                                "passes)."
    assert len(webhook.texts) == 6

    status = cli.collect_status()
    assert {name: check["passed"] for name, check in status["freshness"].items()} == \
        {BATCHES_DONE: True, TRAINING_KEEPS_UP: True, DECISION_RECENT: True}
    assert status["alerting"]["webhook"] == f"http://127.0.0.1:{webhook.httpd.server_port}/***"


def test_a_destination_that_is_down_changes_no_run_and_no_tick_and_is_retried(incoming, webhook, monkeypatch,
                                                                               caplog, capfd):
    caplog.set_level(logging.DEBUG)
    webhook.status = 500
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    monkeypatch.setenv("ASR_ALERT_SMTP_URL", f"smtp://alerts:{SMTP_PASSWORD}@127.0.0.1:{free_port()}")  # refused
    monkeypatch.setenv("ASR_ALERT_EMAIL_TO", "ml-team@example.org")
    daemon = AlertDaemon()
    failed = daemon.ingest()
    assert not failed.success and [e.check_name for e in failed.get_asset_check_evaluations() if not e.passed] == \
        ["quarantine_rate_below_threshold"]  # fails for its own reason, exactly as without alerts
    assert "2 deliveries failed" in daemon.tick()
    assert "2 deliveries failed" in daemon.tick()  # retried on the next tick, never raising
    webhook.status = 200
    assert "1 messages delivered, 1 deliveries failed" in daemon.tick()
    assert len(webhook.texts) == 1 and KEY in webhook.texts[0]
    daemon.tick()
    assert len(webhook.texts) == 1
    incoming()
    assert daemon.ingest().success  # the run does not care that e-mail is down
    daemon.tick()
    assert webhook.texts[-1].endswith(f"batch {KEY} is done again.")

    logged = caplog.text + daemon.everything_logged() + capfd.readouterr().err  # Dagster logs to stderr
    cli.main(["status", "--json"])
    status = json.loads(capfd.readouterr().out)
    assert status["alerting"]["email"]["smtp"].endswith("/***")
    logged += json.dumps(status)
    assert "alert not delivered, retried next tick: webhook http://127.0.0.1:" in logged
    assert WEBHOOK_TOKEN not in logged and SMTP_PASSWORD not in logged


def test_a_canceled_batch_run_is_alerted_once_as_canceled(incoming, webhook, monkeypatch):
    """A run canceled from the UI (or by the run monitor after its worker died) leaves the batch undone: that is a
    problem like a failure, and the message says it was canceled rather than inventing an error."""
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    daemon = AlertDaemon()
    run = daemon.instance.create_run_for_job(daemon.defs.resolve_job_def("asr_ingest"),
                                             tags={"dagster/partition": KEY})
    daemon.instance.report_run_canceled(run)
    daemon.tick()
    daemon.tick()
    assert len(webhook.texts) == 1, webhook.texts
    assert f"ingest of batch {KEY} failed at asr_ingest" in webhook.texts[0]
    assert "the run was canceled" in webhook.texts[0] and f"{UI}/runs/{run.run_id}" in webhook.texts[0]


def test_a_failed_nightly_training_alerts_once_and_the_digest_follows(incoming, webhook, monkeypatch):
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    monkeypatch.setenv("ASR_ALERT_DIGEST", "on")
    daemon = AlertDaemon()
    run = daemon.defs.resolve_job_def("asr_retrain").execute_in_process(
        instance=daemon.instance, raise_on_error=False, tags={"dagster/schedule_name": "nightly_retraining"})
    assert not run.success  # nothing is featurized yet
    daemon.tick()
    daemon.tick()
    failure, digest = webhook.texts
    assert failure.startswith("[asr_pipeline] asr_retrain failed at finetuned_checkpoint: ")
    assert "no featurized_shards partition is materialized yet" in failure and f"{UI}/runs/{run.run_id}" in failure
    assert digest.startswith(f"[asr_pipeline] nightly digest: nightly_retraining run {run.run_id} failure.")
    assert "Batches: 0 done, 1 pending, 0 failed" in digest and "Last decision: none yet" in digest


def test_a_challenger_rejected_for_hallucination_or_a_benchmark_alerts_until_a_report_clears_it(
        incoming, webhook, monkeypatch):
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    daemon = AlertDaemon()
    report = Path(daemon.defs.resources["settings"].home) / "storage" / "evaluation_report" / "report.json"
    report.parent.mkdir(parents=True)
    promotion = {"promote": False, "reason": "hallucinates on 3 clips", "challenger_cer": 0.21, "champion_cer": 0.2,
                 "export_cer": 0.31, "export_margin": 0.05,
                 "difference": 0.01, "difference_ci95": [0.002, 0.018], "blocked_by": ["hallucination",
                                                                                      "benchmark:news", "export"]}
    report.write_text(json.dumps({"created_at": "2026-11-26T02:10:00+00:00", "promotion": promotion}))
    daemon.tick()
    daemon.tick()
    assert [t.splitlines()[0] for t in webhook.texts] == [
        "[asr_pipeline] challenger rejected: it hallucinates (report 2026-11-26T02:10:00+00:00). CER difference "
        "challenger - champion +0.0100 (95% interval +0.0020 .. +0.0180)",
        "[asr_pipeline] challenger rejected: it regresses on benchmark news (report 2026-11-26T02:10:00+00:00). CER "
        "difference challenger - champion +0.0100 (95% interval +0.0020 .. +0.0180)",
        "[asr_pipeline] challenger rejected: it loses accuracy in its deployed CTranslate2 int8 export (report "
        "2026-11-26T02:10:00+00:00). Normalised CER of its int8 export 0.3100 against the checkpoint's 0.2100 "
        "(ASR_EXPORT_MARGIN 0.05)"]
    report.write_text(json.dumps({"created_at": "2026-11-27T02:10:00+00:00",
                                  "promotion": {**promotion, "promote": True, "blocked_by": []}}))
    daemon.tick()
    assert sorted(webhook.texts[3:]) == [
        "[asr_pipeline] the latest challenger is no longer rejected for benchmark:news.",
        "[asr_pipeline] the latest challenger is no longer rejected for export.",
        "[asr_pipeline] the latest challenger is no longer rejected for hallucination."]


def test_a_champion_that_cannot_be_compared_alerts_until_a_report_is_no_longer_blocked_by_it(
        incoming, webhook, monkeypatch):
    """incomparable_champion blocks every challenger until someone restores or retires the champion, while a
    decision is still made every night (so decision_lag stays quiet): it must be an alert of its own."""
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    daemon = AlertDaemon()
    report = Path(daemon.defs.resources["settings"].home) / "storage" / "evaluation_report" / "report.json"
    report.parent.mkdir(parents=True)
    why = "the champion takes 128 mel bins and these features have 80 (a different base model?), so it cannot be"
    promotion = {"promote": False, "reason": f"{why} compared", "blocked_by": ["incomparable_champion"]}
    report.write_text(json.dumps({"created_at": "2026-11-26T02:10:00+00:00", "promotion": promotion}))
    daemon.tick()
    daemon.tick()
    [alert] = webhook.texts
    assert alert.startswith("[asr_pipeline] challenger not compared (report 2026-11-26T02:10:00+00:00)")
    assert why in alert and "asr-pipeline champion --retire" in alert
    report.write_text(json.dumps({"created_at": "2026-11-27T02:10:00+00:00",
                                  "promotion": {**promotion, "blocked_by": ["not_better"]}}))
    daemon.tick()
    assert webhook.texts[1:] == [
        "[asr_pipeline] the champion can be compared again (the latest report is not blocked by it)."]


def test_the_alert_sensor_runs_by_default_and_the_checks_do_not_join_the_jobs(incoming):
    defs = cli._definitions()
    assert defs.resolve_sensor_def("asr_alerts").default_status == dg.DefaultSensorStatus.RUNNING
    checks = {key.name: key.asset_key.to_user_string() for key in defs.resolve_asset_graph().asset_check_keys}
    assert {BATCHES_DONE: "featurized_shards", TRAINING_KEEPS_UP: "finetuned_checkpoint",
            DECISION_RECENT: "champion_model"}.items() <= checks.items()
    for job in ("asr_ingest", "asr_retrain", "asr_train", "asr_evaluate"):
        selected = defs.resolve_job_def(job).asset_layer.asset_graph.asset_check_keys
        assert not {key.name for key in selected} & {BATCHES_DONE, TRAINING_KEEPS_UP, DECISION_RECENT}


def test_registration_times_come_from_the_partitions_table_on_mysql_storage_too(mysql_instance_home, tmp_path,
                                                                                 monkeypatch):
    from asr_pipeline.defs.alerts.sources import batch_states

    monkeypatch.setenv("ASR_HOME", str(tmp_path / "home"))
    instance = dg.DagsterInstance.get()
    before = time.time()
    instance.add_dynamic_partitions(INGEST_BATCHES.name, [KEY])
    [state] = batch_states(instance)
    assert state.key == KEY and state.state == "pending" and state.failures == 0
    assert before - 2 <= state.registered_at <= time.time() + 1  # seconds resolution, same clock


def test_execute_on_the_checks_tab_evaluates_the_freshness_checks_in_a_run(incoming):
    from asr_pipeline.defs.alerts.freshness import FRESHNESS_CHECKS

    daemon = AlertDaemon()
    keys = {key for checks in FRESHNESS_CHECKS for key in checks.check_keys}
    job = daemon.defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection=keys,
                                                                          asset_selection=set())
    result = job.execute_in_process(instance=daemon.instance)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations.keys() == {BATCHES_DONE, TRAINING_KEEPS_UP, DECISION_RECENT}
    assert evaluations[BATCHES_DONE].passed and "1 batch, 1 in progress" in evaluations[BATCHES_DONE].description
