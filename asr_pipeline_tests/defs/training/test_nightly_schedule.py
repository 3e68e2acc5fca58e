"""nightly_retraining in a year of nights: it waits while a training or evaluation is queued or running (a killed
CLI run excepted), and evaluates again a checkpoint whose evaluation or promotion failed, a bounded number of times.
Against the real MariaDB and a real Dagster instance."""

import os
import subprocess
import sys
import uuid

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, StepMaterializationData
from dagster._core.execution.plan.objects import StepFailureData
from dagster._core.storage.dagster_run import DagsterRun

from asr_pipeline.defs.common.dead_runs import cli_run_tags
from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES
from asr_pipeline.defs.training.schedules import (EVALUATES_TAG, FEATURIZED_READ, MAX_EVALUATION_ATTEMPTS,
                                                  featurized_storage_ids)
from asr_pipeline_tests.conftest import create_notebook_table
from asr_pipeline_tests.defs import sensor_harness
from asr_pipeline_tests.defs.sensor_harness import audio_environment

pytestmark = pytest.mark.mysql
KEY = "ids-0000000001-0000000010"


@pytest.fixture()
def daemon(monkeypatch, tmp_path, mysql_database, korean_clips, tiny_model_dir):
    create_notebook_table(mysql_database).dispose()
    audio_environment(monkeypatch, tmp_path, mysql_database, korean_clips, tiny_model_dir)
    daemon = sensor_harness.Daemon()
    daemon.instance.add_dynamic_partitions(INGEST_BATCHES.name, [KEY])
    daemon.instance.report_runless_asset_event(dg.AssetMaterialization("featurized_shards", partition=KEY))
    return daemon


def _tick(daemon):
    schedule = daemon.defs.resolve_schedule_def("nightly_retraining")
    return schedule.evaluate_tick(dg.build_schedule_context(instance=daemon.instance))


def _run(daemon, status, job_name="asr_retrain", tags=None) -> DagsterRun:
    """A run of job_name in the instance, with its code location's origin (a QUEUED run must have one), unless an
    `asr-pipeline` command ran it (tagged asr/launcher=cli): those execute in process, without one."""
    origin = None if (tags or {}).get("asr/launcher") == "cli" else sensor_harness.job_origin(job_name)
    run = DagsterRun(job_name=job_name, run_id=str(uuid.uuid4()), status=status, tags=tags or {},
                     remote_job_origin=origin)
    daemon.instance.add_run(run)
    return run


def _materialize(daemon, asset: str, run: DagsterRun, metadata=None) -> None:
    daemon.instance.report_dagster_event(DagsterEvent(
        event_type_value=dg.DagsterEventType.ASSET_MATERIALIZATION.value, job_name=run.job_name, step_key=asset,
        event_specific_data=StepMaterializationData(dg.AssetMaterialization(asset, metadata=metadata))), run.run_id)


def _checkpoint(daemon, job_name="asr_retrain") -> DagsterRun:
    """finetuned_checkpoint as a training that read every batch leaves it, made by a run of job_name."""
    run = _run(daemon, dg.DagsterRunStatus.FAILURE, job_name=job_name)  # (its evaluation failed, say)
    _materialize(daemon, "finetuned_checkpoint", run,
                 {FEATURIZED_READ: dg.MetadataValue.json(featurized_storage_ids(daemon.instance))})
    return run


def _report_in_run(daemon, run: DagsterRun, failed_step: str | None = None) -> None:
    """evaluation_report materialized by `run` (its step succeeded unless failed_step is that one), and failed_step
    failed afterwards."""
    _materialize(daemon, "evaluation_report", run)
    if failed_step != "evaluation_report":
        _step_event(daemon, run, dg.DagsterEventType.STEP_SUCCESS, "evaluation_report")
    if failed_step:
        daemon.instance.report_dagster_event(DagsterEvent(
            event_type_value=dg.DagsterEventType.STEP_FAILURE.value, job_name=run.job_name, step_key=failed_step,
            event_specific_data=StepFailureData(error=None, user_failure_data=None)), run.run_id)


def _nodes(daemon, request) -> set[str]:
    """What the daemon would run for the request: the job's subset of those assets and checks."""
    job = daemon.defs.resolve_job_def("asr_retrain")
    subset = job.get_subset(asset_selection=set(request.asset_selection),
                            asset_check_selection=set(request.asset_check_keys))
    return {node.name for node in subset.graph.node_dict.values()}


def test_no_second_retrain_is_queued_while_one_is_queued_or_running(daemon):
    assert _tick(daemon).run_requests  # night 1: new data, a retrain is requested
    for status in (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                   dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING):
        run = _run(daemon, status)
        skipped = _tick(daemon)  # night 2: the first still waits for its pool slot, or trains
        assert not skipped.run_requests and run.run_id in skipped.skip_message
        assert status.value.lower() in skipped.skip_message
        daemon.instance.delete_run(run.run_id)
    assert _tick(daemon).run_requests  # it ended without a checkpoint: the data is still new
    _run(daemon, dg.DagsterRunStatus.STARTED, job_name="asr_ingest")  # ingest runs do not hold it back
    assert _tick(daemon).run_requests


def test_a_training_from_the_ui_holds_it_back_and_an_ingest_backfill_from_the_ui_does_not(daemon):
    ingest = DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED,
                        asset_selection=frozenset({dg.AssetKey("featurized_shards")}))
    daemon.instance.add_run(ingest)
    assert _tick(daemon).run_requests
    training = DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED,
                          asset_selection=frozenset({dg.AssetKey("finetuned_checkpoint")}))
    daemon.instance.add_run(training)
    assert training.run_id in _tick(daemon).skip_message
    daemon.instance.delete_run(training.run_id)
    check = DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED,
                       asset_selection=frozenset())  # a check executed from the UI: no asset
    daemon.instance.add_run(check)
    assert _tick(daemon).run_requests


def test_a_killed_cli_training_does_not_hold_the_nightly_training_back(daemon):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    killed = [_run(daemon, status, job_name="asr_train", tags=cli_run_tags(gone.pid))
              for status in (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED)]
    # killed before a reboot (or in a container since restarted): a later process has its pid now, this one
    alive_tags = cli_run_tags(os.getpid())
    killed.append(_run(daemon, dg.DagsterRunStatus.STARTED, job_name="asr_train",
                       tags={**alive_tags, "asr/start_ticks": str(int(alive_tags["asr/start_ticks"]) - 100)}))
    alive = _run(daemon, dg.DagsterRunStatus.STARTED, job_name="asr_train", tags=alive_tags)
    skipped = _tick(daemon)
    assert alive.run_id in skipped.skip_message  # a CLI run whose process lives is running; where, it says
    assert f"by `asr-pipeline` on {cli_run_tags(0)['asr/host']} (pid {os.getpid()}" in skipped.skip_message
    assert all(daemon.instance.get_run_by_id(r.run_id).status == dg.DagsterRunStatus.FAILURE for r in killed)
    daemon.instance.report_run_failed(daemon.instance.get_run_by_id(alive.run_id))
    assert _tick(daemon).run_requests


def test_a_checkpoint_whose_evaluation_failed_is_evaluated_again_a_bounded_number_of_times(daemon):
    _checkpoint(daemon)
    for attempt in range(MAX_EVALUATION_ATTEMPTS):
        request = _tick(daemon).run_requests[0]
        assert request.asset_selection == [dg.AssetKey("evaluation_report"), dg.AssetKey("champion_model")]
        assert "has no evaluation_report: evaluating it again" in request.tags["asr/reason"]
        assert request.tags[EVALUATES_TAG].isdigit()  # the checkpoint's storage id: its tries are counted
        # exactly what asr_retrain runs of those assets: the promotion decision, not the alerts' freshness checks
        assert _nodes(daemon, request) == {"evaluation_report", "champion_model"}
        assert request.asset_check_keys == [dg.AssetCheckKey(dg.AssetKey("evaluation_report"),
                                                             "challenger_beats_champion")]
        _run(daemon, dg.DagsterRunStatus.FAILURE, tags=request.tags)  # the share is still unmounted
    given_up = _tick(daemon)
    assert not given_up.run_requests
    assert f"failed {MAX_EVALUATION_ATTEMPTS} times" in given_up.skip_message
    assert "asr-pipeline evaluate" in given_up.skip_message
    # evaluated at last (by hand): nothing left to do
    _report_in_run(daemon, _run(daemon, dg.DagsterRunStatus.SUCCESS, job_name="asr_evaluate"))
    assert "no featurized_shards batch changed" in _tick(daemon).skip_message


def test_a_promotion_that_failed_after_the_report_is_tried_again_alone_until_it_succeeds(daemon):
    _checkpoint(daemon)
    _report_in_run(daemon, _run(daemon, dg.DagsterRunStatus.FAILURE), failed_step="champion_model")
    request = _tick(daemon).run_requests[0]
    assert request.asset_selection == [dg.AssetKey("champion_model")] and request.asset_check_keys == []
    assert _nodes(daemon, request) == {"champion_model"}
    assert "whose champion_model step failed" in request.tags["asr/reason"]
    # the retry succeeds: it makes no new report, and is not requested again night after night
    _run(daemon, dg.DagsterRunStatus.SUCCESS, tags=request.tags)
    assert "no featurized_shards batch changed" in _tick(daemon).skip_message


def _step_event(daemon, run: DagsterRun, event_type, step: str) -> None:
    from dagster._core.events import StepSuccessData

    data = StepSuccessData(duration_ms=1.0) if event_type == dg.DagsterEventType.STEP_SUCCESS else None
    daemon.instance.report_dagster_event(DagsterEvent(event_type_value=event_type.value, job_name=run.job_name,
                                                      step_key=step, event_specific_data=data), run.run_id)


@pytest.mark.parametrize("started", [True, False])
def test_a_promotion_killed_mid_step_or_before_it_is_tried_again_one_canceled_is_not(daemon, started):
    """Killed (a dead CLI run marked failed, a run whose worker died) during champion_model or between the report
    and it: no failure event of its own. A canceled run was stopped by someone: its promotion is not forced."""
    _checkpoint(daemon)
    canceled = _run(daemon, dg.DagsterRunStatus.CANCELED)
    _report_in_run(daemon, canceled)
    assert "no featurized_shards batch changed" in _tick(daemon).skip_message
    run = _run(daemon, dg.DagsterRunStatus.FAILURE)
    _report_in_run(daemon, run)
    if started:
        _step_event(daemon, run, dg.DagsterEventType.STEP_START, "champion_model")
    request = _tick(daemon).run_requests[0]
    assert request.asset_selection == [dg.AssetKey("champion_model")]
    assert "champion_model step failed or was killed" in request.tags["asr/reason"]


def test_a_run_whose_promotion_finished_is_not_a_promotion_to_retry(daemon):
    _checkpoint(daemon)
    run = _run(daemon, dg.DagsterRunStatus.FAILURE)  # a later step failed (an export, say)
    _report_in_run(daemon, run)
    _step_event(daemon, run, dg.DagsterEventType.STEP_START, "champion_model")
    _step_event(daemon, run, dg.DagsterEventType.STEP_SUCCESS, "champion_model")
    assert "no featurized_shards batch changed" in _tick(daemon).skip_message


def test_a_failed_evaluation_step_is_not_a_promotion_to_retry_and_new_data_wins(daemon):
    _checkpoint(daemon)
    # the report was written, then the evaluation step itself failed (a blocking check of its own, say)
    _report_in_run(daemon, _run(daemon, dg.DagsterRunStatus.FAILURE), failed_step="evaluation_report")
    assert "no featurized_shards batch changed" in _tick(daemon).skip_message
    daemon.instance.report_runless_asset_event(dg.AssetMaterialization("featurized_shards", partition=KEY))
    assert _tick(daemon).run_requests[0].asset_selection is None  # a whole retrain, evaluated anyway


@pytest.mark.parametrize("made_by", ["asr_train", None])
def test_a_checkpoint_nobody_meant_to_evaluate_is_left_alone(daemon, made_by):
    """`asr_train` ("fine-tune only"; `asr-pipeline train` runs asr_retrain) and a checkpoint reported without a run
    were not meant to be evaluated: the schedule does not evaluate (and maybe promote) them behind the user's back."""
    if made_by:
        _checkpoint(daemon, job_name=made_by)
    else:
        daemon.instance.report_runless_asset_event(dg.AssetMaterialization(
            "finetuned_checkpoint",
            metadata={FEATURIZED_READ: dg.MetadataValue.json(featurized_storage_ids(daemon.instance))}))
    assert "no featurized_shards batch changed" in _tick(daemon).skip_message
