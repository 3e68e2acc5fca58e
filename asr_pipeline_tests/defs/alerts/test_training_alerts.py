"""Alerts about training and evaluation runs: a failure stays open until a later run makes that asset, whatever job
it is, and a tick killed between two sends repeats nothing. Runs are recorded in a real Dagster instance with the
events their steps leave; messages go to a local webhook server."""

import uuid

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, StepSuccessData
from dagster._core.execution.plan.objects import StepFailureData

from asr_pipeline_tests.alert_servers import no_alert_environment, webhook  # noqa: F401
from asr_pipeline_tests.defs.alerts.alert_daemon import KEY, AlertDaemon, incoming  # noqa: F401

pytestmark = pytest.mark.mysql


JOB_STEPS = {"asr_retrain": ["finetuned_checkpoint", "evaluation_report", "champion_model"],
             "asr_train": ["finetuned_checkpoint"], "asr_evaluate": ["evaluation_report", "champion_model"]}


def _step(daemon, run: dg.DagsterRun, step: str, failed: bool = False) -> None:
    kind = dg.DagsterEventType.STEP_FAILURE if failed else dg.DagsterEventType.STEP_SUCCESS
    data = StepFailureData(error=None, user_failure_data=None) if failed else StepSuccessData(duration_ms=1.0)
    daemon.instance.report_dagster_event(DagsterEvent(event_type_value=kind.value, job_name=run.job_name,
                                                      step_key=step, event_specific_data=data), run.run_id)


def _finished_run(daemon, job_name, status, assets=None, failed_at=None, steps=None, **tags) -> dg.DagsterRun:
    """A finished run as its event log records it: each step (the selection's, or the job's) succeeded up to
    failed_at, which failed; a failed run without failed_at died before any step did."""
    run = dg.DagsterRun(job_name=job_name, run_id=str(uuid.uuid4()), status=status, tags=tags,
                        asset_selection=frozenset(dg.AssetKey(a) for a in assets) if assets is not None else None)
    daemon.instance.add_run(run)
    planned = steps if steps is not None else (assets if assets is not None else JOB_STEPS.get(job_name, []))
    if status == dg.DagsterRunStatus.SUCCESS or failed_at:
        for step in planned:
            _step(daemon, run, step, failed=step == failed_at)
            if step == failed_at:
                break
    return run


def test_a_training_failure_clears_when_a_later_run_of_any_job_makes_the_asset(incoming, webhook, monkeypatch):
    """A one-off job that failed (the UI's checkpoint-only training) is not alerted for ever once the nightly
    asr_retrain has made the same asset; a failure stays open past any number of ingest runs of the same job."""
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    daemon = AlertDaemon()
    failed = _finished_run(daemon, "asr_train", dg.DagsterRunStatus.FAILURE)
    ui_failure = _finished_run(daemon, "__ASSET_JOB", dg.DagsterRunStatus.FAILURE, assets=["evaluation_report"])
    for _ in range(25):  # the UI's ingest backfill: batch runs of the same implicit job
        _finished_run(daemon, "__ASSET_JOB", dg.DagsterRunStatus.SUCCESS, **{"dagster/partition": KEY})
    # and checks executed from the UI (no asset selection: a check alone) succeed, fail or are canceled: they make
    # no asset, so they clear nothing and are no training failure
    _finished_run(daemon, "__ASSET_JOB", dg.DagsterRunStatus.SUCCESS, assets=[],
                  steps=["evaluation_report_challenger_beats_champion"])
    for status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
        _finished_run(daemon, "__ASSET_JOB", status, failed_at="finetuned_checkpoint_training_keeps_up",
                      steps=["finetuned_checkpoint_training_keeps_up"])
    daemon.tick()
    assert sorted(t.splitlines()[0].split(":")[0] for t in webhook.texts) == [
        "[asr_pipeline] __ASSET_JOB failed at __ASSET_JOB", "[asr_pipeline] asr_train failed at asr_train"]
    assert any(ui_failure.run_id in t for t in webhook.texts) and any(failed.run_id in t for t in webhook.texts)
    # the nightly training then succeeds: every training asset is made again, both problems clear
    _finished_run(daemon, "asr_retrain", dg.DagsterRunStatus.SUCCESS)
    daemon.tick()
    assert sorted(webhook.texts[2:]) == [
        "[asr_pipeline] __ASSET_JOB recovered: a later run made evaluation_report.",
        "[asr_pipeline] asr_train recovered: a later run made finetuned_checkpoint."]
    # a newer failure at an asset supersedes an older one there: one problem, the newest run's
    _finished_run(daemon, "asr_train", dg.DagsterRunStatus.FAILURE)
    newest = _finished_run(daemon, "asr_retrain", dg.DagsterRunStatus.FAILURE)
    daemon.tick()
    assert len(webhook.texts) == 5 and newest.run_id in webhook.texts[4], webhook.texts
    assert webhook.texts[4].startswith("[asr_pipeline] asr_retrain failed at asr_retrain")


def test_a_failed_run_clears_what_it_made_and_only_that(incoming, webhook, monkeypatch):
    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    daemon = AlertDaemon()
    # night 1: the training fails; night 2: it trains, then the evaluation fails
    _finished_run(daemon, "asr_retrain", dg.DagsterRunStatus.FAILURE, failed_at="finetuned_checkpoint")
    daemon.tick()
    assert [t.splitlines()[0].split(":")[0] for t in webhook.texts] == [
        "[asr_pipeline] asr_retrain failed at finetuned_checkpoint"]
    evaluation = _finished_run(daemon, "asr_retrain", dg.DagsterRunStatus.FAILURE, failed_at="evaluation_report")
    daemon.tick()
    assert sorted(t.splitlines()[0].split(":")[0] for t in webhook.texts[1:]) == [
        "[asr_pipeline] asr_retrain failed at evaluation_report",
        "[asr_pipeline] finetuned_checkpoint recovered"]
    # an older evaluation failure is not cleared by a newer run that failed before it evaluated
    _finished_run(daemon, "asr_retrain", dg.DagsterRunStatus.FAILURE, failed_at="finetuned_checkpoint")
    daemon.tick()
    assert len(webhook.texts) == 4 and webhook.texts[3].startswith(
        "[asr_pipeline] asr_retrain failed at finetuned_checkpoint")  # and no recovery of the evaluation's
    assert not any("evaluation_report recovered" in t for t in webhook.texts) and evaluation.run_id in webhook.texts[1] \
        + webhook.texts[2]


def test_a_tick_killed_between_two_sends_does_not_send_the_first_again(incoming, webhook, monkeypatch):
    """The ledger is written after each delivery: a daemon restarted (or a sensor timed out) half way through a
    tick's messages neither repeats what it sent nor forgets what it did not."""
    from asr_pipeline.defs.alerts import sensors

    monkeypatch.setenv("ASR_ALERT_WEBHOOK", webhook.url)
    daemon = AlertDaemon()
    for job in ("asr_train", "asr_evaluate"):  # two problems, two messages in one tick
        _finished_run(daemon, job, dg.DagsterRunStatus.FAILURE)
    real_deliver, calls = sensors.deliver, []

    def killed_at_the_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise SystemExit("killed")
        return real_deliver(*args, **kwargs)

    monkeypatch.setattr(sensors, "deliver", killed_at_the_second)
    with pytest.raises(SystemExit):
        daemon.tick()
    monkeypatch.setattr(sensors, "deliver", real_deliver)
    assert len(webhook.texts) == 1
    daemon.tick()
    assert len(webhook.texts) == 2 and webhook.texts[0] != webhook.texts[1]
    daemon.tick()
    assert len(webhook.texts) == 2
