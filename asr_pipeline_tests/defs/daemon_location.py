"""The code location the daemon test loads: the production definitions, with small training and evaluation settings
as the default run config of the jobs that train (asr_train, asr_retrain).

The schedule requests its run without config, so the run takes the job's defaults: the notebook's 4000 steps here
would take hours. Setting them on the job is what an operator would do (Launchpad, or `config=` on the job); the
sensor, the schedule, the assets, their checks, the resources and the executor are untouched.
"""

import dagster as dg
from dagster_shared.record import copy

from asr_pipeline.definitions import build_definitions

TINY_TRAINING = {"max_steps": 2, "batch_size": 4, "eval_steps": 2, "warmup_steps": 0, "generation_max_length": 16,
                 "max_eval_samples": 4}
SHORT_EVALUATION = {"max_new_tokens": 16, "export_ctranslate2": False, "bootstrap_resamples": 50}
TRAINING_JOBS = {"asr_train", "asr_retrain"}


def _with_small_defaults(job):
    if job.name not in TRAINING_JOBS:
        return job
    ops = {"finetuned_checkpoint": {"config": TINY_TRAINING}}
    if job.name == "asr_retrain":
        ops["evaluation_report"] = {"config": SHORT_EVALUATION}
    return dg.define_asset_job(job.name, selection=job.selection, tags=job.tags, description=job.description,
                               executor_def=job.executor_def, config={"ops": ops})


def _small_training_definitions() -> dg.Definitions:
    production = build_definitions()
    return copy(production, jobs=[_with_small_defaults(job) for job in production.jobs])


defs = _small_training_definitions()
