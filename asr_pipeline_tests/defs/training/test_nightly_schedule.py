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
    """(A QUEUED run cannot be made here without a code location's origin; the schedule's filter has it with
    NOT_STARTED, STARTING, STARTED and CANCELING.)"""
    run = DagsterRun(job_name=job_name, run_id=str(uuid.uuid4()), status=status, tags=tags or {})
    daemon.instance.add_run(run)
    return run


def _checkpoint(daemon):
    """finetuned_checkpoint as a training that read every batch leaves it."""
    read = featurized_storage_ids(daemon.instance)
    daemon.instance.report_runless_asset_event(dg.AssetMaterialization(
        "finetuned_checkpoint", metadata={FEATURIZED_READ: dg.MetadataValue.json(read)}))


def _report_in_run(daemon, run: DagsterRun, failed_step: str | None = None) -> None:
    """evaluation_report materialized by `run`, and a step of it failed afterwards (failed_step)."""
    daemon.instance.report_dagster_event(DagsterEvent(
        event_type_value=dg.DagsterEventType.ASSET_MATERIALIZATION.value, job_name=run.job_name,
        step_key="evaluation_report",
        event_specific_data=StepMaterializationData(dg.AssetMaterialization("evaluation_report"))), run.run_id)
    if failed_step:
        daemon.instance.report_dagster_event(DagsterEvent(
            event_type_value=dg.DagsterEventType.STEP_FAILURE.value, job_name=run.job_name, step_key=failed_step,
            event_specific_data=StepFailureData(error=None, user_failure_data=None)), run.run_id)


def test_no_second_retrain_is_queued_while_one_is_queued_or_running(daemon):
    assert _tick(daemon).run_requests  # night 1: new data, a retrain is requested
    for status in (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED):
        run = _run(daemon, status)
        skipped = _tick(daemon)  # night 2: the first still waits for its pool slot, or trains
        assert not skipped.run_requests and run.run_id in skipped.skip_message
        assert status.value.lower() in skipped.skip_message
        daemon.instance.delete_run(run.run_id)
    assert _tick(daemon).run_requests  # it ended without a checkpoint: the data is still new
    _run(daemon, dg.DagsterRunStatus.STARTED, job_name="asr_ingest")  # ingest runs do not hold it back
    assert _tick(daemon).run_requests


def test_a_killed_cli_training_does_not_hold_the_nightly_training_back(daemon):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    killed = _run(daemon, dg.DagsterRunStatus.STARTED, job_name="asr_train", tags=cli_run_tags(gone.pid))
    alive = _run(daemon, dg.DagsterRunStatus.STARTED, job_name="asr_train", tags=cli_run_tags(os.getpid()))
    skipped = _tick(daemon)
    assert alive.run_id in skipped.skip_message  # a CLI run whose process lives is running
    assert daemon.instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
    daemon.instance.report_run_failed(daemon.instance.get_run_by_id(alive.run_id))
    assert _tick(daemon).run_requests


def test_a_checkpoint_whose_evaluation_failed_is_evaluated_again_a_bounded_number_of_times(daemon):
    _checkpoint(daemon)
    for attempt in range(MAX_EVALUATION_ATTEMPTS):
        request = _tick(daemon).run_requests[0]
        assert request.asset_selection == [dg.AssetKey("evaluation_report"), dg.AssetKey("champion_model")]
        assert "has no evaluation_report: evaluating it again" in request.tags["asr/reason"]
        assert request.tags[EVALUATES_TAG].isdigit()  # the checkpoint's storage id: its tries are counted
        # the request names assets of the job: the daemon can build that run (checks of those assets with it)
        subset = daemon.defs.resolve_job_def("asr_retrain").get_subset(asset_selection=set(request.asset_selection))
        assert {node.name for node in subset.graph.node_dict.values()} >= {"evaluation_report", "champion_model"}
        assert "finetuned_checkpoint" not in {node.name for node in subset.graph.node_dict.values()}
        _run(daemon, dg.DagsterRunStatus.FAILURE, tags=request.tags)  # the share is still unmounted
    given_up = _tick(daemon)
    assert not given_up.run_requests
    assert f"failed {MAX_EVALUATION_ATTEMPTS} times" in given_up.skip_message
    assert "asr-pipeline evaluate" in given_up.skip_message
    # evaluated at last (by hand): nothing left to do
    _report_in_run(daemon, _run(daemon, dg.DagsterRunStatus.SUCCESS, job_name="asr_evaluate"))
    assert "no featurized_shards batch changed" in _tick(daemon).skip_message


def test_a_promotion_that_failed_after_the_report_is_tried_again_alone(daemon):
    _checkpoint(daemon)
    _report_in_run(daemon, _run(daemon, dg.DagsterRunStatus.FAILURE), failed_step="champion_model")
    request = _tick(daemon).run_requests[0]
    assert request.asset_selection == [dg.AssetKey("champion_model")]
    assert "whose champion_model step failed" in request.tags["asr/reason"]
    # a run that failed in a check of the report (not in the promotion) is not evaluated again and again
    _report_in_run(daemon, _run(daemon, dg.DagsterRunStatus.FAILURE), failed_step="evaluation_report_check")
    assert "no featurized_shards batch changed" in _tick(daemon).skip_message
    # and new data still wins over a pending evaluation: the next training is evaluated anyway
    daemon.instance.report_runless_asset_event(dg.AssetMaterialization("featurized_shards", partition=KEY))
    assert _tick(daemon).run_requests[0].asset_selection is None
