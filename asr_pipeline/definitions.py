"""The code location `asr_pipeline` (workspace.yaml, `dg`, and the `asr-pipeline` CLI all load this)."""

import os
from pathlib import Path

import dagster as dg

from asr_pipeline.core.errors import ConfigError
from asr_pipeline.defs.alerts.freshness import FRESHNESS_CHECKS, without_freshness_checks
from asr_pipeline.defs.alerts.sensors import build_alert_sensor
from asr_pipeline.defs.common.io_managers import AssetDirectoryIOManager
from asr_pipeline.defs.common.resources import database_from_environment, settings_from_environment
from asr_pipeline.defs.common.shards import storage_dir
from asr_pipeline.defs.common.versions import with_code_versions
from asr_pipeline.defs.evaluation.assets import champion_model, evaluation_report
from asr_pipeline.defs.ingest.assets import featurized_shards, raw_manifest, resampled_dataset, training_datas
from asr_pipeline.defs.ingest.planning import INGEST_TAGS
from asr_pipeline.defs.ingest.sensors import INGEST_JOB, new_transcripts_sensor
from asr_pipeline.defs.training.assets import finetuned_checkpoint
from asr_pipeline.defs.training.schedules import RETRAIN_JOB, build_nightly_retraining

# each area (defs/ingest, defs/training, defs/evaluation, defs/alerts) owns its assets, checks, sensors and schedules;
# this module assembles them into the code location
ASSETS = [training_datas, raw_manifest, resampled_dataset, featurized_shards, finetuned_checkpoint, evaluation_report,
          champion_model]
INGEST_ASSETS = ["raw_manifest", "resampled_dataset", "featurized_shards"]
RETRAIN_ASSETS = ["finetuned_checkpoint", "evaluation_report", "champion_model"]

TRAIN_JOB = "asr_train"
EVALUATE_JOB = "asr_evaluate"
NO_RETRY_ON_STEP_FAILURE = {"dagster/retry_on_asset_or_op_failure": "false"}


def executor_from_environment():
    """ASR_EXECUTOR: `multiprocess`, `in_process`, or `k8s` (dagster-k8s: every step in its own pod;
    deploy/README.md) for every job; unset: None, and each job takes its own default (ingest_executor,
    training_executor)."""
    kind = os.environ.get("ASR_EXECUTOR", "")
    if not kind:
        return None
    if kind == "multiprocess":
        return dg.multiprocess_executor
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError:
            raise ConfigError("ASR_EXECUTOR=k8s needs dagster-k8s installed (pip install 'dagster-k8s==0.29.*')") \
                from None
        return k8s_job_executor
    raise ConfigError(f"ASR_EXECUTOR must be multiprocess, in_process or k8s, got {kind!r}")


def ingest_executor():
    """An ingest batch's steps run one after another in the run's own process unless ASR_EXECUTOR says otherwise.
    On the multiprocess executor each of the three steps would start a process that imports Dagster and the
    definitions again: a launched 1,000-row batch took 17.8 s instead of 7.7 s (docs/BENCHMARKS.md). The sensor's
    runs and `ingest --parallel` run the asr_ingest job."""
    return executor_from_environment() or dg.in_process_executor


def training_executor():
    """Everything else, including the UI's "Materialize" and asset backfills (Dagster's implicit asset job, which
    also trains and evaluates): Dagster's default, a process per step for launched runs, so the memory of a training
    is given back before the evaluation loads its models (and the Launchpad can still choose in-process)."""
    return executor_from_environment() or dg.multi_or_in_process_executor


def build_definitions() -> dg.Definitions:
    """Read and validate the environment now: a bad setting fails the code location with a clear message."""
    settings = settings_from_environment()
    Path(settings.home).mkdir(parents=True, exist_ok=True)
    jobs = [
        dg.define_asset_job(INGEST_JOB, selection=without_freshness_checks(INGEST_ASSETS), tags=INGEST_TAGS,
                            executor_def=ingest_executor(),
                            description="One ingest batch: manifest, 16 kHz audio, features."),
        # A challenger that loses is a successful run (champion_model materializes nothing), so no retry follows it.
        # A step that fails here (a NaN training loss, a model that cannot be loaded) fails the same way on the same
        # features and seed, and each try costs a training or a full decode: only crashed runs are retried.
        dg.define_asset_job(RETRAIN_JOB, selection=without_freshness_checks(RETRAIN_ASSETS),
                            tags=NO_RETRY_ON_STEP_FAILURE, executor_def=training_executor(),
                            description="Fine-tune on every featurized batch, evaluate against the champion, promote "
                                        "the challenger when it is better."),
        dg.define_asset_job(TRAIN_JOB, selection=without_freshness_checks(["finetuned_checkpoint"]),
                            executor_def=training_executor(), description="Fine-tune only."),
        dg.define_asset_job(EVALUATE_JOB, selection=without_freshness_checks(["evaluation_report", "champion_model"]),
                            tags=NO_RETRY_ON_STEP_FAILURE, executor_def=training_executor(),
                            description="Evaluate the current checkpoint; promote it when it beats the champion."),
    ]
    try:
        schedule = build_nightly_retraining()
    except ConfigError:  # the nightly budget, with its variable's name
        raise
    except Exception as exc:  # an invalid cron string or timezone
        raise ConfigError(f"ASR_RETRAIN_CRON / ASR_RETRAIN_TIMEZONE: {exc}") from None
    return dg.Definitions(
        executor=training_executor(),  # the implicit asset job's: the UI's "Materialize" and asset backfills
        assets=with_code_versions(ASSETS, settings),  # settings that shape a batch make it stale
        asset_checks=FRESHNESS_CHECKS,  # evaluated by the asr_alerts sensor (defs/alerts), not by the jobs above
        jobs=jobs,
        sensors=[new_transcripts_sensor, build_alert_sensor()],
        schedules=[schedule],
        resources={
            "database": database_from_environment(),
            "settings": settings,
            "io_manager": AssetDirectoryIOManager(base_dir=str(storage_dir(settings))),
        },
    )


defs = build_definitions()


def ingest_job() -> dg.JobDefinition:
    """asr_ingest, rebuilt by the process that runs it (dg.reconstructable): `ingest-batch`, as a launched run."""
    return build_definitions().resolve_job_def(INGEST_JOB)
