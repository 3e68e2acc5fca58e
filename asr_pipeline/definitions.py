"""The code location `asr_pipeline` (workspace.yaml, `dg`, and the `asr-pipeline` CLI all load this)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from asr_pipeline.defs.assets import ALL_ASSETS, ASSETS, INGEST_ASSETS, storage_dir
from asr_pipeline.defs.checks import CHECKS
from asr_pipeline.defs.io_managers import AssetDirectoryIOManager
from asr_pipeline.defs.resources import database_from_environment, settings_from_environment

END_TO_END_JOB = "asr_end_to_end"
INGEST_JOB = "asr_ingest"
TRAIN_JOB = "asr_train"
EVALUATE_JOB = "asr_evaluate"


def build_definitions() -> dg.Definitions:
    """Read and validate the environment now: a bad setting fails the code location with a clear message."""
    settings = settings_from_environment()
    Path(settings.home).mkdir(parents=True, exist_ok=True)
    jobs = [
        dg.define_asset_job(END_TO_END_JOB, selection=ALL_ASSETS,
                            description="Rows to evaluated checkpoint: every asset, in order."),
        dg.define_asset_job(INGEST_JOB, selection=INGEST_ASSETS, description="Manifest, resampling, features."),
        dg.define_asset_job(TRAIN_JOB, selection=["finetuned_checkpoint"], description="Fine-tune only."),
        dg.define_asset_job(EVALUATE_JOB, selection=["evaluation_report"], description="Evaluate only."),
    ]
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=jobs,
        resources={
            "database": database_from_environment(),
            "settings": settings,
            "io_manager": AssetDirectoryIOManager(base_dir=str(storage_dir(settings))),
        },
    )


defs = build_definitions()
